"""carbench.download.acquire, the download stage, offline (routes faked as in tests/download/test_routes.py): a route with a
wrong label or a missing image is rejected naming it and the next route wins; offline mode forbids every download;
a failed download leaves an existing output unchanged; bad images are refused or skipped and listed; the sources
are never modified; real photos give identical crops in every packaging."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from support import packagings
from support.data import (
    SEED,
    SYNTHETIC_TOTAL,
    assert_no_download_output,
    crop_config,
    download_local,
    edit_train_rows,
    replace_annotation,
    split_config,
)
from support.params import repo_params
from support.routes import (
    FakeHub,
    FakeKaggle,
    assert_same_crops,
    download_case,
    hub_all_in_one,
    hub_route,
    relabel,
    route_case,
)

from carbench.config import DataConfig, build
from carbench.data.crop import write_crops
from carbench.download.acquire import acquire
from carbench.download.layouts import open_local
from carbench.download.sources import ExpectedData, Route, load_sources
from carbench.data.split import write_split
from carbench.data.store import SPLITS, load_split
from carbench.core.errors import DataError


# ----------------------------------------------------------------------------- rejections and failures


def test_a_wrong_label_is_rejected_naming_the_image_and_the_next_route_wins(synthetic_source, expected, tmp_path,
                                                                           monkeypatch):
    FakeHub(monkeypatch, hub_all_in_one(synthetic_source, tmp_path / "hub", edit=relabel), {})
    FakeKaggle(monkeypatch, {"owner/tv-cars": packagings.kaggle_torchvision(synthetic_source, tmp_path / "k")})
    routes = [hub_route(), {"name": "kaggle-tv", "kind": "kaggle", "ref": "owner/tv-cars"}]
    metrics = download_case(route_case(tmp_path, expected, routes), tmp_path / "raw", None)
    assert metrics["route"] == "kaggle-tv"
    first = metrics["attempts"][0]
    assert first["route"] == "hf-all-in-one" and first["result"].startswith("rejected: ")
    assert "car_ims/000005.jpg: class" in first["result"] and "where the dataset has class" in first["result"]
    assert metrics["attempts"][1]["result"].startswith("ok")


def test_a_missing_image_is_rejected_naming_it(synthetic_source, expected, tmp_path, monkeypatch):
    FakeHub(monkeypatch, hub_all_in_one(synthetic_source, tmp_path / "hub", edit=lambda rows: rows[1:]), {})
    with pytest.raises(DataError) as info:
        download_case(route_case(tmp_path, expected, [hub_route()]), tmp_path / "raw", tmp_path / "data.json")
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
              hub_route()]
    with pytest.raises(DataError) as info:
        download_case(route_case(tmp_path, expected, routes), tmp_path / "raw", None, offline=how == "param")
    assert kaggle.calls == [] and hub.calls == [] and http_server.requests == []
    assert str(info.value).count("skipped: downloads are off") == 3 and "turn that off" in str(info.value)


def test_under_dvc_the_message_says_dvc_checkout_brings_the_removed_output_back(expected, tmp_path, monkeypatch):
    """DVC deletes a stage's outputs before it reruns it (the demo's data/raw, when `dvc repro` follows the demo
    offline): the stage's message names the command that restores them."""
    monkeypatch.setenv("DVC_STAGE", "download")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  download:\n    cmd: python stages/download.py\n")
    with pytest.raises(DataError) as info:
        download_case(route_case(tmp_path, expected, [hub_route()]), tmp_path / "raw", None, offline=True)
    assert str(info.value).splitlines()[-1].startswith("DVC removed this stage's previous outputs")
    assert "`dvc checkout download` brings back the ones dvc.lock records" in str(info.value)
    (tmp_path / "dvc.lock").unlink()      # a first run (a fresh clone): nothing to bring back, nothing said
    with pytest.raises(DataError) as info:
        download_case(route_case(tmp_path, expected, [hub_route()]), tmp_path / "raw", None, offline=True)
    assert "dvc checkout" not in str(info.value)


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
    assert metrics["counts"]["total"] == SYNTHETIC_TOTAL and metrics["route"] == "local"
    assert metrics["fingerprint"]["matches_expected"] is False and metrics["fingerprint"]["enforced"] is False
    assert len(metrics["fingerprint"]["sha256"]) == 64 and metrics["seconds"] >= 0


def test_real_photos_give_identical_crops_in_every_packaging(real_data, tmp_path, monkeypatch, http_server):
    """raw300 (real photos, official boxes) as a local folder, repackaged all-in-one and served as fast.ai's tgz."""
    raw300 = real_data / "stanford-cars-raw300"
    lines = packagings.reference_lines(raw300)
    sha = lambda ls: hashlib.sha256("".join(f"{x}\n" for x in sorted(ls)).encode()).hexdigest()  # noqa: E731
    expected = {"sha256": sha(lines), "labels_sha256": sha(",".join(x.split(",")[:2]) for x in lines),
                "train": 156, "test": 144}
    split = split_config(allow_missing_classes=True)

    def crops(data, work):
        metrics = download_case(data, work / "raw", None)
        write_split(split, SEED, work / "raw", work / "split", None, None)
        write_crops(crop_config(size=64, workers=2), False, work / "raw", work / "split", work / "crops", None, None)
        return metrics, {s: load_split(work / "crops", s) for s in SPLITS}

    local, base = crops(route_case(tmp_path, expected, [], source="local", path=str(raw300)), tmp_path / "local")
    assert local["fingerprint"]["matches_expected"] and local["counts"]["total"] == 300
    tgz = packagings.fastai_tgz(raw300, tmp_path / "fastai") / "stanford-cars.tgz"
    http_server.files["stanford-cars.tgz"] = tgz.read_bytes()
    route = {"name": "fastai", "kind": "urls", "files": {"stanford-cars.tgz": {"urls": [http_server.url("stanford-cars.tgz")]}}}
    metrics, ours = crops(route_case(tmp_path, expected, [route]), tmp_path / "fastai-work")
    assert metrics["layout"] == "archives/all_in_one" and metrics["fingerprint"]["sha256"] == local["fingerprint"]["sha256"]
    assert_same_crops(ours, base)


def test_failed_download_leaves_an_existing_output_unchanged(source, tmp_path):
    download_local(source, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    metrics_before = (tmp_path / "data.json").read_bytes()
    (source / "cars_test" / "00001.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="zero-byte"):
        download_local(source, tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before
    assert (tmp_path / "data.json").read_bytes() == metrics_before


def test_skip_bad_images_at_download_lists_them(source, tmp_path):
    (source / "cars_train" / "00002.jpg").write_bytes(b"garbage")
    (source / "cars_train" / "00003.jpg").write_bytes(b"")
    edit_train_rows(source, lambda rows: replace_annotation(rows, 4, box=(30, 10, 20, 40)))
    with pytest.warns(UserWarning, match="skipped 3 bad image"):
        metrics = download_local(source, tmp_path, skip=True)
    assert metrics["counts"]["total"] == SYNTHETIC_TOTAL - 3
    assert sorted(s["image"] for s in json.loads((tmp_path / "data.json").read_text())["skipped"]) == \
        ["cars_train/00002.jpg", "cars_train/00003.jpg", "cars_train/00005.jpg"]


def test_md5_mismatch_on_every_url(http_server, tmp_path):
    official = ("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz", "cars_test_annos_withlabels.mat")
    http_server.files.update({name: b"tampered" for name in official})
    raw = repo_params({"data": {"source": "auto", "cache_dir": str(tmp_path / "cache")}})
    route = {"name": "loopback", "kind": "urls", "files": {
        name: {"urls": [http_server.url(name)], "md5": hashlib.md5(b"genuine").hexdigest()} for name in official}}
    sources = replace(load_sources(), routes=(build(Route, route, "routes[0]"),))
    with pytest.raises(DataError, match=r"loopback \(urls .*could not download cars_train\.tgz: .*md5 mismatch"):
        acquire(build(DataConfig, raw["data"], "data"), 0, tmp_path / "raw", tmp_path / "data.json",
                sources=sources)
    assert_no_download_output(tmp_path)
    assert not (tmp_path / "cache" / "loopback" / "cars_train.tgz").exists()


def test_sources_are_never_modified(source, tmp_path):
    before = {str(p): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    download_local(source, tmp_path)
    with open_local(source, tmp_path / "scratch"):
        pass
    assert {str(p): p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
