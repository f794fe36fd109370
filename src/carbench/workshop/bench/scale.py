"""The scale benchmark behind ``scripts/benchmark.py scale``: the nine defaults through ``dvc repro`` on data of
Stanford Cars' size, every stage against the bare compute it needs.

1. Data: a folder in torchvision's ``stanford_cars`` layout (``--data``), or a generated one of Stanford Cars'
   size and photo sizes (196 classes x 42 train / 41 test photos = 16,268, sides 300-900 px; generated in one
   process per core, not timed as part of the pipeline).
2. A workspace: the repository's files copied into ``--workdir`` (its own git repository), params.yaml with the
   data path, ``base.offline: true``, the ``--overrides`` file / ``--set key=value`` pairs merged in, and random-init
   weights files in place of the ImageNet ones (speed does not depend on them; :mod:`.workspace`).
3. ``dvc repro`` there (:mod:`.repro`), every stage appending its wall time, start/end, time to first batch and work
   done to a stage log (:mod:`carbench.core.timing`); ``nvidia-smi`` sampled meanwhile for each stage's GPU busy fraction
   (:mod:`.gpu`).
4. Bare rates in this process, on the same device: forward+backward+optimizer step (the trainer's own
   ``train_step``) on random tensors at each trained experiment's model, size, batch and freeze state, and
   inference forwards at the evaluation batch size. The floor of a stage is its images divided by these rates:
   what it would cost with no start-up, no data movement and no idle device (:mod:`.bare`).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Optional

from .bare import Bare, bare_rates, train_floor
from .gpu import GpuSampler, busy_fraction
from .repro import run_repro
from .workspace import make_data, make_workspace, scale_params

TARGETS = {"total_s": 600.0, "sum_over_floor": 1.25, "first_batch_s": 8.0, "evaluate_s": 8.0}


def network_of(params: Any, name: str) -> Optional[str]:
    """The trained experiment whose network experiment ``name`` runs its images through: itself, or its embedder;
    None for a retrieval baseline that embeds with pretrained weights (no trained experiment, no bare rate)."""
    exp = params.experiments[name]
    if exp.trained:
        return name
    return exp.embedder if isinstance(exp.embedder, str) else None   # only a retrieval experiment has an embedder


def stage_floor(record: dict, params: Any, bare: dict[str, Bare], blocks: dict[str, int]) -> Optional[float]:
    """Bare-compute seconds of one stage record; None for the data stages (no model compute) and for a network
    whose bare rates were not measured."""
    kind, _, name = record["stage"].partition("@")
    if kind == "train" and name in bare:
        return train_floor(params.experiments[name], bare[name], record, blocks[name])
    if kind in ("embed", "evaluate") and "images" in record and network_of(params, name) in bare:
        return record["images"] / bare[network_of(params, name)].infer
    return None


def measure(repo: Path, records: list[dict], samples: list, device_name: str,
            deadline: Optional[float] = None) -> list[dict]:
    """Per stage: wall, first batch, steady and bare images/s, GPU busy, floor. ``deadline`` (a
    ``time.perf_counter()`` value): no network's bare rates are started after it (their stages get no floor)."""
    from carbench.core import runtime
    from carbench.config import load_params
    from carbench.data.store import load_meta
    from carbench.model.build import build_model

    params = load_params(repo / "params.yaml")
    device = runtime.select_device(device_name)
    classes = load_meta(repo / "data" / "crops").num_classes
    bare, blocks = {}, {}
    ran = [r["stage"].partition("@")[2] for r in records if r["stage"].partition("@")[0] in ("train", "embed",
                                                                                          "evaluate")]
    for name in sorted({net for net in (network_of(params, n) for n in ran) if net is not None}):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        exp = params.experiments[name]
        runtime.seed_everything(params.base.seed)
        bare[name] = bare_rates(exp, params.base, classes, device)
        blocks[name] = build_model(exp.model, classes, pretrained=False).num_blocks
    rows = []
    for record in records:
        kind, _, name = record["stage"].partition("@")
        floor = stage_floor(record, params, bare, blocks)
        first = record.get("first_batch_at")
        row = {"stage": record["stage"], "seconds": record["seconds"], "first_batch_s": record.get("first_batch_s"),
               "floor_s": floor, "busy": busy_fraction(samples, record["start"], record["end"]),
               "busy_after_first_batch": busy_fraction(samples, first, record["end"]) if first else None,
               "steady_images_per_second": record.get("steady_images_per_second"), "bare_images_per_second": None}
        if floor is None and kind in ("train", "embed", "evaluate"):
            network = network_of(params, name)
            row["no_floor"] = ("pretrained embedder: no bare rate" if network is None
                               else "budget" if network not in bare else "no image count")
        if kind == "train" and name in bare and bare[name].train:
            row["bare_images_per_second"] = bare[name].train[max(bare[name].train)]
        rows.append(row)
    return rows


def summarize(rows: list[dict], wall: float) -> dict:
    """Totals and the performance targets (MET / NOT MET)."""
    stage_sum = sum(r["seconds"] for r in rows)
    floor = sum(r["floor_s"] for r in rows if r["floor_s"] is not None)
    model_sum = sum(r["seconds"] for r in rows if r["floor_s"] is not None)
    first = [r["first_batch_s"] for r in rows if r["first_batch_s"] is not None]
    evaluate = [r["seconds"] for r in rows if r["stage"].startswith("evaluate@")]
    return {"dvc_repro_s": wall, "stage_sum_s": stage_sum, "model_stage_sum_s": model_sum, "floor_s": floor,
            "checks": {
                "dvc repro wall <= 600 s": (wall, wall <= TARGETS["total_s"]),
                "stage sum / floor <= 1.25": (stage_sum / floor if floor else None,
                                              bool(floor) and stage_sum / floor <= TARGETS["sum_over_floor"]),
                "max time to first batch <= 8 s": (max(first, default=None),
                                                   bool(first) and max(first) <= TARGETS["first_batch_s"]),
                "max evaluate@ wall <= 8 s": (max(evaluate, default=None),
                                              bool(evaluate) and max(evaluate) <= TARGETS["evaluate_s"])}}


def _fmt(value: Optional[float], spec: str) -> str:
    return format(value, spec) if value is not None else "-".rjust(len(format(0.0, spec)))


def print_report(report: dict) -> None:
    """The per-stage table, the totals and the targets."""
    what = " ".join(report.get("targets") or ()) or "the nine defaults"
    print(f"\n== scale: {what} through `dvc repro` ({report['data']}, {report['device']}) ==")
    print(f"{'stage':38s} {'wall s':>7s} {'1st batch s':>11s} {'steady img/s':>12s} {'bare img/s':>10s} "
          f"{'ratio':>5s} {'GPU busy':>8s} {'floor s':>7s}")
    for r in report["stages"]:
        ratio = (r["steady_images_per_second"] / r["bare_images_per_second"]
                 if r["steady_images_per_second"] and r["bare_images_per_second"] else None)
        print(f"{r['stage']:38s} {r['seconds']:7.1f} {_fmt(r['first_batch_s'], '11.1f')} "
              f"{_fmt(r['steady_images_per_second'], '12.0f')} {_fmt(r['bare_images_per_second'], '10.0f')} "
              f"{_fmt(ratio, '5.2f')} {_fmt(r['busy'], '8.2f')} {_fmt(r['floor_s'], '7.1f')}")
    s = report["summary"]
    print(f"data generation (not part of the run): {report['generate_s']:.1f} s")
    print(f"dvc repro wall {s['dvc_repro_s']:.1f} s; sum of stage walls {s['stage_sum_s']:.1f} s "
          f"(model stages {s['model_stage_sum_s']:.1f} s); bare-compute floor {s['floor_s']:.1f} s")
    for check, (value, met) in s["checks"].items():
        print(f"  {check:34s} {_fmt(value, '8.2f')}   {'MET' if met else 'NOT MET'}")


def run_scale(root: Path, work: Path, data: Optional[Path], overrides: dict, device: str, workers: int,
              scale: dict, targets: tuple[str, ...] = (), logs: Optional[Path] = None) -> dict:
    """Generate (or take) the data, run a workspace copied from the repository at ``root`` (its params.yaml with
    ``overrides``), measure; returns the report. The stage log, dvc's output and the GPU samples go to ``logs``
    (default ``work``) as the run goes."""
    from carbench.config import read_yaml

    work.mkdir(parents=True, exist_ok=True)
    logs = logs or work
    logs.mkdir(parents=True, exist_ok=True)
    generate_s = 0.0
    if data is None:
        data = work / "stanford_cars"
        if data.exists():
            shutil.rmtree(data)
        generate_s = make_data(data, 0, workers, scale)
        label = (f"generated: {scale['num_classes']} classes, {scale['train_per_class']}/{scale['test_per_class']}"
                 f" train/test photos each, {scale['min_size']}-{scale['max_size']} px")
    else:
        label = str(data)
    params = scale_params(read_yaml(Path(root) / "params.yaml"), data, overrides, work / "weights")
    repo = make_workspace(root, work, params)
    sampler = GpuSampler(logs / "nvidia-smi.csv")
    try:
        wall, records = run_repro(repo, logs, targets)
    finally:
        samples = sampler.stop()
    rows = measure(repo, records, samples, device)
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() and device != "cpu" else "cpu"
    return {"data": label, "device": name, "generate_s": generate_s, "stages": rows,
            "summary": summarize(rows, wall), "overrides": overrides, "targets": list(targets)}
