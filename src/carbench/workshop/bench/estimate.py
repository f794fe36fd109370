"""Wall-time estimates of the presets (configs/overrides/): figures in, figures out; ``scripts/estimate_time.py``
prints them, docs/performance.md quotes them. Every figure is an estimate, and says what it rests on.

- laptop: the preset's stages run on dev98 with ``$CARBENCH_STAGE_LOG`` set (their CPU seconds, and those before
  the first batch), scaled to the full dataset and to a CPU with more cores; see :data:`LAPTOP_METHOD`.
- paper: the images the published ResNet-50 recipe processes, divided by a measured training rate; see
  :data:`PAPER_METHOD`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

#: Stanford Cars: official split, and the pipeline's default val (20% of train).
FULL = {"photos": 16185, "train": 6515, "val": 1629, "train_all": 8144, "test": 8041}
#: The dev98 development set the laptop preset was measured on (official-strategy split: val = 20% of train).
DEV98 = {"photos": 4052, "train": 1648, "val": 406, "test": 1998}
#: docs/performance.md row 1: the crop stage on 300 full-resolution photos at 224 px, 2-core CPU, 2026-11-22.
CROP_RATE_2_CORES = 560.0
#: docs/performance.md, "Where the offline run's time goes": DVC's own time between stages, per stage.
DVC_SECONDS_PER_STAGE = 2.0

LAPTOP_METHOD = (
    "full-size wall of a stage = fixed + (cpu_s - fixed) x photos_full / photos_dev98 / (cores x efficiency), "
    "where cpu_s = the stage's CPU seconds on dev98 (user + system: on a shared machine its wall time also counts "
    "the other processes'), fixed = its CPU seconds before the first batch (start-up, imports, reading, model "
    "build: one thread, not scaled), and efficiency = how much of each added core torch's threads turn into speed "
    "(assumed, not measured: the measuring machine has 2 cores); a stage without model batches is all fixed; the "
    "crop stage instead takes docs/performance.md row 1's rate on full-resolution photos (560 images/s on 2 cores) "
    "times cores / 2 x efficiency; download (the network) is left out; plus DVC's own ~2 s per stage.")

PAPER_METHOD = (
    "training images = epochs x (train + val / 3) + refit epochs x (train + val), where val / 3 counts a validation "
    "forward as a third of a training step, and refit epochs = the epochs (an upper bound: the refit runs the "
    "epoch count val chose); then + test / 3; wall = that / the training rate of ResNet-50 at 448 px on the GPU.")


def read_stage_log(path: str | Path) -> list[dict]:
    """The JSON lines of a ``$CARBENCH_STAGE_LOG`` (the last line of each stage wins)."""
    records: dict[str, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["stage"]] = record
    return list(records.values())


def laptop_estimate(records: list[dict], cores: int = 4, efficiency: float = 0.75,
                    expected: Optional[list[str]] = None) -> dict:
    """Full-size seconds per stage and in all, by :data:`LAPTOP_METHOD`, from dev98 stage-log ``records``."""
    ratio = FULL["photos"] / DEV98["photos"]
    rows = []
    for r in records:
        kind = r["stage"].partition("@")[0]
        if kind == "download" or "cpu_s" not in r or r.get("status", "ok") != "ok":   # unfinished: not measured
            continue
        if kind == "crop":
            full = FULL["photos"] / (CROP_RATE_2_CORES * cores / 2 * efficiency)
            fixed = None
        else:
            fixed = r.get("first_batch_cpu_s", r["cpu_s"])
            full = fixed + (r["cpu_s"] - fixed) * ratio / (cores * efficiency)
        rows.append({"stage": r["stage"], "wall_dev98_s": r["seconds"], "cpu_dev98_s": r["cpu_s"], "fixed_s": fixed,
                     "full_s": full})
    measured = {r["stage"] for r in rows} | {"download"}
    missing = [s for s in (expected or []) if s not in measured]
    dvc = DVC_SECONDS_PER_STAGE * (len(rows) + 1)
    return {"method": LAPTOP_METHOD, "ratio": ratio, "cores": cores, "efficiency": efficiency, "stages": rows,
            "dvc_s": dvc, "total_s": sum(r["full_s"] for r in rows) + dvc, "missing_stages": missing}


def paper_images(epochs: int = 128, refit: bool = True) -> float:
    """Training-step equivalents of the recipe on the full dataset (:data:`PAPER_METHOD`)."""
    fit = epochs * (FULL["train"] + FULL["val"] / 3)
    return fit + (epochs * FULL["train_all"] if refit else 0) + FULL["test"] / 3
