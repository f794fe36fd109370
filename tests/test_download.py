"""Mirror logic against a loopback HTTP server: resume, md5 -> next mirror, all fail -> ways forward."""
from __future__ import annotations

import hashlib
import os

import pytest

from carbench.config import DataConfig, MirrorFile, build
from carbench.download import KAGGLE_DATASETS, OFFICIAL_FILES, fetch_file, run_download
from carbench.io import file_md5
from carbench.errors import DataError
from carbench.manifest import read_manifest

from conftest import SYNTHETIC_TINY, make_official_archives, repo_params

PAYLOAD = os.urandom(300_000)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
TIMEOUT_S = 5.0


def _entry(server, path: str, md5: str = PAYLOAD_MD5) -> MirrorFile:
    return MirrorFile(url=server.url(path), md5=md5)


def test_file_md5(tmp_path):
    (tmp_path / "f").write_bytes(PAYLOAD)
    assert file_md5(tmp_path / "f") == PAYLOAD_MD5


def test_download_verifies_md5(http_server, tmp_path):
    http_server.files["cars_test.tgz"] = PAYLOAD
    path = fetch_file("cars_test.tgz", [("m1", _entry(http_server, "cars_test.tgz"))], tmp_path, TIMEOUT_S)
    assert path == tmp_path / "cars_test.tgz" and path.read_bytes() == PAYLOAD
    assert not list(tmp_path.glob("*.part"))


def test_resumes_a_partial_file_with_range(http_server, tmp_path):
    half = len(PAYLOAD) // 2
    (tmp_path / "cars_test.tgz.m1.part").write_bytes(PAYLOAD[:half])
    http_server.files["cars_test.tgz"] = PAYLOAD
    path = fetch_file("cars_test.tgz", [("m1", _entry(http_server, "cars_test.tgz"))], tmp_path, TIMEOUT_S)
    assert file_md5(path) == PAYLOAD_MD5
    assert http_server.requests == [("cars_test.tgz", f"bytes={half}-")]
    assert http_server.sent["cars_test.tgz"] == len(PAYLOAD) - half  # only the rest crossed the wire


def test_interrupted_download_is_resumed_on_the_next_run(http_server, tmp_path):
    http_server.files["cars_test.tgz"] = PAYLOAD
    http_server.drop_after["cars_test.tgz"] = 100_000
    candidates = [("m1", _entry(http_server, "cars_test.tgz"))]
    with pytest.raises(DataError):
        fetch_file("cars_test.tgz", candidates, tmp_path, TIMEOUT_S)
    assert (tmp_path / "cars_test.tgz.m1.part").stat().st_size == 100_000
    del http_server.drop_after["cars_test.tgz"]
    assert file_md5(fetch_file("cars_test.tgz", candidates, tmp_path, TIMEOUT_S)) == PAYLOAD_MD5
    assert http_server.requests[-1] == ("cars_test.tgz", "bytes=100000-")


def test_server_ignoring_range_restarts_cleanly(http_server, tmp_path):
    (tmp_path / "cars_test.tgz.m1.part").write_bytes(b"stale bytes")
    http_server.files["cars_test.tgz"] = PAYLOAD
    http_server.ignore_range = True
    path = fetch_file("cars_test.tgz", [("m1", _entry(http_server, "cars_test.tgz"))], tmp_path, TIMEOUT_S)
    assert file_md5(path) == PAYLOAD_MD5


def test_md5_mismatch_tries_the_next_mirror(http_server, tmp_path):
    http_server.files["bad/cars_test.tgz"] = b"not the archive"
    http_server.files["good/cars_test.tgz"] = PAYLOAD
    candidates = [("bad", _entry(http_server, "bad/cars_test.tgz")), ("good", _entry(http_server, "good/cars_test.tgz"))]
    path = fetch_file("cars_test.tgz", candidates, tmp_path, TIMEOUT_S)
    assert file_md5(path) == PAYLOAD_MD5
    assert not (tmp_path / "cars_test.tgz.bad.part").exists()  # the wrong bytes are not kept


def test_cached_file_is_not_fetched_again(http_server, tmp_path):
    (tmp_path / "cars_test.tgz").write_bytes(PAYLOAD)
    fetch_file("cars_test.tgz", [("m1", _entry(http_server, "cars_test.tgz"))], tmp_path, TIMEOUT_S)
    assert http_server.requests == []


def test_all_mirrors_failing_names_the_ways_forward(http_server, tmp_path):
    http_server.files["wrong/cars_test.tgz"] = b"corrupt"
    candidates = [("missing", _entry(http_server, "nothing/cars_test.tgz")),
                  ("wrong", _entry(http_server, "wrong/cars_test.tgz")),
                  ("refused", MirrorFile(url="http://127.0.0.1:9/cars_test.tgz", md5=PAYLOAD_MD5))]
    with pytest.raises(DataError) as info:
        fetch_file("cars_test.tgz", candidates, tmp_path, TIMEOUT_S)
    message = str(info.value)
    assert "could not download cars_test.tgz" in message
    assert "404" in message and "md5 mismatch" in message and "refused" in message
    assert "data.source: local" in message and "data.path" in message and "data.source: synthetic" in message
    assert all(name in message for name in KAGGLE_DATASETS)
    assert not (tmp_path / "cars_test.tgz").exists()


def _mirror_params(server, tmp_path, files: dict) -> DataConfig:
    mirror = {"name": "loopback", "files": {name: {"url": server.url(name), "md5": hashlib.md5(data).hexdigest()}
                                            for name, data in files.items()}}
    raw = repo_params({"data": {"source": "mirrors", "cache_dir": str(tmp_path / "cache"), "timeout_s": TIMEOUT_S}})
    raw["data"]["mirrors"] = [mirror]
    return build(DataConfig, raw["data"], "data")


def test_download_stage_from_mirrors_end_to_end(http_server, synthetic_source, tmp_path):
    archives = make_official_archives(synthetic_source, tmp_path / "archives")
    files = {name: archives[name].read_bytes() for name in OFFICIAL_FILES}
    http_server.files.update(files)
    data = _mirror_params(http_server, tmp_path, files)
    metrics = run_download(data, 0, tmp_path / "raw", tmp_path / "metrics" / "data.json")
    per_class = SYNTHETIC_TINY["train_per_class"] + SYNTHETIC_TINY["test_per_class"]
    assert metrics["counts"]["total"] == SYNTHETIC_TINY["num_classes"] * per_class
    assert metrics["source"] == "mirrors" and metrics["layout"] == "archives"
    assert len(read_manifest(tmp_path / "raw")) == metrics["counts"]["total"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(OFFICIAL_FILES)  # temp dirs gone
    run_download(data, 0, tmp_path / "raw2", None)  # second run: everything from the cache
    assert len(http_server.requests) == len(OFFICIAL_FILES)


def test_download_stage_fails_cleanly_when_offline(http_server, tmp_path):
    data = _mirror_params(http_server, tmp_path, {name: b"x" for name in OFFICIAL_FILES})
    http_server.files.clear()
    with pytest.raises(DataError, match="Ways forward"):
        run_download(data, 0, tmp_path / "raw", tmp_path / "data.json")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "data.json").exists()
