"""carbench.train.engine and stages/train.py on a tiny crop store written here with NumPy."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from support.params import ROOT, repo_params
from support.training import (
    CLASSES,
    COUNTS,
    IMAGE_SIZE,
    STORE_SIZE,
    Interrupt,
    assert_same_weights,
    deterministic_metrics,
    run,
    tiny,
    weights_of,
)

from carbench.model.build import build_model
from carbench.model.checkpoint import load_classifier
from carbench.model.preprocess import eval_preprocess
from carbench.core.runtime import seed_everything
from carbench.train.augment import build_augmenter, stored_size
from carbench.train.batches import Order, load_split_data
from carbench.train.engine import setup_trainer, train_experiment
from carbench.train.resume import RESUME_FORMAT

METRIC_FILES = ("train/loss", "train/top1", "val/loss", "val/top1", "lr")


# Tiny models: one thread is faster and immune to other processes competing for the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_loop_overfits_a_tiny_batch(store):
    exp, base = tiny("cnn_basic", model={"init": "he"}, train={"optimizer": "adam", "lr": 0.01, "scheduler": "none",
                                                               "augment": "none", "label_smoothing": 0.0})
    seed_everything(base.seed)
    trainer, _ = setup_trainer(exp, base, store, torch.device("cpu"))
    x, y = trainer.train_data.batch(Order.make(torch.arange(8), torch.device("cpu")), 0, 8)
    trainer.model.train()
    for _ in range(150):
        loss, logits = trainer.train_step(trainer.prepare(x, train=True), y)
    assert loss.item() < 0.05 and torch.equal(logits.argmax(1), y)


def test_outputs_metrics_and_checkpoint(tmp_path, store):
    exp, base = tiny()
    summary = train_experiment(exp, base, store, tmp_path / "m", tmp_path / "live", resume_dir=tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["best.pt"]
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    for key in ("best_val_top1", "best_epoch", "params_count", "train_seconds", "lr", "epoch_seconds",
                "images_per_second"):
        assert key in metrics, key
    assert set(metrics["train"]) == {"loss", "top1"} and set(metrics["val"]) == {"loss", "top1"}
    assert summary["best_epoch"] == metrics["best_epoch"] >= 1
    for name in METRIC_FILES + ("epoch_seconds", "images_per_second"):
        rows = (tmp_path / "live" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert len(rows) == 1 + exp.train.epochs, name
    model, info = load_classifier(tmp_path / "m" / "best.pt", "cpu")
    assert info["best_val_top1"] == metrics["best_val_top1"] and info["epoch"] == metrics["best_epoch"]
    for key in ("weights_file", "weights_sha256"):  # random init: recorded as "none"
        assert info[key] == metrics[key] == summary[key] == "none", key
    assert model(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, CLASSES)
    assert not list((tmp_path / "r").glob("*.pt"))  # resume state removed after success


def test_two_runs_give_identical_weights(tmp_path, store):
    exp, base = tiny(train={"augment": "strong"})
    out_a, live_a = run(tmp_path, store, exp, base, "a")
    out_b, live_b = run(tmp_path, store, exp, base, "b")
    assert_same_weights(weights_of(out_a), weights_of(out_b))
    assert deterministic_metrics(live_a) == deterministic_metrics(live_b)


def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path, store, capsys):
    exp, base = tiny(train={"epochs": 3, "augment": "standard", "warmup_epochs": 1})
    out_a, live_a = run(tmp_path, store, exp, base, "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, store, exp, base, "b", on_epoch_end=Interrupt(after=0))
    assert not (tmp_path / "b" / "model").exists()  # the model dir appears only when training finished
    assert (tmp_path / "resume" / f"{exp.name}.pt").is_file()
    epochs_run: list[int] = []
    out_b, live_b = run(tmp_path, store, exp, base, "b", on_epoch_end=lambda epoch, row: epochs_run.append(epoch))
    assert epochs_run == [1, 2]  # really resumed after the first epoch
    assert "resuming after epoch 1" in capsys.readouterr().err
    assert_same_weights(weights_of(out_a), weights_of(out_b))
    assert deterministic_metrics(live_a) == deterministic_metrics(live_b)
    for name in METRIC_FILES:
        path = Path("plots") / "metrics" / f"{name}.tsv"
        assert (live_a / path).read_text() == (live_b / path).read_text(), name
    assert not (tmp_path / "resume" / f"{exp.name}.pt").exists()


def test_stale_resume_state_is_ignored_and_replaced(tmp_path, store, capsys):
    exp, base = tiny(train={"epochs": 1})
    (tmp_path / "resume").mkdir()
    torch.save({"format": RESUME_FORMAT, "key": "another config"}, tmp_path / "resume" / f"{exp.name}.pt")
    out, _ = run(tmp_path, store, exp, base, "a")
    assert "ignoring resume state" in capsys.readouterr().err
    assert (out / "best.pt").is_file()


def test_feature_cache_trains_the_head_on_cached_features(tmp_path, store, capsys):
    exp, base = tiny("cnn_basic", model={"freeze": "frozen"},
                     train={"optimizer": "adam", "lr": 0.05, "epochs": 3, "feature_cache": True, "augment": "none"})
    out_cached, _ = run(tmp_path, store, exp, base, "cached")
    assert "feature cache" in capsys.readouterr().err
    plain = dataclasses.replace(exp, train=dataclasses.replace(exp.train, feature_cache=False))
    out_plain, _ = run(tmp_path, store, plain, base, "plain")
    assert "feature cache" not in capsys.readouterr().err
    cached, uncached = weights_of(out_cached), weights_of(out_plain)
    torch.manual_seed(base.seed)
    initial = build_model(exp.model, CLASSES, pretrained=True).state_dict()
    for key, value in cached.items():
        if key.startswith("backbone."):
            assert torch.equal(value, initial[key]), key  # frozen backbone untouched
        else:
            assert not torch.equal(value, initial[key]), key  # the head trained
            assert torch.allclose(value, uncached[key], atol=1e-4), key  # same maths as without the cache


def test_checkpoint_and_metrics_record_the_weights_file_and_its_sha256(tmp_path, store, capsys):
    exp, base = tiny("cnn_basic", train={"epochs": 2})
    path = tmp_path / "start.pth"
    torch.manual_seed(7)
    torch.save(build_model(exp.model, CLASSES, pretrained=False).state_dict(), path)
    exp = dataclasses.replace(exp, model=dataclasses.replace(exp.model, weights=str(path)))
    expected = {"weights_file": "start.pth", "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    out, live = run(tmp_path, store, exp, base, "a")
    ckpt = torch.load(out / "best.pt", weights_only=True)
    metrics = json.loads((live / "metrics.json").read_text())
    assert {k: ckpt[k] for k in expected} == expected == {k: metrics[k] for k in expected}
    # Other bytes under the same name: another sha256 in the metrics (dvc metrics diff shows it), and a
    # resume state saved while training from the first file is not resumed.
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, store, exp, base, "b", on_epoch_end=Interrupt(after=0))
    torch.manual_seed(8)
    torch.save(build_model(exp.model, CLASSES, pretrained=False).state_dict(), path)
    capsys.readouterr()
    _, live_c = run(tmp_path, store, exp, base, "b")
    assert "ignoring resume state" in capsys.readouterr().err
    changed = json.loads((live_c / "metrics.json").read_text())
    assert changed["weights_file"] == "start.pth"
    assert changed["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() != expected["weights_sha256"]


def test_cudnn_tunes_only_the_full_training_batch(store):
    """train.cudnn_benchmark: autotuning on for full training batches only, off for the partial last batch and
    validation (each new shape would pay a tuning run). The flag is only touched on CUDA; forced here on CPU."""
    exp, base = tiny(train={"batch_size": 10, "epochs": 1})   # 24 train crops: batches of 10, 10, 4
    trainer, _ = setup_trainer(exp, base, store, torch.device("cpu"))
    assert trainer.cudnn_tune is False                         # CPU: never touched
    trainer.cudnn_tune = True
    seen = []
    model = trainer.forward

    def spy(x):
        seen.append((len(x), torch.backends.cudnn.benchmark))
        return model(x)

    trainer.forward = trainer.train_forward = spy
    before = torch.backends.cudnn.benchmark
    try:
        from carbench.train.train_log import NoBar

        trainer.train_epoch(0, NoBar())
        assert seen == [(10, True), (10, True), (4, False)]
        seen.clear()
        trainer.evaluate()
        assert seen and all(flag is False for _, flag in seen)
        trainer.cudnn_tune = False                             # train.cudnn_benchmark: false leaves it alone
        torch.backends.cudnn.benchmark = True
        seen.clear()
        trainer.train_epoch(1, NoBar())
        assert {flag for _, flag in seen} == {True}
    finally:
        torch.backends.cudnn.benchmark = before


def test_stage_log_records_the_training_work(tmp_path, store, monkeypatch):
    from carbench.core import timing

    monkeypatch.setenv(timing.STAGE_LOG_ENV, str(tmp_path / "log.jsonl"))
    monkeypatch.setattr(timing, "_fields", {})
    exp, base = tiny(train={"epochs": 3, "refit": True, "lr": 0.05})
    run(tmp_path, store, exp, base, "a")
    got = timing.fields()
    best = json.loads((tmp_path / "a" / "live" / "metrics.json").read_text())["best_epoch"]
    assert (got["epochs"], got["train_per_epoch"]) == (3, COUNTS["train"])
    assert (got["refit_epochs"], got["refit_per_epoch"]) == (best, COUNTS["train"] + COUNTS["val"]) and best > 0
    assert got["val_images"] == 3 * COUNTS["val"] and got["feature_images"] == 0
    assert got["steady_images_per_second"] > 0 and got["first_batch_s"] > 0


def test_early_stopping_on_patience(tmp_path, store):
    exp, base = tiny(train={"epochs": 6, "patience": 1, "lr": 1e-12, "scheduler": "none"})
    _, live = run(tmp_path, store, exp, base, "a")
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and metrics["step"] == 1  # stopped after epoch 2


def test_zero_epochs_saves_the_initial_model(tmp_path, store):
    exp, base = tiny(train={"epochs": 0})
    out, live = run(tmp_path, store, exp, base, "a")
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 0
    assert json.loads((live / "metrics.json").read_text())["best_epoch"] == 0


def test_streamed_split_gives_the_same_batches(store):
    cpu = torch.device("cpu")
    resident = load_split_data(store, "train", cpu, CLASSES)
    streamed = load_split_data(store, "train", cpu, CLASSES, budget=0)
    assert resident.resident and not streamed.resident
    order = Order.make(torch.randperm(COUNTS["train"]), cpu)
    for a, b in zip(resident.batch(order, 3, 11), streamed.batch(order, 3, 11)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("augment", ["none", "standard", "strong"])
def test_resizing_the_resident_store_once_changes_no_batch(store, augment):
    cpu, size, mean, std = torch.device("cpu"), 8, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    side = stored_size(augment, False, size, STORE_SIZE)
    resident = load_split_data(store, "train", cpu, CLASSES, size=side)
    streamed = load_split_data(store, "train", cpu, CLASSES, budget=0, size=side)
    assert resident.images.shape[1] == side < STORE_SIZE and not streamed.resident
    order = Order.make(torch.randperm(COUNTS["train"]), cpu)
    small, full = resident.batch(order, 0, 10)[0], streamed.batch(order, 0, 10)[0]
    augment_a, augment_b = (build_augmenter(augment, False, size, mean, std, torch.Generator().manual_seed(0))
                            for _ in range(2))
    assert torch.equal(augment_a(small), augment_b(full))
    val_order = Order.make(torch.arange(COUNTS["val"]), cpu)
    val_small = load_split_data(store, "val", cpu, CLASSES, size=size).batch(val_order, 0, COUNTS["val"])[0]
    val_full = load_split_data(store, "val", cpu, CLASSES, budget=0).batch(val_order, 0, COUNTS["val"])[0]
    assert torch.equal(eval_preprocess(val_small, size, mean, std), eval_preprocess(val_full, size, mean, std))


def stage(tmp_path: Path, store: Path, name: str, base: dict | None = None,
          env: dict | None = None) -> subprocess.CompletedProcess:
    params = repo_params()
    params["base"].update(device="cpu", threads=1, **(base or {}))
    for entry in params["experiments"].values():
        if "train" in entry:
            entry["train"].update(epochs=1, batch_size=8, eval_batch_size=16, image_size=IMAGE_SIZE)
            entry["model"]["cnn_widths"] = [4, 8]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(ROOT / "stages" / "train.py"), "--params", "params.yaml", "--name", name,
           "--crops", str(store), "--out", f"models/{name}", "--live", f"metrics/train/{name}",
           "--curves", "plots/curves", "--resume-dir", ".cache/resume"]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})})


def test_train_stage_script(tmp_path, store):
    result = stage(tmp_path, store, "cnn_residual")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "models" / "cnn_residual" / "best.pt").is_file()
    assert (tmp_path / "metrics" / "train" / "cnn_residual" / "metrics.json").is_file()
    assert "epoch 1/1" in result.stderr
    for kind in ("top1", "loss"):
        rows = (tmp_path / "plots" / "curves" / kind / "cnn_residual.tsv").read_text().splitlines()
        assert rows[0] == "step\ttrain\tval" and len(rows) == 2
    bad = stage(tmp_path, store, "no_such_experiment")
    assert bad.returncode == 1 and bad.stderr.startswith("error: unknown experiment 'no_such_experiment'")


def test_train_stage_offline_stops_before_downloading_weights(tmp_path, store):
    """base.offline reaches the weights code from params.yaml; any download would go to a closed loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {"TORCH_HOME": str(tmp_path / "torch"), "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead,
           "HTTPS_PROXY": dead, "no_proxy": "", "NO_PROXY": "", "CARBENCH_OFFLINE": "", "HF_HUB_OFFLINE": ""}
    result = stage(tmp_path, store, "tl_resnet50_frozen", base={"offline": True}, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: pretrained weights ResNet50_Weights.IMAGENET1K_V2 are not available")
    assert "offline mode is on (base.offline: true" in result.stderr and "downloading" not in result.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "torch" / "hub" / "checkpoints").exists()


def test_checkpoint_records_the_crop_store_data_source(tmp_path, store):
    import shutil

    synthetic = shutil.copytree(store, tmp_path / "crops")
    meta = json.loads((synthetic / "meta.json").read_text())
    (synthetic / "meta.json").write_text(json.dumps({**meta, "source": "synthetic"}))
    exp, base = tiny(train={"epochs": 0})
    out, _ = run(tmp_path, synthetic, exp, base, "a")
    assert torch.load(out / "best.pt", weights_only=True)["data_source"] == "synthetic"


def test_a_disjoint_store_trains_a_classifier_of_its_train_half_only(tmp_path):
    """Class-disjoint protocol: train and val hold classes 0-1 of 4, so the head has 2 outputs (ids kept), the
    checkpoint names those 2 classes."""
    from dataclasses import replace

    from carbench.data.store import load_meta, write_meta
    from carbench.data.store import write_store as write_crop_store

    rng = np.random.default_rng(0)
    splits = {split: (rng.integers(0, 256, (n, STORE_SIZE, STORE_SIZE, 3), dtype=np.uint8),
                      [f"{split}/{i}.jpg" for i in range(n)], np.arange(n) % 2 + (2 if split == "test" else 0))
              for split, n in COUNTS.items()}
    store = tmp_path / "crops"
    write_crop_store(store, splits, [f"car {i}" for i in range(4)])
    write_meta(store, replace(load_meta(store), train_classes=2))
    exp, base = tiny("cnn_basic", train={"epochs": 1})
    out, _ = run(tmp_path, store, exp, base, "disjoint")
    model, ckpt = load_classifier(out / "best.pt", "cpu")
    assert model.num_classes == 2 and ckpt["class_names"] == ["car 0", "car 1"]
