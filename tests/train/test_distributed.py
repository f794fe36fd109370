"""carbench.train.distributed: train@ under torchrun (gloo on CPU, 2 processes), the engine's DDP path (world 1 in
this process, world 2 in spawned processes), the batch divisibility check, and base.device cuda:auto's GPU claim."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from support.params import ROOT, repo_params
from support.training import DDP_COUNTS, STAGE_MODEL, STAGE_TRAIN, Interrupt, tiny

from carbench.core import runtime
from carbench.config import ConfigError
from carbench.model.checkpoint import load_classifier
from carbench.train import distributed
from carbench.train.engine import RunIO, run_phase, setup_trainer, train_experiment
from carbench.train.train_log import NoLive

#: The DDP run's val top-1 may differ from the single-process one by at most this much: 3 of the 48 val images.
#: Setting of the comparison: a BatchNorm CNN, no augmentation, the same seed and global batch. The two runs see
#: the same samples per step and average the same gradients; they differ only in BatchNorm (each rank normalises
#: its half batch of 4 with its own statistics) and float summation order, which moves a few borderline images.
VAL_TOLERANCE = 3 / 48
#: The single-process run must be clearly above chance (1/4) for the comparison to mean something.
WELL_ABOVE_CHANCE = 0.6


def stage(tmp_path: Path, ddp_store: Path, gpus: int, train: dict | None = None,
          model: dict | None = None) -> subprocess.CompletedProcess:
    """Run stages/train.py for cnn_basic (BatchNorm on) with base.device cpu and base.gpus ``gpus``."""
    params = repo_params({"base": {"device": "cpu", "threads": 2, "gpus": gpus}})
    entry = params["experiments"]["cnn_basic"]
    entry["train"].update({**STAGE_TRAIN, **(train or {})})
    entry["model"].update({**STAGE_MODEL, **(model or {})})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(ROOT / "stages" / "train.py"), "--params", "params.yaml", "--name", "cnn_basic",
           "--crops", str(ddp_store), "--out", "models/cnn_basic", "--live", "metrics/train/cnn_basic",
           "--curves", "plots/curves", "--resume-dir", ".cache/resume"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT / "src")})


def val_rows(live: Path) -> list[float]:
    rows = (live / "plots" / "metrics" / "val" / "top1.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[-1]) for row in rows]


def test_train_stage_with_two_gloo_processes_matches_one_process(tmp_path, ddp_store):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir(), ddp.mkdir()
    one = stage(single, ddp_store, gpus=1)
    assert one.returncode == 0, one.stderr
    assert "torchrun" not in one.stderr  # gpus 1: today's single process
    two = stage(ddp, ddp_store, gpus=2)
    assert two.returncode == 0, two.stderr
    assert "running 2 processes under torchrun" in two.stderr and "DDP: 2 process(es)" in two.stderr
    epochs = STAGE_TRAIN["epochs"]
    assert two.stderr.count(f"epoch {epochs}/{epochs}") == 1  # rank 1 logs nothing
    assert sorted(p.name for p in (ddp / "models" / "cnn_basic").iterdir()) == ["best.pt"]
    model, info = load_classifier(ddp / "models" / "cnn_basic" / "best.pt", "cpu")  # no "module." prefix
    reference = torch.load(single / "models" / "cnn_basic" / "best.pt", weights_only=True)["state_dict"]
    assert set(model.state_dict()) == set(reference)
    live_one, live_two = (d / "metrics" / "train" / "cnn_basic" for d in (single, ddp))
    assert len(val_rows(live_two)) == len(val_rows(live_one)) == STAGE_TRAIN["epochs"]  # one row per epoch
    top1_one = json.loads((live_one / "metrics.json").read_text())["best_val_top1"]
    top1_two = json.loads((live_two / "metrics.json").read_text())["best_val_top1"]
    assert top1_one >= WELL_ABOVE_CHANCE
    assert abs(top1_two - top1_one) <= VAL_TOLERANCE, (top1_one, top1_two)
    assert info["best_val_top1"] == top1_two
    assert not (ddp / ".cache" / "resume" / "cnn_basic.pt").exists()


def test_batch_size_not_divisible_by_gpus_is_refused_before_launching(tmp_path, ddp_store):
    result = stage(tmp_path, ddp_store, gpus=3)
    assert result.returncode == 1
    assert result.stderr.startswith("error: train.batch_size (8) must be divisible by the number of processes (3")
    assert "under torchrun" not in result.stderr and not (tmp_path / "models").exists()
    with pytest.raises(ConfigError, match="divisible"):
        distributed.local_batch_size(10, 4)
    assert distributed.local_batch_size(12, 4) == 3


def test_launch_command_reruns_this_script_under_torchrun():
    command = distributed.launch_command(4, ["stages/train.py", "--name", "x"])
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                       "stages/train.py", "--name", "x"]


def test_shard_is_equal_per_rank_and_covers_the_permutation():
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    parts = [distributed.Ddp(True, rank, 2).shard(perm, even=True) for rank in range(2)]
    assert [len(p) for p in parts] == [5, 5] and not set(parts[0].tolist()) & set(parts[1].tolist())
    val = [distributed.Ddp(True, rank, 2).shard(perm, even=False) for rank in range(2)]
    assert sorted(torch.cat(val).tolist()) == list(range(11))
    assert distributed.SINGLE.shard(perm, even=True) is perm


# ----------------------------------------------------------------------------- the engine inside a process group
def test_world_size_one_goes_through_ddp_and_equals_the_plain_run(tmp_path, ddp_store, one_thread):
    exp, base = tiny("cnn_basic", model={"cnn_batch_norm": True}, train={"epochs": 2, "augment": "standard"})
    plain = train_experiment(exp, base, ddp_store, tmp_path / "a", tmp_path / "la", resume_dir=tmp_path / "r")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = distributed.context()
        assert ddp.enabled and ddp.world == 1
        trainer, _ = setup_trainer(exp, base, ddp_store, torch.device("cpu"), ddp)
        assert isinstance(trainer.train_forward, torch.nn.parallel.DistributedDataParallel)
        wrapped = train_experiment(exp, base, ddp_store, tmp_path / "b", tmp_path / "lb", resume_dir=tmp_path / "r")
    finally:
        dist.destroy_process_group()
    assert wrapped["best_val_top1"] == plain["best_val_top1"]
    a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def _worker(rank: int, world: int, tmp: str, ddp_store: str, job: str) -> None:
    """One rank of a spawned gloo group (file:// rendezvous); runs ``job``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        tmp_path, ddp = Path(tmp), distributed.context()
        if job == "resume":  # one run straight through; one interrupted after epoch 1 and run again (resumed)
            exp, base = tiny("cnn_basic", model={"cnn_batch_norm": True},
                             train={"epochs": 3, "augment": "standard", "warmup_epochs": 1})
            train_experiment(exp, base, ddp_store, tmp_path / "straight", None, resume_dir=tmp_path / "r1")
            try:
                train_experiment(exp, base, ddp_store, tmp_path / "resumed", None, resume_dir=tmp_path / "r2",
                                 on_epoch_end=Interrupt(after=0))
            except KeyboardInterrupt:
                pass
            assert (tmp_path / "r2" / "cnn_basic.pt").is_file() and not (tmp_path / "resumed").exists()
            train_experiment(exp, base, ddp_store, tmp_path / "resumed", None, resume_dir=tmp_path / "r2")
        elif job == "outputs":  # every rank is given its own output paths: only rank 0's may appear
            exp, base = tiny("cnn_basic", train={"epochs": 2, "refit": True})
            train_experiment(exp, base, ddp_store, tmp_path / f"model{rank}", tmp_path / f"live{rank}",
                             resume_dir=tmp_path / f"resume{rank}", curves_dir=tmp_path / f"curves{rank}")
        else:  # progressive unfreezing: the DDP module is rebuilt when blocks unfreeze
            exp, base = tiny("cnn_basic", model={"freeze": "progressive", "trainable_blocks": 0,
                                                 "unfreeze_every": 1}, train={"epochs": 3, "lr": 0.05})
            trainer, _ = setup_trainer(exp, base, Path(ddp_store), torch.device("cpu"), ddp)
            initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            batches, batch = [], trainer.train_data.batch

            def recorded(order, start, stop):  # which samples each training step of this rank takes
                batches.append(order.cpu[start:stop].clone())
                return batch(order, start, stop)

            trainer.train_data.batch = recorded
            run_phase(trainer, RunIO(NoLive(), tmp_path / f"resume{rank}.pt", "key"))
            torch.save({"initial": initial, "final": trainer.model.state_dict(), "batches": batches,
                        "blocks": trainer.model.trainable_blocks}, tmp_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(tmp_path: Path, ddp_store: Path, job: str) -> None:
    torch.multiprocessing.spawn(_worker, args=(2, str(tmp_path), str(ddp_store), job), nprocs=2)


def test_two_rank_run_interrupted_and_resumed_equals_one_run_straight_through(tmp_path, ddp_store):
    """The resume file (written by rank 0) keeps every rank's random streams: both ranks continue exactly, with
    per-rank augmentation and BatchNorm, so the resumed model equals the uninterrupted one."""
    spawn(tmp_path, ddp_store, "resume")
    straight = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed" / "best.pt", weights_only=True)["state_dict"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_second_rank_writes_nothing(tmp_path, ddp_store):
    spawn(tmp_path, ddp_store, "outputs")
    assert (tmp_path / "model0" / "best.pt").is_file() and (tmp_path / "live0" / "metrics.json").is_file()
    assert (tmp_path / "curves0" / "top1" / "cnn_basic.tsv").is_file()
    written = sorted(p.name for p in tmp_path.iterdir())
    assert not [name for name in written if name.endswith("1")], written


def test_progressive_unfreezing_rebuilds_ddp_so_ranks_stay_equal(tmp_path, ddp_store):
    spawn(tmp_path, ddp_store, "progressive")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert rank0["blocks"] >= 2  # blocks unfroze after the DDP module was first built
    unfrozen_late = [k for k in rank0["final"] if k.startswith("backbone.")
                     and rank0["final"][k].is_floating_point()
                     and not torch.equal(rank0["final"][k], rank0["initial"][k])]
    assert unfrozen_late  # the backbone trained after it unfroze
    for key, value in rank0["final"].items():  # gradients of late-unfrozen blocks were all-reduced too
        assert torch.allclose(value.float(), rank1["final"][key].float(), atol=1e-6), key
    # Each epoch the ranks split one permutation: equal steps of batch_size / 2, disjoint, all 64 samples.
    steps = len(rank0["batches"]) // 3
    assert len(rank1["batches"]) == 3 * steps and {len(b) for b in rank0["batches"] + rank1["batches"]} == {4}
    for epoch in range(3):
        part0, part1 = (torch.cat(r["batches"][epoch * steps:(epoch + 1) * steps]).tolist() for r in (rank0, rank1))
        assert sorted(part0 + part1) == list(range(DDP_COUNTS["train"])), epoch


# ----------------------------------------------------------------------------- base.device: cuda:auto
@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    free = {0: 5 * 2**30, 1: 9 * 2**30}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 16 * 2**30))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(runtime, "_CLAIMED", [])
    return tmp_path


def test_cuda_auto_claims_a_different_gpu_per_holder_then_the_freest(two_gpus):
    assert runtime.claim_gpu(two_gpus) == 0
    assert runtime.claim_gpu(two_gpus) == 1  # another lock handle (another process) gets the other GPU
    assert runtime.claim_gpu(two_gpus) == 1  # all claimed: the one with most free memory
    assert sorted(p.name for p in two_gpus.iterdir()) == ["carbench-gpu-0.lock", "carbench-gpu-1.lock"]


def test_cuda_auto_lock_is_held_by_another_process_until_it_exits(two_gpus):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, torch; torch.cuda.device_count = lambda: 2\n"
         "from carbench.core.runtime import claim_gpu; print(claim_gpu(sys.argv[1]), flush=True); sys.stdin.read()",
         str(two_gpus)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""})
    try:
        assert holder.stdout.readline().strip() == "0"
        assert runtime.claim_gpu(two_gpus) == 1
    finally:
        holder.communicate("")
    assert runtime.claim_gpu(two_gpus) == 0  # released when the holder exited


def test_cuda_auto_in_a_torchrun_worker_keeps_its_local_rank(two_gpus, monkeypatch):
    import torch

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(runtime, "claim_gpu", lambda *a: pytest.fail("a DDP rank must not claim another GPU"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.select_device("cuda:auto") == torch.device("cuda", 1)
    assert chosen == [1]


def test_cuda_auto_respects_cuda_visible_devices(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-ab:cd")
    assert runtime.visible_gpu_names(2) == ["3", "GPU-ab_cd"]
    assert runtime.claim_gpu(two_gpus) == 0
    assert (two_gpus / "carbench-gpu-3.lock").is_file()


def test_head_on_cached_features_with_refit_equals_the_single_process_run(tmp_path, ddp_store):
    """Frozen backbone + feature cache (+ refit on train+val): the head has no BatchNorm, and the two ranks' half
    batches together are the single process's batch, so DDP's averaged gradient is the same gradient: the saved
    weights agree to float precision, in both phases (the refit trains on the concatenated cached features)."""
    frozen = {"feature_cache": True, "refit": True, "epochs": 3}
    runs = {}
    for gpus in (1, 2):
        folder = tmp_path / f"gpus{gpus}"
        folder.mkdir()
        done = stage(folder, ddp_store, gpus, train=frozen, model={"freeze": "frozen"})
        assert done.returncode == 0, done.stderr
        assert "feature cache" in done.stderr and "refit" in done.stderr
        runs[gpus] = torch.load(folder / "models" / "cnn_basic" / "best.pt", weights_only=True)
    assert runs[1]["refit"] and runs[2]["refit"] and runs[1]["epoch"] == runs[2]["epoch"]
    one, two = runs[1]["state_dict"], runs[2]["state_dict"]
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), atol=1e-5), key
