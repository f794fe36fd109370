"""The scale benchmark behind ``scripts/benchmark.py scale``: the nine defaults through ``dvc repro`` on data of
Stanford Cars' size, every stage against the bare compute it needs.

1. Data: a folder in torchvision's ``stanford_cars`` layout (``--data``), or a generated one of Stanford Cars'
   size and photo sizes (196 classes x 42 train / 41 test photos = 16,268, sides 300-900 px; generated in one
   process per core, not timed as part of the pipeline).
2. A workspace: the repository's files copied into ``--workdir`` (its own git repository), params.yaml with the
   data path, ``base.offline: true``, the ``--overrides`` file / ``--set key=value`` pairs merged in, and random-init
   weights files in place of the ImageNet ones (speed does not depend on them).
3. ``dvc repro`` there, every stage appending its wall time, start/end, time to first batch and work done to a
   stage log (:mod:`carbench.timing`); ``nvidia-smi`` sampled meanwhile for each stage's GPU busy fraction.
4. Bare rates in this process, on the same device: forward+backward+optimizer step (the trainer's own
   ``train_step``) on random tensors at each trained experiment's model, size, batch and freeze state, and
   inference forwards at the evaluation batch size. The floor of a stage is its images divided by these rates:
   what it would cost with no start-up, no data movement and no idle device.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: Stanford Cars: 8,144 train / 8,041 test photos of 196 classes (median photo ~700 x 480 px).
SCALE_DATA = {"num_classes": 196, "train_per_class": 42, "test_per_class": 41, "min_size": 300, "max_size": 900,
              "grayscale_fraction": 0.01}
#: Not copied into the workspace (paths from the repository root): outputs, caches, environments.
COPY_SKIP = {".git", ".dvc/cache", ".dvc/tmp", ".device", ".venv", "data", "models", "metrics", "plots", ".cache",
             ".pytest_cache"}
COPY_SKIP_NAMES = {"__pycache__"}
BARE_WARMUP_STEPS = 3          # cuDNN autotuning and the allocator settle here
#: Each bare rate is timed for about this long (at least BARE_MIN_STEPS steps); $CARBENCH_BARE_SECONDS overrides.
BARE_TIMED_SECONDS = float(os.environ.get("CARBENCH_BARE_SECONDS", "2.0"))
BARE_MIN_STEPS = 5
TARGETS = {"total_s": 600.0, "sum_over_floor": 1.25, "first_batch_s": 8.0, "evaluate_s": 8.0}
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]


# ----------------------------------------------------------------------------- data and workspace
def make_data(out: Path, seed: int, workers: int, scale: dict) -> float:
    """Generate the scale dataset into ``out/stanford_cars``; returns the seconds it took."""
    from carbench.config import SyntheticConfig, build
    from carbench.data.synthetic import generate

    start = time.perf_counter()
    generate(out, build(SyntheticConfig, scale, "scale"), seed, workers)
    return time.perf_counter() - start


def deep_merge(tree: dict, overrides: dict) -> dict:
    """``tree`` with ``overrides`` merged in, key by key (nested mappings merge, other values replace)."""
    out = copy.deepcopy(tree)
    for key, value in overrides.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dotted(pairs: list[str]) -> dict:
    """``["train.lr=0.1", "train.compile=true"]`` -> nested overrides (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set wants key=value, got {pair!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def scale_params(raw: dict, data_path: Path, overrides: dict, weights_dir: Path) -> dict:
    """The repository's params for the scale run: local data, offline, ``overrides`` merged in, and every
    torchvision weights name replaced by a random-init state_dict file of that architecture written into
    ``weights_dir`` (speed does not depend on the weights; the loading path still runs as with real ones)."""
    from carbench.config import parse_params

    params = deep_merge(deep_merge(raw, {"base": {"offline": True},
                                         "data": {"source": "local", "path": str(data_path.resolve())}}),
                       overrides)
    for name, exp in parse_params(params).experiments.items():
        if exp.trained and exp.model.weights != "none" and not Path(exp.model.weights).is_file():
            entry = params["experiments"][name]
            entry.setdefault("model", {})["weights"] = str(random_weights(exp.model.arch, weights_dir))
    return params


def random_weights(arch: str, folder: Path) -> Path:
    """``folder/<arch>-random-init.pth``: torchvision's ``arch`` with random weights (written once)."""
    import torch
    import torchvision

    path = folder / f"{arch}-random-init.pth"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return path.resolve()


def make_workspace(work: Path, params: dict) -> Path:
    """Copy the repository's files into ``work/repo`` (a fresh git repository) with ``params`` as params.yaml."""
    repo = work / "repo"
    if repo.exists():
        shutil.rmtree(repo)

    def skip(folder: str, names: list[str]) -> set:
        rel = Path(folder).resolve().relative_to(ROOT)
        return {n for n in names if (rel / n).as_posix() in COPY_SKIP or n in COPY_SKIP_NAMES}

    shutil.copytree(ROOT, repo, ignore=skip)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=scale", "-c", "user.email=scale@localhost"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "scale benchmark workspace"], cwd=repo, check=True)
    return repo


# ----------------------------------------------------------------------------- GPU sampling
class GpuSampler:
    """``nvidia-smi`` utilisation samples (epoch seconds, percent) every 200 ms while running; none without it."""

    def __init__(self, log: Path) -> None:
        self.log, self.proc = log, None
        if shutil.which(NVIDIA_SMI[0]):
            self.handle = open(log, "w")
            self.proc = subprocess.Popen(NVIDIA_SMI, stdout=self.handle, stderr=subprocess.DEVNULL)

    def stop(self) -> list[tuple[float, float]]:
        if self.proc is None:
            return []
        self.proc.terminate()
        self.proc.wait()
        self.handle.close()
        return parse_nvidia_smi(self.log.read_text())


def parse_nvidia_smi(text: str) -> list[tuple[float, float]]:
    """``2026/11/23 08:40:01.123, 87`` lines -> [(epoch seconds, 87.0)] (malformed lines skipped)."""
    samples = []
    for line in text.splitlines():
        stamp, _, util = line.partition(",")
        try:
            when = datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((when, float(util)))
        except ValueError:
            continue
    return samples


def busy_fraction(samples: list[tuple[float, float]], start: float, end: float) -> Optional[float]:
    """Mean GPU utilisation (0..1) of the samples in [start, end]; None without samples there."""
    inside = [u for t, u in samples if start <= t <= end]
    return sum(inside) / len(inside) / 100.0 if inside else None


# ----------------------------------------------------------------------------- bare rates and floors
@dataclass
class Bare:
    """Images/s of bare training steps (per freeze state) and of inference forwards, per experiment."""

    train: dict[int, float] = field(default_factory=dict)   # trainable blocks -> images/s
    infer: float = 0.0


def _timed(step: Any, device: Any) -> float:
    """Seconds per call of ``step`` after warm-up, timed for about BARE_TIMED_SECONDS."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(BARE_WARMUP_STEPS):
        step()
    sync()
    calls, start = 0, time.perf_counter()
    while calls < BARE_MIN_STEPS or time.perf_counter() - start < BARE_TIMED_SECONDS:
        step()
        calls += 1
        if calls % BARE_MIN_STEPS == 0:
            sync()
    sync()
    return (time.perf_counter() - start) / calls


def bare_rates(exp: Any, base: Any, num_classes: int, device: Any) -> Bare:
    """The trainer's own ``train_step`` on random on-device tensors, for every freeze state the experiment's
    epochs go through, and eval-mode forwards at ``train.eval_batch_size`` under the predictor's autocast."""
    import torch

    from carbench.train.batches import FeatureData
    from carbench.train.engine import Trainer, use_feature_cache
    from carbench.model.build import build_model
    from carbench.train.freeze import apply_freeze, trainable_blocks_for_epoch

    cfg, out = exp.train, Bare()
    model = build_model(exp.model, num_classes, pretrained=False).to(device)
    placeholder = FeatureData(torch.zeros(cfg.batch_size, 1), torch.zeros(cfg.batch_size, dtype=torch.int64))
    trainer = Trainer(exp, base, model, placeholder, placeholder, device, feature_mode=False)
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if trainer.channels_last else x
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
    states = sorted({trainable_blocks_for_epoch(exp.model, e, model.num_blocks) for e in range(max(cfg.epochs, 1))})
    for blocks in ([] if use_feature_cache(exp) else states):   # a cached-feature head: no backbone steps
        epoch = next(e for e in range(max(cfg.epochs, 1))
                     if trainable_blocks_for_epoch(exp.model, e, model.num_blocks) == blocks)
        apply_freeze(model, exp.model, epoch)
        model.train()
        out.train[blocks] = cfg.batch_size / _timed(lambda: trainer.train_step(x, y), device)
    model.eval()
    xe = torch.randn(cfg.eval_batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    xe = xe.contiguous(memory_format=torch.channels_last)      # as the predictor runs it
    model.to(memory_format=torch.channels_last)
    amp = torch.autocast(device.type, dtype=trainer.amp_dtype) if trainer.amp_dtype else contextlib.nullcontext()

    @torch.inference_mode()
    def forward() -> None:
        with amp:
            model(xe)

    torch.backends.cudnn.benchmark = False          # as the inference stages run
    out.infer = cfg.eval_batch_size / _timed(forward, device)
    return out


def train_floor(exp: Any, bare: Bare, record: dict, num_blocks: int) -> float:
    """Bare-compute seconds of a train stage: each fit and refit epoch's images at the rate of that epoch's freeze
    state, validation and feature-cache images at the inference rate (a cached-feature head costs ~nothing)."""
    from carbench.train.freeze import trainable_blocks_for_epoch

    seconds = (record["val_images"] + record["feature_images"]) / bare.infer
    if record["feature_images"]:
        return seconds
    for epochs, per_epoch in ((record["epochs"], record["train_per_epoch"]),
                              (record["refit_epochs"], record["refit_per_epoch"])):
        for epoch in range(epochs):
            seconds += per_epoch / bare.train[trainable_blocks_for_epoch(exp.model, epoch, num_blocks)]
    return seconds


# ----------------------------------------------------------------------------- the run
class ReproTimeout(Exception):
    """``dvc repro`` ran past its timeout and was stopped: ``wall`` seconds, the ``records`` of the stages that
    ended before (a stage stopped midway may add one with a status other than ``ok``)."""

    def __init__(self, wall: float, records: list[dict]) -> None:
        super().__init__(f"dvc repro stopped after {wall:.0f} s (timeout)")
        self.wall, self.records = wall, records


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End ``proc`` and every process of its group (started with ``start_new_session=True``): SIGTERM, then
    SIGKILL after ``grace`` seconds."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def read_records(stage_log: Path) -> list[dict]:
    """The stage log's records (none when it does not exist; a line cut short is skipped)."""
    if not stage_log.is_file():
        return []
    out = []
    for line in stage_log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def run_repro(repo: Path, logs: Path, targets: tuple[str, ...] = (), timeout: Optional[float] = None,
              tag: str = "") -> tuple[float, list[dict]]:
    """``dvc repro [targets]`` in ``repo`` with the stage log on (``logs/stages<tag>.jsonl``, dvc's output in
    ``logs/dvc-repro<tag>.log``, both written as the run goes); returns (wall seconds, stage records in run order).
    With ``timeout`` (seconds), dvc and its stages are stopped then and :class:`ReproTimeout` is raised.

    dvc runs as ``python -m dvc`` and the stages' ``python`` is this interpreter (a ``python`` script first on
    PATH), so the run needs no ``dvc`` or ``python`` command on PATH (the GPU machine has ``python3`` only)."""
    stage_log, log = logs / f"stages{tag}.jsonl", logs / f"dvc-repro{tag}.log"
    stage_log.unlink(missing_ok=True)
    shim = repo.parent / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "python").unlink(missing_ok=True)
    # A script, not a link: a virtual environment's python started through a link elsewhere misses its pyvenv.cfg
    # and runs without the environment's packages.
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    # Without pyenv's variables: dvc would otherwise strip the first PATH entries (its pyenv fix), the link's too.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYENV_")}
    env = {**inherited, "CARBENCH_STAGE_LOG": str(stage_log), "PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(shim), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *targets], cwd=repo, env=env,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=timeout is not None)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            raise ReproTimeout(time.perf_counter() - start, read_records(stage_log)) from None
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"dvc repro failed (exit {code}); its output: {log}\n" + log.read_text()[-3000:])
    return wall, read_records(stage_log)


def stage_floor(record: dict, params: Any, bare: dict[str, Bare], blocks: dict[str, int]) -> Optional[float]:
    """Bare-compute seconds of one stage record; None for the data stages (no model compute)."""
    kind, _, name = record["stage"].partition("@")
    if kind == "train":
        return train_floor(params.experiments[name], bare[name], record, blocks[name])
    if kind in ("embed", "evaluate") and "images" in record:
        return record["images"] / bare[params.experiments[name].embedder or name].infer
    return None


def measure(repo: Path, records: list[dict], samples: list, device_name: str) -> list[dict]:
    """Per stage: wall, first batch, steady and bare images/s, GPU busy, floor."""
    from carbench import runtime
    from carbench.config import load_params
    from carbench.data.store import load_meta
    from carbench.model.build import build_model

    params = load_params(repo / "params.yaml")
    device = runtime.select_device(device_name)
    classes = load_meta(repo / "data" / "crops").num_classes
    bare, blocks = {}, {}
    ran = [r["stage"].partition("@")[2] for r in records if r["stage"].partition("@")[0] in ("train", "embed",
                                                                                          "evaluate")]
    for name in sorted({params.experiments[n].embedder or n for n in ran}):
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
        if kind == "train" and bare[name].train:
            row["bare_images_per_second"] = bare[name].train[max(bare[name].train)]
        rows.append(row)
    return rows


def summarize(rows: list[dict], wall: float) -> dict:
    """Totals and the issue's targets (MET / NOT MET)."""
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


def run_scale(work: Path, data: Optional[Path], overrides: dict, device: str, workers: int,
              scale: dict, targets: tuple[str, ...] = (), logs: Optional[Path] = None) -> dict:
    """Generate (or take) the data, run the workspace, measure; returns the report. The stage log, dvc's output
    and the GPU samples go to ``logs`` (default ``work``) as the run goes."""
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
    params = scale_params(read_yaml(ROOT / "params.yaml"), data, overrides, work / "weights")
    repo = make_workspace(work, params)
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
