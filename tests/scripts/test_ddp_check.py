"""scripts/ddp_check.py, the 1-GPU DDP check, run here as its CPU smoke: plain, torchrun x1 and torchrun x2
(gloo) on a tiny crop ddp_store; it must train each under the path it names and compare them."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from support.params import ROOT, repo_params
from support.training import STAGE_MODEL, STAGE_TRAIN


def check(tmp_path: Path, ddp_store: Path, tolerance: float) -> subprocess.CompletedProcess:
    params = repo_params({"base": {"device": "cpu", "threads": 1}})
    params["experiments"]["cnn_basic"]["train"].update(STAGE_TRAIN)
    params["experiments"]["cnn_basic"]["model"].update(STAGE_MODEL)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(ROOT / "scripts" / "ddp_check.py"), "--crops", str(ddp_store), "--name", "cnn_basic",
           "--params", str(tmp_path / "params.yaml"), "--epochs", "2", "--device", "cpu", "--nproc", "2",
           "--tolerance", str(tolerance)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONHASHSEED": "0"})


def test_plain_torchrun_x1_and_x2_are_trained_and_compared(tmp_path, ddp_store):
    done = check(tmp_path, ddp_store, tolerance=-1.0)      # no difference can pass: the comparison itself must fail
    assert done.returncode == 1, done.stderr
    rows = dict(re.findall(r"^\s*(plain|torchrun x\d): val top-1 ([0-9.]+)", done.stdout, re.M))
    assert set(rows) == {"plain", "torchrun x1", "torchrun x2"}, done.stdout + done.stderr
    # world size 1 is the plain computation through DDP's wrapper: the same model on CPU
    assert rows["torchrun x1"] == rows["plain"]
    assert "FAIL: a DDP run differs from the plain one" in done.stderr
