"""Benchmark 2 of ``scripts/benchmark.py``: the training loop (crop store -> device, augmentation, forward,
backward, optimizer step) against forward+backward+step of the same model on random tensors already on the device,
in the same run."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_TARGET_RATIO = 0.9
#: (label, experiment, overrides, store side, images) per device type. The CPU cases are the offline demo's
#: models; the CUDA case is the full-data fine-tune (ResNet-50 at 224 px, AMP, channels_last).
TRAIN_CASES = {
    "cpu": [
        ("cnn_bn_dropout 64px", "cnn_bn_dropout",
         {"model": {"cnn_widths": [16, 32, 64, 128]}, "train": {"image_size": 64, "batch_size": 64}}, 64, 512),
        ("mobilenet_v2 full fine-tune 64px", "tl_resnet50_finetune",
         {"model": {"arch": "mobilenet_v2"}, "train": {"image_size": 64, "batch_size": 64}}, 64, 512),
    ],
    "cuda": [
        ("resnet50 full fine-tune 224px AMP", "tl_resnet50_finetune",
         {"train": {"image_size": 224, "batch_size": 128}}, 256, 4096),
    ],
}
TRAIN_EPOCHS_TIMED = 3          # after one warm-up epoch; more epochs, less timing noise
BENCH_CLASSES = 196


def _write_random_store(root: Path, size: int, count: int, seed: int = 0) -> Path:
    """A crop store of random uint8 crops (:func:`carbench.data.store.write_store`) for throughput measurements."""
    from carbench.data.store import write_store

    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", count), ("val", max(count // 8, BENCH_CLASSES))):
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, BENCH_CLASSES, n)
        splits[split] = (images, [f"{split}/{i:05d}.jpg" for i in range(n)], labels)
    write_store(root, splits, [f"class {i}" for i in range(BENCH_CLASSES)])
    return root


def _bench_experiment(params_path: Path, name: str, overrides: dict):
    """Experiment ``name`` of ``params_path`` with ``overrides`` (weights off: speed does not depend on them)."""
    import copy

    from carbench.config import parse_params, read_yaml

    raw = read_yaml(params_path)
    entry = copy.deepcopy(raw["experiments"][name])
    for section, values in copy.deepcopy(overrides).items():
        entry.setdefault(section, {}).update(values)
    entry["config"] = "scratch"                  # random init: no weight files needed to time a step
    entry["model"]["weights"] = "none"
    raw["experiments"] = {name: entry}
    raw["dag"] = {"train": [name], "retrieval": {}}
    return parse_params(raw), name


def _bare_step_rate(trainer, steps: int) -> float:
    """Images/s of forward+backward+step of ``trainer``'s model on random tensors already on the device."""
    import torch

    cfg, device = trainer.cfg, trainer.device
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, BENCH_CLASSES, (cfg.batch_size,), device=device)
    for _ in range(2):                            # warm-up (cudnn autotuning, allocator)
        trainer.train_step(x, y)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(x, y)
    _sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _loop_rate(trainer) -> float:
    """Images/s of the real training loop (store -> device batch -> augmentation -> step), after a warm-up."""
    from carbench.train.train_log import NoBar

    trainer.train_epoch(0, NoBar())
    _sync(trainer.device)
    images = seconds = 0.0
    for epoch in range(1, 1 + TRAIN_EPOCHS_TIMED):
        row = trainer.train_epoch(epoch, NoBar())
        images, seconds = images + row["images"], seconds + row["seconds"]
    return images / seconds


def _streamed_loop_rate(exp, base, store: Path, device) -> float:
    """The same loop with the store streamed from its memory map, read one batch ahead (a zero memory budget:
    what a store larger than the device gets), instead of resident on the device."""
    from carbench.core.runtime import configure
    from carbench.train import batches
    from carbench.train.engine import setup_trainer

    saved, batches.RESIDENT_FRACTION = batches.RESIDENT_FRACTION, 0.0
    try:
        configure(base.seed, base.threads)
        trainer, _ = setup_trainer(exp, base, store, device)
        if not trainer.train_data.streamed:
            raise RuntimeError("a zero memory budget should stream the training split")
        return _loop_rate(trainer)
    finally:
        batches.RESIDENT_FRACTION = saved


def measure_train(params_path: Path, device_name: str = "auto") -> dict[str, Any]:
    """Training-loop images/s vs bare forward+backward+step, for the cases of the current device type (their
    experiments as ``params_path`` defines them)."""
    from carbench.core import runtime
    from carbench.train.engine import setup_trainer

    device = runtime.select_device(device_name)
    rows = []
    for label, name, overrides, size, count in TRAIN_CASES[device.type]:
        params, name = _bench_experiment(params_path, name, overrides)
        with tempfile.TemporaryDirectory(prefix="carbench-train-") as tmp:
            store = _write_random_store(Path(tmp), size, count)
            runtime.configure(params.base.seed, params.base.threads)
            trainer, _ = setup_trainer(params.experiments[name], params.base, store, device)
            loop = _loop_rate(trainer)
            bare = _bare_step_rate(trainer, trainer.steps_per_epoch * TRAIN_EPOCHS_TIMED)
            streamed = _streamed_loop_rate(params.experiments[name], params.base, store, device)
        rows.append({"case": label, "batch_size": trainer.cfg.batch_size, "augment": trainer.cfg.augment,
                     "loop_images_per_second": loop, "bare_images_per_second": bare, "ratio": loop / bare,
                     "streamed_images_per_second": streamed, "streamed_ratio": streamed / loop})
    return {"device": str(device), "rows": rows}


def print_train(report: dict[str, Any]) -> None:
    """Print the training-loop benchmark table."""
    print(f"\n== 2. training loop vs forward+backward+step on random on-device tensors ({report['device']}) ==")
    for row in report["rows"]:
        verdict = "MET" if row["ratio"] >= TRAIN_TARGET_RATIO else "NOT MET"
        print(f"{row['case']:38s} batch {row['batch_size']:4d}, augment {row['augment']:8s}: loop "
              f"{row['loop_images_per_second']:8.1f} img/s, bare {row['bare_images_per_second']:8.1f} img/s, "
              f"ratio {row['ratio']:.2f}x (target >= {TRAIN_TARGET_RATIO}x: {verdict})")
        print(f"{'':38s} streamed from the memory map (store larger than the device): "
              f"{row['streamed_images_per_second']:8.1f} img/s, {row['streamed_ratio']:.2f}x the resident loop")
