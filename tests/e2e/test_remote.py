"""A shared DVC remote (README "Scaling out"): `dvc push` from one clone, then `dvc pull` in a fresh clone restores
the data, the crop store and a trained model, so `dvc repro` there has nothing to run. The remote is a local
folder: the committed `.dvc/config` names the default remote `shared`; each clone points it at the test's folder
with `dvc remote modify --local` (as a user points it at S3, GCS or SSH)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.project import env, make_project, ran_stages, run, tiny_params

pytestmark = pytest.mark.e2e

#: download -> split -> crop -> resolve -> train@cnn_basic: raw data, crops and one model (no weights needed).
TARGET = "train@cnn_basic"


def _md5s(root: Path, rel: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted((root / rel).rglob("*")) if p.is_file()}


def _use_remote(project: Path, remote: Path, environ: dict) -> None:
    run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], project, environ)


def test_push_then_pull_in_a_fresh_clone_leaves_nothing_to_run(tmp_path):
    environ = env(tmp_path / "torch_home")
    remote = tmp_path / "remote"
    first = make_project(tmp_path / "first", tiny_params())
    assert run(["dvc", "remote", "default"], first, environ).stdout.strip() == "shared"
    _use_remote(first, remote, environ)
    run(["dvc", "repro", TARGET], first, environ)
    run(["git", "add", "-A"], first, environ)               # dvc.lock and the cache: false outputs (metrics)
    run(["git", "commit", "-qm", "ran train@cnn_basic"], first, environ)
    run(["dvc", "push", "--with-deps", TARGET], first, environ)
    assert any(p.is_file() for p in remote.rglob("*")), "nothing was pushed"

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path, environ)
    assert not (second / "models" / "cnn_basic").exists() and not (second / "data" / "crops").exists()
    _use_remote(second, remote, environ)
    run(["dvc", "pull", "--with-deps", TARGET], second, environ)  # what ran upstream of it, no more
    for rel in ("data/raw", "data/crops", "models/cnn_basic"):
        assert _md5s(second, rel) == _md5s(first, rel), rel
    assert "up to date" in run(["dvc", "status", TARGET], second, environ).stdout
    assert ran_stages(run(["dvc", "repro", TARGET], second, environ).stdout) == set()
