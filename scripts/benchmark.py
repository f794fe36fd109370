"""Benchmarks that print figures and ratios measured in one run (never timed tests).

    python scripts/benchmark.py crop      # 1. crop stage images/s vs a plain full PIL decode of the same JPEGs
    python scripts/benchmark.py train     # 2. training-loop images/s vs forward+backward+step on random tensors
    python scripts/benchmark.py pipeline  # 3+4. wall time and peak memory of each stage of the offline run
    python scripts/benchmark.py scale     # 5. the nine defaults at Stanford Cars scale vs the bare-compute floor
    python scripts/benchmark.py all       # 1-4

`pipeline` clones the committed repository into a temporary directory and runs `python scripts/offline.py`
there (a fresh clone, as a user would), with every stage logging its wall time and peak RSS. `scale`
(carbench.workshop.bench.scale) is meant for a GPU: `dvc repro` of the real defaults on 16k generated photos (or on your
copy of Stanford Cars: `--data`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from carbench.workshop.bench import crop_pool, scale, train_loop
from carbench.workshop.bench.overrides import deep_merge, dotted
from carbench.workshop.bench.workspace import SCALE_DATA

ROOT = Path(__file__).resolve().parents[1]

PIPELINE_TARGET_S = 200.0   # all nine experiments at the offline settings in <= 200 s on 2 cores


def run_pipeline_benchmark() -> dict:
    """Clone the repo, run the offline DAG with stage logging; return per-stage and total figures."""
    with tempfile.TemporaryDirectory(prefix="carbench-bench-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        log = Path(tmp) / "stages.jsonl"
        environ = {**os.environ, "CARBENCH_STAGE_LOG": str(log)}
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "scripts/offline.py"], cwd=clone, env=environ,
                                capture_output=True, text=True)
        total = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"offline run failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        stages = [json.loads(line) for line in log.read_text().splitlines()]
    return {"total_seconds": total, "stages": stages}


def print_pipeline(report: dict) -> None:
    """Print the per-stage table and the total against the 5-minute target."""
    print("\n== 3+4. offline `dvc exp run` (python scripts/offline.py) in a fresh clone ==")
    print(f"{'stage':40s} {'wall s':>8s} {'peak RSS MiB':>13s}")
    for record in report["stages"]:
        print(f"{record['stage']:40s} {record['seconds']:8.1f} {record['peak_rss_mib']:13.0f}")
    in_stages = sum(r["seconds"] for r in report["stages"])
    total = report["total_seconds"]
    print(f"{'sum of stage processes':40s} {in_stages:8.1f}")
    print(f"{'whole run incl. DVC':40s} {total:8.1f}   target <= {PIPELINE_TARGET_S:.0f} s: "
          f"{'MET' if total <= PIPELINE_TARGET_S else 'NOT MET'} (ratio {total / PIPELINE_TARGET_S:.2f})")
    peak = max(r["peak_rss_mib"] for r in report["stages"])
    print(f"{'largest stage peak RSS (MiB)':40s} {peak:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["crop", "train", "pipeline", "scale", "all"])
    parser.add_argument("--raw", default=None,
                        help="a folder of full-resolution photos for the crop benchmark, in any layout "
                             "`data.source: local` reads (default: generated 600-900 px photos)")
    parser.add_argument("--device", default="auto")
    group = parser.add_argument_group("scale")
    group.add_argument("--data", help="torchvision-layout dataset to run on (default: generate one of Stanford "
                                      "Cars' size into --workdir)")
    group.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "carbench-scale"),
                       help="data, workspace, dvc and nvidia-smi logs (default: %(default)s)")
    group.add_argument("--overrides", help="params overrides file merged into the workspace's params.yaml "
                                           "(e.g. configs/overrides/offline.yaml for a CPU smoke run)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="one params override, e.g. --set train.compile=true (repeatable; after --overrides)")
    group.add_argument("--workers", type=int, default=0, help="processes generating the data (0 = all cores)")
    for key, value in SCALE_DATA.items():
        group.add_argument("--" + key.replace("_", "-"), type=type(value), default=value,
                           help=f"generated data: {key} (default: %(default)s)")
    group.add_argument("--target", action="append", default=[],
                       help="run only this stage and what it needs (`dvc repro TARGET`; repeatable; default: all)")
    group.add_argument("--logs", help="folder for the stage log, dvc's output and the GPU samples, written as the "
                                      "run goes (default: --workdir)")
    group.add_argument("--report", help="also write the scale report as JSON here")
    args = parser.parse_args()
    if args.what == "scale":
        overrides = yaml.safe_load(Path(args.overrides).read_text()) if args.overrides else {}
        overrides = deep_merge(overrides or {}, dotted(args.set))
        data = {key: getattr(args, key) for key in SCALE_DATA}
        report = scale.run_scale(ROOT, Path(args.workdir), Path(args.data) if args.data else None, overrides,
                                 args.device, args.workers, data, tuple(args.target),
                                 Path(args.logs) if args.logs else None)
        scale.print_report(report)
        if args.report:
            Path(args.report).write_text(json.dumps(report, indent=2))
        return
    if args.what in ("crop", "all"):
        crop_pool.print_crop(crop_pool.measure_crop(Path(args.raw) if args.raw else None))
    if args.what in ("train", "all"):
        train_loop.print_train(train_loop.measure_train(ROOT / "params.yaml", args.device))
    if args.what in ("pipeline", "all"):
        print_pipeline(run_pipeline_benchmark())


if __name__ == "__main__":
    main()
