"""The scale benchmark (carbench.workshop.bench, `scripts/benchmark.py scale`): params of the scale workspace, GPU samples,
bare-compute floors, and one tiny CPU run of the whole benchmark through `dvc repro`."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.params import ROOT, repo_params

from carbench.workshop.bench import bare as B
from carbench.workshop.bench import gpu, workspace
from carbench.workshop.bench.overrides import deep_merge, dotted


def test_overrides_merge_key_by_key():
    tree = {"train": {"lr": 0.1, "epochs": 3}, "experiments": {"a": {"train": {"epochs": 5}}}}
    merged = deep_merge(tree, dotted(["train.lr=0.5", "experiments.a.train.compile=true"]))
    assert merged == {"train": {"lr": 0.5, "epochs": 3}, "experiments": {"a": {"train": {"epochs": 5, "compile": True}}}}
    assert tree["train"]["lr"] == 0.1                       # the input is not modified
    with pytest.raises(SystemExit, match="key=value"):
        dotted(["train.lr"])


def test_scale_params_use_the_data_offline_with_random_init_files(tmp_path):
    import torch

    from carbench.config import parse_params

    raw = repo_params()
    overrides = {"train": {"compile": True}, "experiments": {"tl_resnet50_frozen": {"model": {"arch": "mobilenet_v2"}}}}
    params = workspace.scale_params(raw, tmp_path / "cars", overrides, tmp_path / "weights")
    parsed = parse_params(params)                           # still valid params
    assert params["data"] == {**raw["data"], "source": "local", "path": str((tmp_path / "cars").resolve())}
    assert parsed.base.offline
    assert all(e.train.compile for e in parsed.experiments.values() if e.trained)
    weights = {n: e.model.weights for n, e in parsed.experiments.items() if e.config == "transfer"}
    assert weights == {"tl_resnet50_frozen": str(tmp_path / "weights" / "mobilenet_v2-random-init.pth"),
                       "tl_resnet50_finetune": str(tmp_path / "weights" / "resnet50-random-init.pth"),
                       "tl_densenet121_progressive": str(tmp_path / "weights" / "densenet121-random-init.pth")}
    state = torch.load(weights["tl_resnet50_frozen"], weights_only=True)
    assert "features.0.0.weight" in state                   # a torchvision mobilenet_v2 state_dict
    # everything else is the repository's defaults
    finetune = parsed.experiments["tl_resnet50_finetune"]
    assert (finetune.train.image_size, finetune.train.epochs, finetune.model.freeze) == (384, 30, "full")


def test_the_runs_data_wins_over_an_overrides_data_source(tmp_path):
    """An overrides file that names a data source (the offline demo's: synthetic) must not replace the data the
    figures are scaled by."""
    overrides = {"data": {"source": "synthetic"}, "base": {"offline": False}}
    params = workspace.scale_params(repo_params(), tmp_path / "cars", overrides, tmp_path / "weights")
    assert (params["data"]["source"], params["data"]["path"]) == ("local", str((tmp_path / "cars").resolve()))
    assert params["base"]["offline"] is True


def test_workspace_copies_the_project_not_hidden_folders_or_outputs(tmp_path):
    root = tmp_path / "root"
    for rel in ("dvc.yaml", "src/carbench/x.py", ".dvc/config", ".dvc/cache/ab/cd", ".dvcignore", ".gitignore",
                ".tools/big.whl", ".venv/bin/python", "data/raw/images.bin", "metrics/a.json",
                "src/carbench/__pycache__/x.pyc", "docs/data/kept.md"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    repo = workspace.make_workspace(root, tmp_path / "work", {"base": {}})
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert files == [".dvc/config", ".dvcignore", ".gitignore", "docs/data/kept.md", "dvc.yaml", "params.yaml",
                     "src/carbench/x.py"]


def test_crop_benchmark_refuses_a_raw_folder_that_is_not_there(tmp_path):
    """`benchmark.py crop --raw DIR` with a wrong DIR says so, instead of timing generated photos in its place."""
    from carbench.workshop.bench import crop_pool

    with pytest.raises(SystemExit, match=r"error: .*no-such-folder is not a folder of photos \(--raw\)"):
        crop_pool.measure_crop(tmp_path / "no-such-folder")


def test_nvidia_smi_samples_and_busy_fraction():
    text = "2026/11/23 08:40:01.000, 80\n2026/11/23 08:40:01.200, 100\nnot a sample\n2026/11/23 08:40:05.000, 0\n"
    samples = gpu.parse_nvidia_smi(text)
    assert [u for _, u in samples] == [80.0, 100.0, 0.0]
    t0 = samples[0][0]
    assert samples[1][0] - t0 == pytest.approx(0.2)
    assert gpu.busy_fraction(samples, t0, t0 + 1) == pytest.approx(0.9)
    assert gpu.busy_fraction(samples, t0 + 10, t0 + 11) is None


def test_train_floor_follows_freeze_states_refit_and_feature_cache():
    from carbench.config import parse_params

    params = parse_params(repo_params())
    prog = params.experiments["tl_densenet121_progressive"]
    prog = dataclasses.replace(prog, model=dataclasses.replace(prog.model, unfreeze_every=1))
    bare = B.Bare(train={0: 400.0, 1: 200.0, 2: 100.0}, infer=1000.0)
    record = {"epochs": 3, "train_per_epoch": 400, "refit_epochs": 2, "refit_per_epoch": 500, "val_images": 300,
              "feature_images": 0}
    # fit epochs at 0, 1, 2 trainable blocks; refit epochs again from 0 blocks; validation at the inference rate
    expected = 400 / 400 + 400 / 200 + 400 / 100 + 500 / 400 + 500 / 200 + 300 / 1000
    assert B.train_floor(prog, bare, record, num_blocks=2) == pytest.approx(expected)
    frozen = params.experiments["tl_resnet50_frozen"]
    cached = {**record, "feature_images": 700}
    assert B.train_floor(frozen, B.Bare(infer=1000.0), cached, num_blocks=4) == pytest.approx(1.0)


def test_bare_rates_start_no_network_after_the_deadline(synthetic_crops, tmp_path):
    """The device plan's budget holds for the bare rates too: past the deadline no network is measured and its
    stages get no floor (instead of a phase running on for minutes after its budget)."""
    import yaml

    from carbench.workshop.bench import scale

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "crops").symlink_to(synthetic_crops)
    (repo / "params.yaml").write_text(yaml.safe_dump(repo_params()))
    records = [{"stage": "crop", "seconds": 1.0, "start": 0.0, "end": 1.0},
               {"stage": "train@cnn_basic", "seconds": 2.0, "start": 1.0, "end": 3.0, "first_batch_s": 1.0,
                "epochs": 1, "train_per_epoch": 24, "refit_epochs": 0, "refit_per_epoch": 0, "val_images": 0,
                "feature_images": 0},
               {"stage": "evaluate@knn_resnet50_k3", "seconds": 1.0, "start": 3.0, "end": 4.0, "images": 12}]
    rows = scale.measure(repo, records, [], "cpu", deadline=0.0)
    assert [(r["stage"], r["floor_s"], r["bare_images_per_second"], r.get("no_floor")) for r in rows] == [
        ("crop", None, None, None), ("train@cnn_basic", None, None, "budget"),
        ("evaluate@knn_resnet50_k3", None, None, "budget")]


def test_a_baseline_embedding_with_pretrained_weights(synthetic_crops, tmp_path):
    """A retrieval experiment of dag.pretrained (no trained experiment embeds for it): random-init weights of its
    architecture too, and its stages measured without a floor (there is no bare rate of a trained network)."""
    import yaml

    from carbench import config
    from carbench.workshop.bench import scale

    if not hasattr(config, "EmbedWithConfig"):
        pytest.skip("this version has no dag.pretrained")
    raw = repo_params({"experiments": {"knn_base": {"config": "retrieval", "embed": {}, "knn": {"k": 3}}},
                       "dag": {"pretrained": {"knn_base": {"arch": "mobilenet_v2", "weights": "IMAGENET1K_V1",
                                                           "image_size": 64}}}})
    params = workspace.scale_params(raw, tmp_path / "cars", {}, tmp_path / "weights")
    assert params["dag"]["pretrained"]["knn_base"]["weights"] == str(tmp_path / "weights" /
                                                                     "mobilenet_v2-random-init.pth")
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "crops").symlink_to(synthetic_crops)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    records = [{"stage": "evaluate@knn_base", "seconds": 1.0, "start": 0.0, "end": 1.0, "images": 12}]
    rows = scale.measure(repo, records, [], "cpu")
    assert rows[0]["floor_s"] is None and rows[0]["no_floor"] == "pretrained embedder: no bare rate"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None, reason="needs dvc and git")
def test_tiny_scale_run_on_cpu(tmp_path):
    """The benchmark on 4 generated classes with the offline demo's CPU settings, 1 epoch, one target: the
    stages a k-NN evaluation needs (a train, an embed and two evaluations' worth of kinds)."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "scripts/benchmark.py", "scale", "--device", "cpu", "--workdir", str(tmp_path / "w"),
           "--overrides", "configs/overrides/offline.yaml", "--num-classes", "4", "--train-per-class", "8",
           "--test-per-class", "4", "--min-size", "64", "--max-size", "96", "--workers", "2",
           "--report", str(report), "--set", "base.threads=1", "--set", "split.allow_missing_classes=true",
           "--set", "experiments.tl_resnet50_finetune.train.epochs=1", "--target", "evaluate@knn_resnet50_k3",
           "--logs", str(tmp_path / "logs")]
    # no `dvc` command on PATH (an environment not activated): it runs as `python -m dvc`
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "dvc").exists())
    env = {**os.environ, "CARBENCH_BARE_SECONDS": "0.2", "PATH": path}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(report.read_text())
    stages = {r["stage"]: r for r in out["stages"]}
    assert set(stages) == {"download", "split", "crop", "resolve", "train@tl_resnet50_finetune",
                           "embed@knn_resnet50_k3", "knn@knn_resnet50_k3", "evaluate@knn_resnet50_k3"}
    for name, row in stages.items():
        if name.partition("@")[0] in ("train", "embed", "evaluate"):
            assert 0 < row["first_batch_s"] < row["seconds"], name
            assert 0 < row["floor_s"] < row["seconds"], name     # nothing beats the bare compute
        else:
            assert row["floor_s"] is None, name
    assert stages["train@tl_resnet50_finetune"]["bare_images_per_second"] > 0
    summary = out["summary"]
    assert summary["floor_s"] < summary["model_stage_sum_s"] <= summary["stage_sum_s"] < summary["dvc_repro_s"]
    assert "dvc repro wall <= 600 s" in done.stdout and "bare-compute floor" in done.stdout
    logs = tmp_path / "logs"
    assert len((logs / "stages.jsonl").read_text().splitlines()) == 8
    assert "Running stage 'evaluate@knn_resnet50_k3'" in (logs / "dvc-repro.log").read_text()


def test_bare_rates_time_every_freeze_state_on_cpu(monkeypatch):
    import torch

    from carbench.config import parse_params

    monkeypatch.setattr(B, "BARE_TIMED_SECONDS", 0.02)
    monkeypatch.setattr(B, "BARE_MIN_STEPS", 2)
    monkeypatch.setattr(B, "BARE_WARMUP_STEPS", 1)
    params = parse_params(repo_params())
    prog = params.experiments["tl_densenet121_progressive"]
    prog = dataclasses.replace(prog, model=dataclasses.replace(prog.model, arch="mobilenet_v2", unfreeze_every=2),
                               train=dataclasses.replace(prog.train, epochs=5, image_size=32, batch_size=4,
                                                         eval_batch_size=4))
    base = dataclasses.replace(params.base, device="cpu")
    bare = B.bare_rates(prog, base, 5, torch.device("cpu"))
    assert sorted(bare.train) == [0, 1, 2]          # epochs 0-1: head only, 2-3: one block, 4: two blocks
    assert all(rate > 0 for rate in bare.train.values()) and bare.infer > 0
    frozen = params.experiments["tl_resnet50_frozen"]
    frozen = dataclasses.replace(frozen, model=dataclasses.replace(frozen.model, arch="mobilenet_v2"),
                                 train=dataclasses.replace(frozen.train, image_size=32, batch_size=4,
                                                           eval_batch_size=4))
    cached = B.bare_rates(frozen, base, 5, torch.device("cpu"))
    assert cached.train == {} and cached.infer > 0  # the feature cache runs the backbone only in inference
