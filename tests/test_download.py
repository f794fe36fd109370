"""The download stage over every route, offline: kagglehub and huggingface_hub replaced by fakes that return
local folders built in the real packagings, URLs served from 127.0.0.1. Every route must give the same
fingerprint, counts and crops; a route with a wrong label or a missing image is rejected, naming it."""
from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

import packagings
from carbench.config import DataConfig, build
from carbench.data.crop import write_crops
from carbench.data.download import acquire
from carbench.errors import DataError
from carbench.data.fingerprint import write_reference
from carbench.data.sources import ExpectedData, Route, Sources, load_sources
from carbench.data.split import write_split
from carbench.data.store import SPLITS, load_split

from conftest import SEED, SYNTHETIC_TINY, crop_config, make_official_archives, repo_params, split_config

TIMEOUT_S = 5.0
TOTAL = SYNTHETIC_TINY["num_classes"] * (SYNTHETIC_TINY["train_per_class"] + SYNTHETIC_TINY["test_per_class"])
REPO = "someone/stanford-cars-all-in-one"
REVISION = "0123456789abcdef0123456789abcdef01234567"


# ----------------------------------------------------------------------------- fakes
class FakeKaggle:
    """``kagglehub.dataset_download`` returning local folders by handle (or raising), recording calls."""

    def __init__(self, monkeypatch, folders: dict):
        import kagglehub

        self.folders, self.calls = folders, []
        monkeypatch.setattr(kagglehub, "dataset_download", self)

    def __call__(self, handle, path=None, **kwargs):
        self.calls.append(handle)
        found = self.folders.get(handle)
        if isinstance(found, Exception):
            raise found
        if found is None:
            raise RuntimeError(f"404 Client Error: Not Found for dataset {handle}")
        return str(found)


class FakeHub:
    """``hf_hub_download`` / ``snapshot_download`` serving ``files[(repo, revision, filename)]`` from disk."""

    def __init__(self, monkeypatch, files: dict, snapshots: dict):
        import huggingface_hub

        self.files, self.snapshots, self.calls = files, snapshots, []
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, **kwargs):
        self.calls.append(("file", repo_id, filename, repo_type, revision))
        key = (repo_id, revision, filename)
        if repo_type != "dataset" or key not in self.files:
            raise FileNotFoundError(f"EntryNotFoundError: {filename} not in {repo_id}@{revision}")
        return str(self.files[key])

    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, allow_patterns=None, **kwargs):
        self.calls.append(("snapshot", repo_id, tuple(allow_patterns or ()), repo_type, revision))
        return str(self.snapshots[(repo_id, revision)])


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def expected(synthetic_source, tmp_path_factory) -> dict:
    """``data.expected`` for the tiny synthetic set, from lines computed independently of the code."""
    lines = packagings.reference_lines(synthetic_source)
    reference = tmp_path_factory.mktemp("reference") / "annotations.csv.gz"
    write_reference(reference, lines)
    sha = lambda ls: hashlib.sha256("".join(f"{x}\n" for x in sorted(ls)).encode()).hexdigest()  # noqa: E731
    return {"sha256": sha(lines), "labels_sha256": sha(",".join(x.split(",")[:2]) for x in lines),
            "train": sum(x.startswith("train") for x in lines), "test": sum(x.startswith("test") for x in lines),
            "annotations": str(reference)}


class Case(NamedTuple):
    """One download: the ``data`` section and the sources (fingerprint and routes) it is given."""

    data: DataConfig
    sources: Sources


def _data(tmp_path, expected: dict, routes: list, **extra) -> Case:
    raw = repo_params({"data": {"source": "auto", "cache_dir": str(tmp_path / "cache"), "timeout_s": TIMEOUT_S,
                                **extra}})
    sources = Sources(expected=build(ExpectedData, expected, "expected"),
                      routes=tuple(build(Route, r, f"routes[{i}]") for i, r in enumerate(routes)))
    return Case(build(DataConfig, raw["data"], "data"), sources)


def _download(case: Case, out_dir: Path, metrics_path, offline: bool = False) -> dict:
    return acquire(case.data, SEED, out_dir, metrics_path, offline=offline, sources=case.sources)


def _crops(data: Case, work: Path, offline: bool = False) -> tuple[dict, dict]:
    """Download, split and crop into ``work``; return (download metrics, split -> crop images)."""
    metrics = _download(data, work / "raw", work / "data.json", offline=offline)
    write_split(split_config(), SEED, work / "raw", work / "split", None, None)
    write_crops(crop_config(), False, work / "raw", work / "split", work / "crops", None, None)
    return metrics, {s: load_split(work / "crops", s) for s in SPLITS}


def _assert_same_crops(ours: dict, baseline: dict) -> None:
    for split in SPLITS:
        assert np.array_equal(ours[split].images, baseline[split].images), split
        assert np.array_equal(ours[split].labels, baseline[split].labels), split


@pytest.fixture(scope="module")
def baseline(synthetic_source, expected, tmp_path_factory):
    """The tiny set read from its torchvision folder (``data.source: local``)."""
    work = tmp_path_factory.mktemp("baseline")
    data = _data(work, expected, [], source="local", path=str(synthetic_source))
    return _crops(data, work)


# ----------------------------------------------------------------------------- every route, same result
def test_kaggle_torchvision_route(synthetic_source, expected, baseline, tmp_path, monkeypatch):
    kaggle = FakeKaggle(monkeypatch, {"owner/tv-cars": packagings.kaggle_torchvision(synthetic_source, tmp_path / "k")})
    data = _data(tmp_path, expected, [{"name": "kaggle-tv", "kind": "kaggle", "ref": "owner/tv-cars"}])
    metrics, crops = _crops(data, tmp_path / "work")
    assert kaggle.calls == ["owner/tv-cars"]
    assert metrics["route"] == "kaggle-tv" and metrics["fingerprint"]["sha256"] == expected["sha256"]
    assert metrics["fingerprint"]["matches_expected"] and metrics["fingerprint"]["enforced"]
    assert metrics["fingerprint"] == {**baseline[0]["fingerprint"], "enforced": True}
    _assert_same_crops(crops, baseline[1])


def test_kaggle_route_pins_a_version(synthetic_source, expected, tmp_path, monkeypatch):
    kaggle = FakeKaggle(monkeypatch, {"owner/tv-cars/versions/3": packagings.kaggle_torchvision(synthetic_source, tmp_path / "k")})
    data = _data(tmp_path, expected, [{"name": "k", "kind": "kaggle", "ref": "owner/tv-cars", "revision": "3"}])
    assert _download(data, tmp_path / "raw", None)["route"] == "k" and kaggle.calls == ["owner/tv-cars/versions/3"]


def test_kaggle_copy_without_test_labels_takes_the_pinned_file(synthetic_source, expected, baseline, tmp_path,
                                                               monkeypatch, http_server):
    folder = packagings.kaggle_jessicali(synthetic_source, tmp_path / "k")
    FakeKaggle(monkeypatch, {"owner/nested-cars": folder})
    labels = (synthetic_source / packagings.TEST_LABELS).read_bytes()
    http_server.files["labels.mat"] = labels
    route = {"name": "kaggle-nested", "kind": "kaggle", "ref": "owner/nested-cars", "files": {
        packagings.TEST_LABELS: {"urls": [http_server.url("labels.mat")], "md5": hashlib.md5(labels).hexdigest()}}}
    metrics, crops = _crops(_data(tmp_path, expected, [route]), tmp_path / "work")
    assert metrics["route"] == "kaggle-nested" and metrics["fingerprint"]["sha256"] == expected["sha256"]
    _assert_same_crops(crops, baseline[1])


def test_kaggle_copy_without_test_labels_and_no_pinned_file_is_rejected(synthetic_source, expected, tmp_path,
                                                                        monkeypatch):
    FakeKaggle(monkeypatch, {"owner/nested-cars": packagings.kaggle_jessicali(synthetic_source, tmp_path / "k")})
    data = _data(tmp_path, expected, [{"name": "kaggle-nested", "kind": "kaggle", "ref": "owner/nested-cars"}])
    with pytest.raises(DataError, match=r"kaggle-nested .*rejected: .*cars_test_annos_withlabels\.mat is missing"):
        _download(data, tmp_path / "raw", tmp_path / "data.json")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "data.json").exists()


def test_official_archives_from_urls(synthetic_source, expected, baseline, tmp_path, http_server):
    archives = make_official_archives(synthetic_source, tmp_path / "archives")
    http_server.files.update({name: path.read_bytes() for name, path in archives.items()})
    files = {name: {"urls": [http_server.url("gone/" + name), http_server.url(name)],
                    "md5": hashlib.md5(path.read_bytes()).hexdigest()} for name, path in archives.items()}
    metrics, crops = _crops(_data(tmp_path, expected, [{"name": "official", "kind": "urls", "files": files}]),
                            tmp_path / "work")
    assert metrics["route"] == "official" and metrics["layout"] == "archives/torchvision"
    _assert_same_crops(crops, baseline[1])
    assert sorted(p.name for p in (tmp_path / "cache" / "official").iterdir()) == sorted(archives)


def test_fastai_single_archive_of_the_all_in_one_packaging(synthetic_source, expected, baseline, tmp_path,
                                                           http_server):
    tgz = packagings.fastai_tgz(synthetic_source, tmp_path / "fastai") / "stanford-cars.tgz"
    http_server.files["stanford-cars.tgz"] = tgz.read_bytes()
    route = {"name": "fastai", "kind": "urls", "files": {"stanford-cars.tgz": {"urls": [http_server.url("stanford-cars.tgz")]}}}
    metrics, crops = _crops(_data(tmp_path, expected, [route]), tmp_path / "work")
    assert metrics["layout"] == "archives/all_in_one" and metrics["fingerprint"]["sha256"] == expected["sha256"]
    _assert_same_crops(crops, baseline[1])


def _hub_all_in_one(synthetic_source, root: Path, **kwargs) -> dict:
    folder = packagings.all_in_one_archives(synthetic_source, root, **kwargs)
    return {(REPO, REVISION, name): folder / name for name in ("car_ims.tgz", "cars_annos.mat")}


def _hub_route(**extra) -> dict:
    return {"name": "hf-all-in-one", "kind": "huggingface", "ref": REPO, "revision": REVISION,
            "files": {"car_ims.tgz": {}, "cars_annos.mat": {}}, **extra}


def test_hugging_face_all_in_one_files_at_a_pinned_revision(synthetic_source, expected, baseline, tmp_path,
                                                            monkeypatch):
    hub = FakeHub(monkeypatch, _hub_all_in_one(synthetic_source, tmp_path / "hub"), {})
    metrics, crops = _crops(_data(tmp_path, expected, [_hub_route()]), tmp_path / "work")
    assert {c[2] for c in hub.calls} == {"car_ims.tgz", "cars_annos.mat"}
    assert all(c[3] == "dataset" and c[4] == REVISION for c in hub.calls)
    assert metrics["route"] == "hf-all-in-one" and metrics["layout"] == "archives/all_in_one"
    _assert_same_crops(crops, baseline[1])


def test_hugging_face_file_with_a_wrong_md5_is_refused(synthetic_source, expected, tmp_path, monkeypatch):
    FakeHub(monkeypatch, _hub_all_in_one(synthetic_source, tmp_path / "hub"), {})
    route = _hub_route(files={"car_ims.tgz": {"md5": "0" * 32}, "cars_annos.mat": {}})
    with pytest.raises(DataError, match=r"hf-all-in-one .*failed: .*car_ims\.tgz: md5 mismatch"):
        _download(_data(tmp_path, expected, [route]), tmp_path / "raw", None)


def test_parquet_route_has_no_boxes_but_the_same_labels(synthetic_source, expected, baseline, tmp_path,
                                                        monkeypatch):
    hub = FakeHub(monkeypatch, {}, {("someone/parquet-cars", REVISION): packagings.parquet(synthetic_source, tmp_path / "pq")})
    route = {"name": "hf-parquet", "kind": "hf_parquet", "ref": "someone/parquet-cars", "revision": REVISION}
    with pytest.warns(UserWarning, match="no bounding boxes"):
        metrics, crops = _crops(_data(tmp_path, expected, [route]), tmp_path / "work")
    assert hub.calls == [("snapshot", "someone/parquet-cars", ("*.parquet",), "dataset", REVISION)]
    found = metrics["fingerprint"]
    assert found["sha256"] == "none" and found["labels_sha256"] == expected["labels_sha256"]
    assert (found["train"], found["test"]) == (expected["train"], expected["test"]) and metrics["boxes"] == "none"
    for split in SPLITS:  # same photos and labels per split, cropped to the whole image instead of the box
        assert np.array_equal(np.sort(crops[split].labels), np.sort(baseline[1][split].labels))


# ----------------------------------------------------------------------------- rejections and failures
def _relabel(rows, index: int = 4):
    wrong = rows[index]
    rows[index] = replace(wrong, official_class=wrong.official_class % SYNTHETIC_TINY["num_classes"] + 1)
    return rows


def test_a_wrong_label_is_rejected_naming_the_image_and_the_next_route_wins(synthetic_source, expected, tmp_path,
                                                                           monkeypatch):
    FakeHub(monkeypatch, _hub_all_in_one(synthetic_source, tmp_path / "hub", edit=_relabel), {})
    FakeKaggle(monkeypatch, {"owner/tv-cars": packagings.kaggle_torchvision(synthetic_source, tmp_path / "k")})
    routes = [_hub_route(), {"name": "kaggle-tv", "kind": "kaggle", "ref": "owner/tv-cars"}]
    metrics = _download(_data(tmp_path, expected, routes), tmp_path / "raw", None)
    assert metrics["route"] == "kaggle-tv"
    first = metrics["attempts"][0]
    assert first["route"] == "hf-all-in-one" and first["result"].startswith("rejected: ")
    assert "car_ims/000005.jpg: class" in first["result"] and "where the dataset has class" in first["result"]
    assert metrics["attempts"][1]["result"].startswith("ok")


def test_a_missing_image_is_rejected_naming_it(synthetic_source, expected, tmp_path, monkeypatch):
    FakeHub(monkeypatch, _hub_all_in_one(synthetic_source, tmp_path / "hub", edit=lambda rows: rows[1:]), {})
    with pytest.raises(DataError) as info:
        _download(_data(tmp_path, expected, [_hub_route()]), tmp_path / "raw", tmp_path / "data.json")
    message = str(info.value)
    first = packagings.annotations(synthetic_source)
    order = sorted(range(len(first)), key=lambda i: (first[i][1].official_class, -i))
    split, ann = first[order[0]]  # car_ims/000001.jpg, the row left out
    line = f"{split},{ann.official_class}," + ",".join(map(str, ann.box))
    assert f"missing: the {split} image with class/box ({line}) is not in this source" in message
    assert "Ways forward" in message and not (tmp_path / "raw").exists() and not (tmp_path / "data.json").exists()


@pytest.mark.parametrize("how", ["param", "CARBENCH_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_forbids_every_download(synthetic_source, expected, tmp_path, monkeypatch, http_server, how):
    kaggle = FakeKaggle(monkeypatch, {"owner/tv-cars": packagings.kaggle_torchvision(synthetic_source, tmp_path / "k")})
    hub = FakeHub(monkeypatch, {}, {})
    if how != "param":
        monkeypatch.setenv(how, "1")
    routes = [{"name": "kaggle-tv", "kind": "kaggle", "ref": "owner/tv-cars"},
              {"name": "web", "kind": "urls", "files": {"x.tgz": {"urls": [http_server.url("x.tgz")]}}},
              _hub_route()]
    with pytest.raises(DataError) as info:
        _download(_data(tmp_path, expected, routes), tmp_path / "raw", None, offline=how == "param")
    assert kaggle.calls == [] and hub.calls == [] and http_server.requests == []
    assert str(info.value).count("skipped: downloads are off") == 3 and "turn that off" in str(info.value)


def test_kaggle_refusal_names_the_credentials_and_never_prints_them(expected, tmp_path, monkeypatch):
    FakeKaggle(monkeypatch, {"owner/private": RuntimeError("403 Client Error: Forbidden")})
    data = _data(tmp_path, expected, [{"name": "kaggle", "kind": "kaggle", "ref": "owner/private"}])
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-dir"))
    with pytest.raises(DataError, match=r"403 .*no Kaggle credentials are set.*KAGGLE_USERNAME and KAGGLE_KEY"):
        _download(data, tmp_path / "raw", None)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "s3cret-token-value")
    with pytest.raises(DataError) as info:
        _download(data, tmp_path / "raw", None)
    assert "credentials are set" in str(info.value) and "s3cret-token-value" not in str(info.value)


def test_a_missing_client_package_is_named(expected, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)   # import kagglehub -> ImportError
    data = _data(tmp_path, expected, [{"name": "kaggle", "kind": "kaggle", "ref": "owner/x"}])
    with pytest.raises(DataError, match=r"pip install kagglehub"):
        _download(data, tmp_path / "raw", None)


def test_the_default_params_take_the_first_route_with_no_flag(synthetic_source, expected, tmp_path, monkeypatch):
    """params.yaml as committed (source auto) and the shipped sources file, on a machine where Kaggle answers:
    the first route wins."""
    kaggle = FakeKaggle(monkeypatch, {"rickyyyyyyy/torchvision-stanford-cars":
                                      packagings.kaggle_torchvision(synthetic_source, tmp_path / "k")})
    raw = repo_params({"data": {"cache_dir": str(tmp_path / "cache")}})
    assert raw["data"]["source"] == "auto"
    sources = replace(load_sources(), expected=build(ExpectedData, expected, "expected"))  # the shipped routes
    metrics = acquire(build(DataConfig, raw["data"], "data"), SEED, tmp_path / "raw", None, sources=sources)
    assert metrics["route"] == "kaggle-torchvision" and kaggle.calls == ["rickyyyyyyy/torchvision-stanford-cars"]


def test_a_local_subset_is_recorded_not_enforced(synthetic_source, tmp_path):
    raw = repo_params({"data": {"source": "local", "path": str(synthetic_source), "cache_dir": str(tmp_path / "c")}})
    metrics = acquire(build(DataConfig, raw["data"], "data"), SEED, tmp_path / "raw", tmp_path / "data.json")
    assert metrics["counts"]["total"] == TOTAL and metrics["route"] == "local"
    assert metrics["fingerprint"]["matches_expected"] is False and metrics["fingerprint"]["enforced"] is False
    assert len(metrics["fingerprint"]["sha256"]) == 64 and metrics["seconds"] >= 0


def test_real_photos_give_identical_crops_in_every_packaging(shared_data, tmp_path, monkeypatch, http_server):
    """raw300 (real photos, official boxes) as a local folder, repackaged all-in-one and served as fast.ai's tgz."""
    raw300 = shared_data / "stanford-cars-raw300"
    lines = packagings.reference_lines(raw300)
    sha = lambda ls: hashlib.sha256("".join(f"{x}\n" for x in sorted(ls)).encode()).hexdigest()  # noqa: E731
    expected = {"sha256": sha(lines), "labels_sha256": sha(",".join(x.split(",")[:2]) for x in lines),
                "train": 156, "test": 144}
    split = split_config(allow_missing_classes=True)

    def crops(data, work):
        metrics = _download(data, work / "raw", None)
        write_split(split, SEED, work / "raw", work / "split", None, None)
        write_crops(crop_config(size=64, workers=2), False, work / "raw", work / "split", work / "crops", None, None)
        return metrics, {s: load_split(work / "crops", s) for s in SPLITS}

    local, base = crops(_data(tmp_path, expected, [], source="local", path=str(raw300)), tmp_path / "local")
    assert local["fingerprint"]["matches_expected"] and local["counts"]["total"] == 300
    tgz = packagings.fastai_tgz(raw300, tmp_path / "fastai") / "stanford-cars.tgz"
    http_server.files["stanford-cars.tgz"] = tgz.read_bytes()
    route = {"name": "fastai", "kind": "urls", "files": {"stanford-cars.tgz": {"urls": [http_server.url("stanford-cars.tgz")]}}}
    metrics, ours = crops(_data(tmp_path, expected, [route]), tmp_path / "fastai-work")
    assert metrics["layout"] == "archives/all_in_one" and metrics["fingerprint"]["sha256"] == local["fingerprint"]["sha256"]
    _assert_same_crops(ours, base)
