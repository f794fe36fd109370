"""The download routes offline: kagglehub and huggingface_hub replaced by fakes that return local folders built in
the real packagings, a download case (data section + sources) and its run through download, split and crop."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from carbench.config import DataConfig, build
from carbench.data.crop import write_crops
from carbench.download.acquire import acquire
from carbench.download.sources import ExpectedData, Route, Sources
from carbench.data.split import write_split
from carbench.data.store import SPLITS, load_split
from support import packagings
from support.data import (
    SEED,
    SYNTHETIC_TINY,
    crop_config,
    split_config,
)
from support.params import repo_params

TIMEOUT_S = 5.0


REPO = "someone/stanford-cars-all-in-one"


REVISION = "0123456789abcdef0123456789abcdef01234567"


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
        # A host that resolves anywhere: the routes check that the hub's host name resolves before calling it.
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1")

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, **kwargs):
        self.calls.append(("file", repo_id, filename, repo_type, revision))
        key = (repo_id, revision, filename)
        if repo_type != "dataset" or key not in self.files:
            raise FileNotFoundError(f"EntryNotFoundError: {filename} not in {repo_id}@{revision}")
        return str(self.files[key])

    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, allow_patterns=None, **kwargs):
        self.calls.append(("snapshot", repo_id, tuple(allow_patterns or ()), repo_type, revision))
        return str(self.snapshots[(repo_id, revision)])


class Case(NamedTuple):
    """One download: the ``data`` section and the sources (fingerprint and routes) it is given."""

    data: DataConfig
    sources: Sources


def route_case(tmp_path, expected: dict, routes: list, **extra) -> Case:
    raw = repo_params({"data": {"source": "auto", "cache_dir": str(tmp_path / "cache"), "timeout_s": TIMEOUT_S,
                                **extra}})
    sources = Sources(expected=build(ExpectedData, expected, "expected"),
                      routes=tuple(build(Route, r, f"routes[{i}]") for i, r in enumerate(routes)))
    return Case(build(DataConfig, raw["data"], "data"), sources)


def download_case(case: Case, out_dir: Path, metrics_path, offline: bool = False) -> dict:
    return acquire(case.data, SEED, out_dir, metrics_path, offline=offline, sources=case.sources)


def download_and_crop(data: Case, work: Path, offline: bool = False) -> tuple[dict, dict]:
    """Download, split and crop into ``work``; return (download metrics, split -> crop images)."""
    metrics = download_case(data, work / "raw", work / "data.json", offline=offline)
    write_split(split_config(), SEED, work / "raw", work / "split", None, None)
    write_crops(crop_config(), False, work / "raw", work / "split", work / "crops", None, None)
    return metrics, {s: load_split(work / "crops", s) for s in SPLITS}


def assert_same_crops(ours: dict, baseline: dict) -> None:
    for split in SPLITS:
        assert np.array_equal(ours[split].images, baseline[split].images), split
        assert np.array_equal(ours[split].labels, baseline[split].labels), split


def hub_all_in_one(synthetic_source, root: Path, **kwargs) -> dict:
    folder = packagings.all_in_one_archives(synthetic_source, root, **kwargs)
    return {(REPO, REVISION, name): folder / name for name in ("car_ims.tgz", "cars_annos.mat")}


def hub_route(**extra) -> dict:
    return {"name": "hf-all-in-one", "kind": "huggingface", "ref": REPO, "revision": REVISION,
            "files": {"car_ims.tgz": {}, "cars_annos.mat": {}}, **extra}


def relabel(rows, index: int = 4):
    wrong = rows[index]
    rows[index] = replace(wrong, official_class=wrong.official_class % SYNTHETIC_TINY["num_classes"] + 1)
    return rows
