"""Multi-node DDP on loopback: train@ as 2 "nodes" x 1 process (two copies of the stage, each with its own working
directory, meeting at a c10d rendezvous on 127.0.0.1, gloo) gives the weights of 2 processes under torchrun
--standalone, and only one node (global rank 0) writes outputs. The rendezvous endpoint comes from SLURM's
environment under srun, from base.rdzv_endpoint otherwise."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from support.params import ROOT, repo_params
from support.training import STAGE_MODEL, STAGE_TRAIN

from carbench.config import ConfigError
from carbench.train import distributed

#: Same samples per step and the same averaged gradients: only float summation order may differ.
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stage(cwd: Path, crops: Path, base: dict) -> subprocess.Popen:
    """stages/train.py for cnn_basic (BatchNorm CNN, no augmentation) in ``cwd`` with ``base`` overrides."""
    cwd.mkdir(parents=True)
    params = repo_params({"base": {"device": "cpu", "threads": 1, **base}})
    entry = params["experiments"]["cnn_basic"]
    entry["train"].update(STAGE_TRAIN)
    entry["model"].update(STAGE_MODEL)
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(ROOT / "stages" / "train.py"), "--params", "params.yaml", "--name", "cnn_basic",
           "--crops", str(crops), "--out", "models/cnn_basic", "--live", "metrics/train/cnn_basic",
           "--curves", "plots/curves", "--resume-dir", ".cache/resume"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK") and not k.startswith("SLURM_")}
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT / "src")})


def finish(proc: subprocess.Popen) -> str:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, err
    return err


def weights(path: Path) -> dict:
    return torch.load(path / "models" / "cnn_basic" / "best.pt", weights_only=True)["state_dict"]


def test_two_nodes_of_one_process_equal_two_standalone_processes(tmp_path, ddp_store):  # noqa: F811 (fixture)
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [start_stage(tmp_path / f"node{i}", ddp_store, {"gpus": 1, "nodes": 2, "rdzv_endpoint": endpoint})
             for i in range(2)]
    logs = [finish(p) for p in nodes]
    standalone = finish(start_stage(tmp_path / "standalone", ddp_store, {"gpus": 2}))
    assert "running 2 processes under torchrun" in standalone
    for log in logs:
        assert f"this node runs 1 of 2 processes under torchrun, c10d rendezvous at {endpoint}" in log
        assert "--nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d" in log
    # global rank 0 (local rank 0 of torchrun's node 0) alone wrote the model, the curves and the live metrics
    writers = [i for i in range(2) if (tmp_path / f"node{i}" / "models").exists()]
    assert len(writers) == 1, writers
    silent = tmp_path / f"node{1 - writers[0]}"
    assert sorted(p.name for p in silent.iterdir()) == ["params.yaml"]
    assert "DDP: 2 process(es)" in logs[writers[0]]
    two_nodes, reference = weights(tmp_path / f"node{writers[0]}"), weights(tmp_path / "standalone")
    assert two_nodes.keys() == reference.keys()
    for key in reference:
        assert torch.allclose(two_nodes[key].float(), reference[key].float(), atol=ATOL), key


def test_rendezvous_endpoint_from_slurm_under_srun_else_from_params():
    slurm = {"SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7", "SLURM_JOB_ID": "12345", "SLURM_STEP_ID": "3"}
    assert distributed.rendezvous(None, slurm) == ("10.0.0.7:29745", "slurm-12345-3")
    assert distributed.rendezvous("node9:4000", slurm) == ("10.0.0.7:4000", "slurm-12345-3")  # the port is kept
    assert distributed.rendezvous("node9:4000", {}) == ("node9:4000", "carbench")
    assert distributed.rendezvous("node9", {}) == (f"node9:{distributed.RDZV_PORT}", "carbench")
    with pytest.raises(ConfigError, match="base.rdzv_endpoint"):
        distributed.rendezvous(None, {})
    assert distributed.launch_command(2, ["t.py"], nodes=3, endpoint="h:1", run_id="r")[3:] == [
        "--nnodes=3", "--nproc_per_node=2", "--rdzv_backend=c10d", "--rdzv_endpoint=h:1", "--rdzv_id=r", "t.py"]
    assert distributed.should_launch(1, 2) and not distributed.should_launch(1, 1)


def test_batch_size_must_divide_over_every_process_of_every_node(tmp_path, ddp_store):  # noqa: F811 (fixture)
    proc = start_stage(tmp_path / "n", ddp_store, {"gpus": 1, "nodes": 3, "rdzv_endpoint": "127.0.0.1:1"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "must be divisible by the number of processes (3" in err
    assert len(err.strip().splitlines()) == 1 and "under torchrun" not in err    # refused before any launch
