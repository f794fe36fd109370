"""carbench.download.routes, each kind of route offline (Kaggle, URLs of the official archives or the fastai archive, Hugging
Face files at a pinned revision, parquet): the same fingerprint, counts and crops as the local copy; refusals name
the credentials or package they lack."""
from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
from support import packagings
from support.data import (
    make_official_archives,
)
from support.routes import (
    REVISION,
    FakeHub,
    FakeKaggle,
    assert_same_crops,
    download_and_crop,
    download_case,
    hub_all_in_one,
    hub_route,
    route_case,
)

from carbench.data.store import SPLITS
from carbench.core.errors import DataError


def test_kaggle_torchvision_route(synthetic_source, expected, baseline, tmp_path, monkeypatch):
    kaggle = FakeKaggle(monkeypatch, {"owner/tv-cars": packagings.kaggle_torchvision(synthetic_source, tmp_path / "k")})
    data = route_case(tmp_path, expected, [{"name": "kaggle-tv", "kind": "kaggle", "ref": "owner/tv-cars"}])
    metrics, crops = download_and_crop(data, tmp_path / "work")
    assert kaggle.calls == ["owner/tv-cars"]
    assert metrics["route"] == "kaggle-tv" and metrics["fingerprint"]["sha256"] == expected["sha256"]
    assert metrics["fingerprint"]["matches_expected"] and metrics["fingerprint"]["enforced"]
    assert metrics["fingerprint"] == {**baseline[0]["fingerprint"], "enforced": True}
    assert_same_crops(crops, baseline[1])


def test_kaggle_route_pins_a_version(synthetic_source, expected, tmp_path, monkeypatch):
    kaggle = FakeKaggle(monkeypatch, {"owner/tv-cars/versions/3": packagings.kaggle_torchvision(synthetic_source, tmp_path / "k")})
    data = route_case(tmp_path, expected, [{"name": "k", "kind": "kaggle", "ref": "owner/tv-cars", "revision": "3"}])
    assert download_case(data, tmp_path / "raw", None)["route"] == "k" and kaggle.calls == ["owner/tv-cars/versions/3"]


def test_kaggle_copy_without_test_labels_takes_the_pinned_file(synthetic_source, expected, baseline, tmp_path,
                                                               monkeypatch, http_server):
    folder = packagings.kaggle_jessicali(synthetic_source, tmp_path / "k")
    FakeKaggle(monkeypatch, {"owner/nested-cars": folder})
    labels = (synthetic_source / packagings.TEST_LABELS).read_bytes()
    http_server.files["labels.mat"] = labels
    route = {"name": "kaggle-nested", "kind": "kaggle", "ref": "owner/nested-cars", "files": {
        packagings.TEST_LABELS: {"urls": [http_server.url("labels.mat")], "md5": hashlib.md5(labels).hexdigest()}}}
    metrics, crops = download_and_crop(route_case(tmp_path, expected, [route]), tmp_path / "work")
    assert metrics["route"] == "kaggle-nested" and metrics["fingerprint"]["sha256"] == expected["sha256"]
    assert_same_crops(crops, baseline[1])


def test_kaggle_copy_without_test_labels_and_no_pinned_file_is_rejected(synthetic_source, expected, tmp_path,
                                                                        monkeypatch):
    FakeKaggle(monkeypatch, {"owner/nested-cars": packagings.kaggle_jessicali(synthetic_source, tmp_path / "k")})
    data = route_case(tmp_path, expected, [{"name": "kaggle-nested", "kind": "kaggle", "ref": "owner/nested-cars"}])
    with pytest.raises(DataError, match=r"kaggle-nested .*rejected: .*cars_test_annos_withlabels\.mat is missing"):
        download_case(data, tmp_path / "raw", tmp_path / "data.json")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "data.json").exists()


def test_official_archives_from_urls(synthetic_source, expected, baseline, tmp_path, http_server):
    archives = make_official_archives(synthetic_source, tmp_path / "archives")
    http_server.files.update({name: path.read_bytes() for name, path in archives.items()})
    files = {name: {"urls": [http_server.url("gone/" + name), http_server.url(name)],
                    "md5": hashlib.md5(path.read_bytes()).hexdigest()} for name, path in archives.items()}
    metrics, crops = download_and_crop(route_case(tmp_path, expected, [{"name": "official", "kind": "urls", "files": files}]),
                            tmp_path / "work")
    assert metrics["route"] == "official" and metrics["layout"] == "archives/torchvision"
    assert_same_crops(crops, baseline[1])
    assert sorted(p.name for p in (tmp_path / "cache" / "official").iterdir()) == sorted(archives)


def test_fastai_single_archive_of_the_all_in_one_packaging(synthetic_source, expected, baseline, tmp_path,
                                                           http_server):
    tgz = packagings.fastai_tgz(synthetic_source, tmp_path / "fastai") / "stanford-cars.tgz"
    http_server.files["stanford-cars.tgz"] = tgz.read_bytes()
    route = {"name": "fastai", "kind": "urls", "files": {"stanford-cars.tgz": {"urls": [http_server.url("stanford-cars.tgz")]}}}
    metrics, crops = download_and_crop(route_case(tmp_path, expected, [route]), tmp_path / "work")
    assert metrics["layout"] == "archives/all_in_one" and metrics["fingerprint"]["sha256"] == expected["sha256"]
    assert_same_crops(crops, baseline[1])


def test_hugging_face_all_in_one_files_at_a_pinned_revision(synthetic_source, expected, baseline, tmp_path,
                                                            monkeypatch):
    hub = FakeHub(monkeypatch, hub_all_in_one(synthetic_source, tmp_path / "hub"), {})
    metrics, crops = download_and_crop(route_case(tmp_path, expected, [hub_route()]), tmp_path / "work")
    assert {c[2] for c in hub.calls} == {"car_ims.tgz", "cars_annos.mat"}
    assert all(c[3] == "dataset" and c[4] == REVISION for c in hub.calls)
    assert metrics["route"] == "hf-all-in-one" and metrics["layout"] == "archives/all_in_one"
    assert_same_crops(crops, baseline[1])


def test_hugging_face_file_with_a_wrong_md5_is_refused(synthetic_source, expected, tmp_path, monkeypatch):
    FakeHub(monkeypatch, hub_all_in_one(synthetic_source, tmp_path / "hub"), {})
    route = hub_route(files={"car_ims.tgz": {"md5": "0" * 32}, "cars_annos.mat": {}})
    with pytest.raises(DataError, match=r"hf-all-in-one .*failed: .*car_ims\.tgz: md5 mismatch"):
        download_case(route_case(tmp_path, expected, [route]), tmp_path / "raw", None)


def test_parquet_route_has_no_boxes_but_the_same_labels(synthetic_source, expected, baseline, tmp_path,
                                                        monkeypatch):
    hub = FakeHub(monkeypatch, {}, {("someone/parquet-cars", REVISION): packagings.parquet(synthetic_source, tmp_path / "pq")})
    route = {"name": "hf-parquet", "kind": "hf_parquet", "ref": "someone/parquet-cars", "revision": REVISION}
    with pytest.warns(UserWarning, match="no bounding boxes"):
        metrics, crops = download_and_crop(route_case(tmp_path, expected, [route]), tmp_path / "work")
    assert hub.calls == [("snapshot", "someone/parquet-cars", ("*.parquet",), "dataset", REVISION)]
    found = metrics["fingerprint"]
    assert found["sha256"] == "none" and found["labels_sha256"] == expected["labels_sha256"]
    assert (found["train"], found["test"]) == (expected["train"], expected["test"]) and metrics["boxes"] == "none"
    for split in SPLITS:  # same photos and labels per split, cropped to the whole image instead of the box
        assert np.array_equal(np.sort(crops[split].labels), np.sort(baseline[1][split].labels))


def test_kaggle_refusal_names_the_credentials_and_never_prints_them(expected, tmp_path, monkeypatch):
    FakeKaggle(monkeypatch, {"owner/private": RuntimeError("403 Client Error: Forbidden")})
    data = route_case(tmp_path, expected, [{"name": "kaggle", "kind": "kaggle", "ref": "owner/private"}])
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-dir"))
    with pytest.raises(DataError, match=r"403 .*no Kaggle credentials are set.*KAGGLE_USERNAME and KAGGLE_KEY"):
        download_case(data, tmp_path / "raw", None)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "s3cret-token-value")
    with pytest.raises(DataError) as info:
        download_case(data, tmp_path / "raw", None)
    assert "credentials are set" in str(info.value) and "s3cret-token-value" not in str(info.value)


def test_a_missing_client_package_is_named(expected, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)   # import kagglehub -> ImportError
    data = route_case(tmp_path, expected, [{"name": "kaggle", "kind": "kaggle", "ref": "owner/x"}])
    with pytest.raises(DataError, match=r"pip install kagglehub"):
        download_case(data, tmp_path / "raw", None)


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
PARQUET_ROUTE = {"name": "hf-parquet", "kind": "hf_parquet", "ref": "someone/parquet-cars", "revision": REVISION}


def test_hub_routes_without_a_network_fail_at_once_in_one_line_each(expected, tmp_path, monkeypatch, capfd):
    """The real huggingface_hub client, its host unresolvable (as with no network): no retry warnings (the hub
    prints a line per retry and waits about 25 s), one reason per route in the stage's message."""
    import time

    from huggingface_hub import constants

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")   # .invalid never resolves
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        download_case(route_case(tmp_path, expected, [hub_route(), PARQUET_ROUTE]), tmp_path / "raw", None)
    assert time.monotonic() - started < 5
    out, err = capfd.readouterr()
    assert out + err == ""
    message = str(info.value)
    for route in ("hf-all-in-one", "hf-parquet"):
        assert f"{route} " in message and "cannot resolve hub.invalid (no network?)" in message


def test_behind_a_proxy_the_hub_is_asked_and_its_warnings_stay_quiet(synthetic_source, expected, tmp_path,
                                                                       monkeypatch, capfd):
    """A proxy resolves names itself: the route asks the hub even when the host does not resolve here; whatever
    the hub logs while it retries stays off the stage's output, and its verbosity is put back."""
    import huggingface_hub
    from huggingface_hub import constants

    hub = FakeHub(monkeypatch, {}, {})
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")

    def snapshot_download(repo_id, **kwargs):
        hub.calls.append(repo_id)
        huggingface_hub.utils.logging.get_logger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise OSError("proxy refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    level = huggingface_hub.logging.get_verbosity()
    with pytest.raises(DataError, match=r"hf-parquet .*proxy refused"):
        download_case(route_case(tmp_path, expected, [PARQUET_ROUTE]), tmp_path / "raw", None)
    assert hub.calls == ["someone/parquet-cars"]
    assert "Retrying" not in "".join(capfd.readouterr())
    assert huggingface_hub.logging.get_verbosity() == level
