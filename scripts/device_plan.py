"""The GPU device plan: the performance targets measured on your GPU machine, in two commands (docs/gpu_plan.md).

Each phase stops at the time budget you give it (``--budget``) and writes its log and JSON results into ``--out`` as
it goes.

    phase 1  the scale benchmark (carbench.workshop.bench.scale) of the nine defaults, on your copy of Stanford Cars or a
             subset of it (``--data``), or on generated photos at the real photo sizes (``--fraction`` of Stanford
             Cars' size), with random-init weights of the real architectures: per stage the wall time, time to
             first batch, steady and bare img/s, GPU busy fraction and bare-compute floor, and the full-scale total
             extrapolated from each stage's fixed cost and rate (:func:`carbench.workshop.bench.extrapolate.extrapolate`).
    phase 2  scripts/ddp_check.py on one GPU (torchrun x1 against plain), and one fine-tune
             (tl_resnet50_finetune) end to end through ``dvc repro`` with ``train.compile`` off, then on,
             on the same data.

    python scripts/device_plan.py --phase 1 --out plan1 --budget 600 [--data /path/to/stanford_cars]
    python scripts/device_plan.py --phase 2 --out plan2 --budget 300 [--data /path/to/stanford_cars]
    python scripts/device_plan.py --phase 1 --out /tmp/p1 --tiny --device cpu   # CPU smoke (tests/scripts/test_device_plan.py)

The plan needs the project installed (README, "Install"). Where python cannot import dvc and dvclive (a GPU
machine without network), ``--wheels`` names a folder of their wheels, installed into ``--site`` and put first on
PYTHONPATH.

Files in ``--out`` (flat, at most 8 a phase):
    phase 1  plan1.log plan1.json stages.jsonl dvc-repro.log nvidia-smi.csv
    phase 2  plan2.log plan2.json stages-compile-off.jsonl dvc-repro-compile-off.log stages-compile-on.jsonl
             dvc-repro-compile-on.log nvidia-smi.csv
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import yaml

from carbench.workshop.bench import bare, gpu, scale
from carbench.workshop.bench.extrapolate import (FULL_PHOTOS, expected_stages, extrapolate, flags, full_checks, plan_size,
                                        print_extrapolation, size_of)
from carbench.workshop.bench.overrides import deep_merge, dotted
from carbench.workshop.bench.processes import Tee, dvc_version, ensure_packages, run_logged
from carbench.workshop.bench.repro import ReproTimeout, run_repro
from carbench.workshop.bench.workspace import make_data, make_workspace, scale_params

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = "tl_resnet50_finetune"
#: Seconds per phase when --budget is not given: both phases in under 12 minutes. Phase 1 stops dvc repro early
#: enough (--reserve) for the bare rates.
DEFAULT_BUDGET_S = {1: 400.0, 2: 300.0}
DEFAULT_FRACTION = 0.125      # 196 classes x 5 + 5 photos: the nine defaults' fixed costs alone are ~150 s
GPU_BARE_SECONDS = "1.0"      # each bare rate timed this long on the GPU (carbench.workshop.bench.bare's default: 2 s)
#: --tiny: the offline demo's CPU settings, one epoch per trained experiment (two for the fine-tune: it then has a
#: steady rate), a small evaluation.
TINY_SETS = ["base.threads=1", "split.allow_missing_classes=true", "evaluate.latency_runs=2",
             "evaluate.latency_budget_s=0.5", "aggregate.bootstrap=50"]
TINY_BARE_SECONDS = "0.2"
CPU_COMPILE_NOTE = ("train.compile has no effect on CPU (src/carbench/train/engine.py compiles only on CUDA): the "
                    "two runs here ran the same code, and their difference is noise")


# ----------------------------------------------------------------------------- running things
def startup_seconds() -> float:
    """Wall seconds of a stage-like process that only imports (python, torch, carbench); the second of two runs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", "import torch, numpy, yaml, carbench.core.cli, carbench.config, carbench.core.timing"]
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        seconds = time.perf_counter() - start
    return seconds


def plan_overrides(tiny: bool, sets: list[str], files: tuple[str, ...] = ()) -> dict:
    """The params overrides of both phases: for --tiny the offline demo's CPU settings and small evaluation, then
    each --overrides file (e.g. a recipe of configs/overrides/), then the --set pairs."""
    over: dict = {}
    if tiny:
        over = yaml.safe_load((ROOT / "configs" / "overrides" / "offline.yaml").read_text())
        trained = yaml.safe_load((ROOT / "params.yaml").read_text())["dag"]["train"]
        epochs = [f"experiments.{n}.train.epochs={2 if n == FINETUNE else 1}" for n in trained]
        over = deep_merge(over, dotted(TINY_SETS + epochs))
    for file in files:
        over = deep_merge(over, yaml.safe_load(Path(file).read_text()) or {})
    return deep_merge(over, dotted(sets))


# ----------------------------------------------------------------------------- the phases
class Phase:
    """One phase's budget, result dict and JSON file (rewritten after every step)."""

    def __init__(self, number: int, out: Path, budget: float, command: list[str]) -> None:
        self.number, self.out, self.budget, self.start = number, out, budget, time.perf_counter()
        self.json = out / f"plan{number}.json"
        self.result: dict = {"phase": number, "status": "running", "date": datetime.now(timezone.utc).isoformat(
            timespec="seconds"), "command": " ".join(command), "budget_s": budget}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def save(self, **fields: Any) -> None:
        self.result.update(fields)
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result, indent=2, default=str))
        tmp.replace(self.json)

    def step(self, what: str) -> None:
        print(f"\n[{self.elapsed():6.1f} s, {self.left():5.0f} s left] {what}", flush=True)


def environment(device_name: str) -> dict:
    import torch

    from carbench.core import runtime

    device = runtime.select_device(device_name)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "device_type": device.type,
            "python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count(),
            "commit": commit or None, "dvc": dvc_version()}


def prepare(phase: Phase, args: argparse.Namespace, extra: Optional[dict] = None) -> tuple[Path, dict]:
    """Packages, environment, generated data and the workspace (a git repository under --workdir)."""
    from carbench.config import read_yaml

    phase.step("dvc and dvclive")
    phase.save(packages=ensure_packages(Path(args.wheels) if args.wheels else None, Path(args.site)))
    phase.save(environment=environment(args.device))
    print(json.dumps(phase.result["environment"]))
    overrides = deep_merge(plan_overrides(args.tiny, args.set, tuple(args.overrides)), extra or {})
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.data:
        data = Path(args.data).resolve()
        if not data.is_dir():
            raise SystemExit(f"error: --data {args.data} is not a folder")
        # the photo count comes from the download stage's manifest (:func:`photo_size`)
        phase.save(size=None, overrides=overrides, data=str(data), generate_s=0.0)
        phase.step(f"data: {data} (its photos are counted by the download stage)")
    else:
        size = plan_size(args.fraction, args.tiny)
        phase.save(size=size, overrides=overrides, data="generated")
        data = work / "stanford_cars"
        phase.step(f"generating {size['photos']} photos ({size['fraction']:.3f} of Stanford Cars' {FULL_PHOTOS}; "
                   f"{size['data']['min_size']}-{size['data']['max_size']} px)")
        if data.exists():
            import shutil

            shutil.rmtree(data)
        phase.save(generate_s=make_data(data, 0, args.workers, size["data"]))
        print(f"generated in {phase.result['generate_s']:.1f} s")
    params = scale_params(read_yaml(ROOT / "params.yaml"), data, overrides, work / "weights")
    return make_workspace(ROOT, work, params), params


def photo_size(phase: Phase, repo: Path) -> Optional[dict]:
    """The size record of the photos the run read (the download stage's manifest: what the figures are scaled
    by), saved into the phase's JSON; None when the download stage did not end."""
    from carbench.data.raw import read_manifest

    if not (repo / "data" / "raw" / "manifest.csv").is_file():
        return phase.result.get("size")
    photos = len(read_manifest(repo / "data" / "raw"))
    planned = phase.result.get("size")
    if planned and planned["photos"] != photos:
        raise SystemExit(f"the run read {photos} photos where {planned['photos']} were generated: the workspace's "
                         f"params do not read the generated data")
    size = planned or size_of(photos)
    phase.save(size=size)
    return size


def repro(phase: Phase, repo: Path, targets: tuple[str, ...], timeout: float, tag: str = "") -> dict:
    """``dvc repro`` within ``timeout``: wall, whether it finished, the stage records that ended ok."""
    print(f"dvc repro {' '.join(targets) or '(every stage)'} (stopped after {timeout:.0f} s)", flush=True)
    try:
        wall, records = run_repro(repo, phase.out, targets, timeout=timeout, tag=tag)
        complete = True
    except ReproTimeout as stopped:
        wall, records, complete = stopped.wall, stopped.records, False
        print(f"BUDGET: dvc repro stopped after {wall:.0f} s", flush=True)
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    for r in ok:
        print(f"  {r['stage']:38s} {r['seconds']:7.1f} s  first batch {r.get('first_batch_s')}")
    return {"wall_s": wall, "complete": complete, "records": ok,
            "not_ok": [r["stage"] for r in records if r.get("status", "ok") != "ok"]}


def phase1(phase: Phase, args: argparse.Namespace) -> None:
    """The scale benchmark at the fraction, its per-stage figures against the bare compute, the extrapolation."""
    phase.step("start-up of a stage process")
    phase.save(startup_s=startup_seconds())
    print(f"python + torch + carbench imports: {phase.result['startup_s']:.2f} s")
    repo, params = prepare(phase, args)
    targets = tuple(args.target)
    phase.step("dvc repro of " + (" ".join(targets) or "the nine defaults"))
    sampler = gpu.GpuSampler(phase.out / "nvidia-smi.csv")
    try:
        run = repro(phase, repo, targets, phase.left() - args.reserve)
    finally:
        samples = sampler.stop()
    phase.save(repro={k: v for k, v in run.items() if k != "records"}, records=run["records"])
    size = photo_size(phase, repo)
    rows = [{"stage": r["stage"], "seconds": r["seconds"], "first_batch_s": r.get("first_batch_s"), "floor_s": None,
             "busy": gpu.busy_fraction(samples, r["start"], r["end"]), "busy_after_first_batch": None,
             "steady_images_per_second": r.get("steady_images_per_second"), "bare_images_per_second": None}
            for r in run["records"]]
    if (repo / "data" / "crops").is_dir() and any("@" in r["stage"] for r in run["records"]):
        phase.step("bare rates (the floor of every model stage)")
        rows = scale.measure(repo, run["records"], samples, args.device, deadline=phase.start + phase.budget)
        missing = [r["stage"] for r in rows if r.get("no_floor") == "budget"]
        if missing:
            phase.save(bare_not_measured=missing)
            print(f"BUDGET: bare rates not measured for {', '.join(missing)}", flush=True)
    env = phase.result["environment"]
    report = {"data": data_label(phase.result), "device": env["device"],
              "generate_s": phase.result["generate_s"], "stages": rows, "summary": scale.summarize(rows, run["wall_s"]),
              "overrides": phase.result["overrides"], "targets": list(targets)}
    phase.save(scale=report)
    scale.print_report(report)
    if size is None:
        phase.save(status="partial: the download stage did not end, so there is no photo count to extrapolate from")
        return
    floor = report["summary"]["floor_s"]
    ext = extrapolate(run["records"], size["ratio"], phase.result["startup_s"],
                      run["wall_s"] if run["complete"] else None, floor,
                      None if targets else expected_stages(params))
    phase.save(extrapolation=ext, checks_full_scale=full_checks(ext, rows), flags=flags(rows))
    print_extrapolation(phase.result)


def data_label(result: dict) -> str:
    """What the run read, for the report: the generated photos, or the user's folder and its photo count."""
    size = result.get("size")
    if result.get("data") == "generated":
        return (f"generated: {size['photos']} photos ({size['fraction']:.3f} of Stanford Cars), "
                f"{size['data']['min_size']}-{size['data']['max_size']} px")
    count = f"{size['photos']} photos ({size['fraction']:.3f} of Stanford Cars)" if size else "photos not counted"
    return f"{result.get('data')}: {count}"


def train_row(run: dict, samples: list) -> Optional[dict]:
    """The fine-tune's train@ figures of one repro (None when it did not end)."""
    for r in run["records"]:
        if r["stage"] == f"train@{FINETUNE}":
            return {"seconds": r["seconds"], "first_batch_s": r.get("first_batch_s"),
                    "steady_images_per_second": r.get("steady_images_per_second"), "epochs": r.get("epochs"),
                    "refit_epochs": r.get("refit_epochs"), "busy": gpu.busy_fraction(samples, r["start"], r["end"]),
                    "dvc_repro_s": run["wall_s"]}
    return None


def gpu_samples(path: Path) -> list:
    return gpu.parse_nvidia_smi(path.read_text()) if path.is_file() else []


def ddp_check(phase: Phase, args: argparse.Namespace, repo: Path) -> dict:
    """scripts/ddp_check.py with one process (plain against torchrun x1) on the workspace's crops."""
    device = "cuda" if phase.result["environment"]["device_type"] == "cuda" else "cpu"
    cmd = [sys.executable, str(ROOT / "scripts" / "ddp_check.py"), "--crops", str(repo / "data" / "crops"),
           "--name", FINETUNE, "--params", str(repo / "params.yaml"), "--epochs", str(args.ddp_epochs),
           "--device", device, "--nproc", "1", "--tolerance", str(args.tolerance)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    env["PYTHONHASHSEED"] = "0"
    print(" ".join(cmd[1:]), flush=True)
    code, seconds, output = run_logged(cmd, phase.left() - args.ddp_reserve, cwd=repo, env=env)
    top1 = {k: float(v) for k, v in re.findall(r"^\s*(plain|torchrun x\d+): val top-1 ([0-9.]+)", output, re.M)}
    diff = top1["torchrun x1"] - top1["plain"] if {"plain", "torchrun x1"} <= set(top1) else None
    return {"val_top1": top1, "difference": diff, "tolerance": args.tolerance, "epochs": args.ddp_epochs,
            "exit_status": code, "stopped_by_budget": code is None, "seconds": seconds,
            "equal_within_tolerance": code == 0 and diff is not None and abs(diff) <= args.tolerance}


def phase2(phase: Phase, args: argparse.Namespace) -> None:
    """ddp_check x1, and the fine-tune end to end with train.compile off, then on (a params change: dvc reruns
    resolve and the fine-tune's train stage only)."""
    off = {"experiments": {FINETUNE: {"train": {"compile": False}}}}
    repo, params = prepare(phase, args, off)
    target = (f"train@{FINETUNE}",)
    smi = phase.out / "nvidia-smi.csv"
    sampler = gpu.GpuSampler(smi)
    cuda = phase.result["environment"]["device_type"] == "cuda"
    compile_result: dict = {"effective": cuda, "note": None if cuda else CPU_COMPILE_NOTE}
    try:
        phase.step("the fine-tune with train.compile off (and the data stages before it)")
        run = repro(phase, repo, target, phase.left() - args.ddp_reserve - args.reserve, tag="-compile-off")
        compile_result["off"] = train_row(run, gpu_samples(smi))
        compile_result["off_data_stages"] = [{"stage": r["stage"], "seconds": r["seconds"]} for r in run["records"]
                                             if not r["stage"].startswith("train@")]
        phase.save(compile=compile_result)
        photo_size(phase, repo)
        if not run["complete"]:
            phase.save(status="partial: the budget ended during the compile-off run")
            return
        phase.step("ddp_check: plain against torchrun x1")
        phase.save(ddp_check=ddp_check(phase, args, repo))
        print(json.dumps(phase.result["ddp_check"]))
        if phase.left() < args.reserve:
            phase.save(status=f"partial: {phase.left():.0f} s left, compile on not run")
            return
        phase.step("the fine-tune with train.compile on")
        on = deep_merge(params, {"experiments": {FINETUNE: {"train": {"compile": True}}}})
        (repo / "params.yaml").write_text(yaml.safe_dump(on, sort_keys=False))
        try:
            run = repro(phase, repo, target, phase.left(), tag="-compile-on")
        except SystemExit as failed:    # e.g. torch.compile lacking its compiler: the off figures still stand
            compile_result["on_error"] = str(failed)[-2000:]
            phase.save(compile=compile_result, status="partial: the compile-on run failed (see compile.on_error)")
            print(compile_result["on_error"])
            return
        compile_result["on"] = train_row(run, gpu_samples(smi))
        compile_result["on_reran"] = [r["stage"] for r in run["records"]]
    finally:
        sampler.stop()
    a, b = compile_result.get("off"), compile_result.get("on")
    if a and b:
        compile_result["wall_on_over_off"] = b["seconds"] / a["seconds"]
        if a["steady_images_per_second"] and b["steady_images_per_second"]:
            compile_result["steady_on_over_off"] = b["steady_images_per_second"] / a["steady_images_per_second"]
    phase.save(compile=compile_result)
    print_phase2(phase.result)


def print_phase2(result: dict) -> None:
    ddp, comp = result.get("ddp_check") or {}, result["compile"]
    print("\n== ddp_check (one GPU) ==")
    print(f"val top-1 {ddp.get('val_top1')}; difference {ddp.get('difference')}; tolerance {ddp.get('tolerance')}: "
          f"{'EQUAL' if ddp.get('equal_within_tolerance') else 'NOT EQUAL'}")
    print(f"\n== {FINETUNE} end to end, train.compile off / on ==")
    for label in ("off", "on"):
        row = comp.get(label)
        if row:
            steady = row["steady_images_per_second"]
            print(f"compile {label:3s}: train@ wall {row['seconds']:7.1f} s, first batch {row['first_batch_s']} s, "
                  f"steady {'-' if steady is None else f'{steady:.0f}'} img/s, GPU busy {row['busy']}")
        else:
            print(f"compile {label:3s}: not measured")
    if comp.get("note"):
        print(comp["note"])


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", type=int, choices=(1, 2), required=True)
    p.add_argument("--out", required=True, help="folder of the logs and JSON results")
    p.add_argument("--budget", type=float, default=None,
                   help="the seconds you give this phase: its work is stopped then and what was measured is kept, "
                        "marked partial (default: 400 phase 1, 300 phase 2)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", default=None,
                        help="your copy of Stanford Cars, or a subset of it, in any layout `data.source: local` "
                             "reads (docs/data.md); the figures are scaled by its photo count (default: generated "
                             "photos, --fraction)")
    source.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                        help="generated data: this fraction of Stanford Cars' photos per class, at the real photo "
                             "sizes (default: %(default)s: 196 classes x 5 + 5 photos)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke: the offline demo's CPU settings, one or two "
                                                       "epochs (and 48 small photos unless --data)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--workdir", default=None, help="data and workspace (default: a carbench-plan<phase> folder in "
                                                   "the temporary directory)")
    p.add_argument("--wheels", default=None, help="a folder of dvc and dvclive wheels (and their dependencies) "
                                                  "to install where python cannot import them")
    p.add_argument("--site", default=str(Path(tempfile.gettempdir()) / "carbench-site"),
                   help="where the wheels are installed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="processes generating the data (0 = all cores)")
    p.add_argument("--overrides", action="append", default=[], metavar="FILE",
                   help="a params overrides file, e.g. one of configs/overrides/ (repeatable; before --set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override (repeatable)")
    p.add_argument("--target", action="append", default=[], help="phase 1: only this stage and what it needs")
    p.add_argument("--reserve", type=float, default=None,
                   help="seconds kept for the bare rates (phase 1) or the compile-on run (phase 2)")
    p.add_argument("--ddp-epochs", type=int, default=2)
    p.add_argument("--ddp-reserve", type=float, default=None, help="phase 2: seconds kept for ddp_check")
    p.add_argument("--tolerance", type=float, default=0.02, help="ddp_check's largest val top-1 difference")
    args = p.parse_args(argv)
    os.environ.setdefault("CARBENCH_BARE_SECONDS", TINY_BARE_SECONDS if args.tiny else GPU_BARE_SECONDS)
    bare.BARE_TIMED_SECONDS = float(os.environ["CARBENCH_BARE_SECONDS"])
    if args.tiny:
        args.ddp_epochs = min(args.ddp_epochs, 1)
    args.budget = args.budget or DEFAULT_BUDGET_S[args.phase]
    if args.reserve is None:
        args.reserve = 15.0 if args.tiny else 60.0
    if args.ddp_reserve is None:
        args.ddp_reserve = 15.0 if args.tiny else 40.0
    args.workdir = args.workdir or str(Path(tempfile.gettempdir()) / f"carbench-plan{args.phase}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONUNBUFFERED"] = "1"
    log = open(out / f"plan{args.phase}.log", "w")
    sys.stdout, sys.stderr = Tee(sys.__stdout__, log), Tee(sys.__stderr__, log)
    phase = Phase(args.phase, out, args.budget, [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    phase.save()
    print(f"device plan, phase {args.phase}: budget {args.budget:.0f} s, logs and JSON in {out}")
    try:
        (phase1 if args.phase == 1 else phase2)(phase, args)
    except BaseException as exc:
        phase.save(status=f"failed: {type(exc).__name__}: {str(exc)[-2000:]}")
        raise
    if phase.result["status"] == "running":
        partial = (args.phase == 1 and (not phase.result["extrapolation"]["complete"]
                                        or bool(phase.result.get("bare_not_measured")))
                   or args.phase == 2 and not (phase.result["compile"].get("on")))
        phase.save(status="partial" if partial else "done")
    print(f"\nphase {args.phase} {phase.result['status']} in {phase.elapsed():.0f} s; results: {phase.json}")


if __name__ == "__main__":
    main()
