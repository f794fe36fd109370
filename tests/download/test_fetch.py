"""carbench.download.fetch against a loopback HTTP server: resume, md5 -> next URL, all fail -> every attempt named."""
from __future__ import annotations

import hashlib
import os

import pytest

from carbench.download.fetch import FetchError, fetch_file
from carbench.core.io import file_md5

PAYLOAD = os.urandom(300_000)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
TIMEOUT_S = 5.0


def test_file_md5(tmp_path):
    (tmp_path / "f").write_bytes(PAYLOAD)
    assert file_md5(tmp_path / "f") == PAYLOAD_MD5


def test_download_verifies_md5(http_server, tmp_path):
    http_server.files["cars_test.tgz"] = PAYLOAD
    path = fetch_file("cars_test.tgz", [("m1", http_server.url("cars_test.tgz"))], PAYLOAD_MD5, tmp_path, TIMEOUT_S)
    assert path == tmp_path / "cars_test.tgz" and path.read_bytes() == PAYLOAD
    assert not list(tmp_path.glob("*.part"))


def test_resumes_a_partial_file_with_range(http_server, tmp_path):
    half = len(PAYLOAD) // 2
    (tmp_path / "cars_test.tgz.m1.part").write_bytes(PAYLOAD[:half])
    http_server.files["cars_test.tgz"] = PAYLOAD
    path = fetch_file("cars_test.tgz", [("m1", http_server.url("cars_test.tgz"))], PAYLOAD_MD5, tmp_path, TIMEOUT_S)
    assert file_md5(path) == PAYLOAD_MD5
    assert http_server.requests == [("cars_test.tgz", f"bytes={half}-")]
    assert http_server.sent["cars_test.tgz"] == len(PAYLOAD) - half  # only the rest crossed the wire


def test_interrupted_download_is_resumed_on_the_next_run(http_server, tmp_path):
    http_server.files["cars_test.tgz"] = PAYLOAD
    http_server.drop_after["cars_test.tgz"] = 100_000
    candidates = [("m1", http_server.url("cars_test.tgz"))]
    with pytest.raises(FetchError):
        fetch_file("cars_test.tgz", candidates, PAYLOAD_MD5, tmp_path, TIMEOUT_S)
    assert (tmp_path / "cars_test.tgz.m1.part").stat().st_size == 100_000
    del http_server.drop_after["cars_test.tgz"]
    assert file_md5(fetch_file("cars_test.tgz", candidates, PAYLOAD_MD5, tmp_path, TIMEOUT_S)) == PAYLOAD_MD5
    assert http_server.requests[-1] == ("cars_test.tgz", "bytes=100000-")


def test_server_ignoring_range_restarts_cleanly(http_server, tmp_path):
    (tmp_path / "cars_test.tgz.m1.part").write_bytes(b"stale bytes")
    http_server.files["cars_test.tgz"] = PAYLOAD
    http_server.ignore_range = True
    path = fetch_file("cars_test.tgz", [("m1", http_server.url("cars_test.tgz"))], PAYLOAD_MD5, tmp_path, TIMEOUT_S)
    assert file_md5(path) == PAYLOAD_MD5


def test_md5_mismatch_tries_the_next_mirror(http_server, tmp_path):
    http_server.files["bad/cars_test.tgz"] = b"not the archive"
    http_server.files["good/cars_test.tgz"] = PAYLOAD
    candidates = [("bad", http_server.url("bad/cars_test.tgz")), ("good", http_server.url("good/cars_test.tgz"))]
    path = fetch_file("cars_test.tgz", candidates, PAYLOAD_MD5, tmp_path, TIMEOUT_S)
    assert file_md5(path) == PAYLOAD_MD5
    assert not (tmp_path / "cars_test.tgz.bad.part").exists()  # the wrong bytes are not kept


def test_cached_file_is_not_fetched_again(http_server, tmp_path):
    (tmp_path / "cars_test.tgz").write_bytes(PAYLOAD)
    fetch_file("cars_test.tgz", [("m1", http_server.url("cars_test.tgz"))], PAYLOAD_MD5, tmp_path, TIMEOUT_S)
    assert http_server.requests == []


def test_all_urls_failing_lists_every_attempt(http_server, tmp_path):
    http_server.files["wrong/cars_test.tgz"] = b"corrupt"
    candidates = [("missing", http_server.url("nothing/cars_test.tgz")),
                  ("wrong", http_server.url("wrong/cars_test.tgz")),
                  ("refused", "http://127.0.0.1:9/cars_test.tgz")]
    with pytest.raises(FetchError) as info:
        fetch_file("cars_test.tgz", candidates, PAYLOAD_MD5, tmp_path, TIMEOUT_S)
    message = str(info.value)
    assert "could not download cars_test.tgz" in message
    assert "404" in message and "md5 mismatch" in message and "refused" in message
    assert not (tmp_path / "cars_test.tgz").exists()


def test_without_md5_any_complete_download_is_kept(http_server, tmp_path):
    """Routes whose archives have no published md5 rely on the dataset fingerprint instead."""
    http_server.files["stanford-cars.tgz"] = PAYLOAD
    path = fetch_file("stanford-cars.tgz", [("m1", http_server.url("stanford-cars.tgz"))], None, tmp_path, TIMEOUT_S)
    assert path.read_bytes() == PAYLOAD
    fetch_file("stanford-cars.tgz", [("m1", http_server.url("stanford-cars.tgz"))], None, tmp_path, TIMEOUT_S)
    assert len(http_server.requests) == 1  # cached
