"""Estimated wall times of the presets on the full dataset (carbench.workshop.bench.estimate; docs/performance.md).

    python scripts/estimate_time.py laptop --stage-log STAGES.jsonl [--cores 4] [--efficiency 0.75]
    python scripts/estimate_time.py paper --rate IMAGES_PER_S

laptop: STAGES.jsonl is the $CARBENCH_STAGE_LOG of the laptop preset run on dev98 (docs/performance.md has the
command). paper: the rate is ResNet-50's training images/s at 448 px on the GPU (the scale benchmark's steady or
bare rate for that model and size).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from carbench.workshop.bench import estimate as E
from carbench.workshop.bench.extrapolate import expected_stages


def laptop(args: argparse.Namespace) -> None:
    expected = expected_stages(yaml.safe_load(args.params.read_text())) if args.params else None
    out = E.laptop_estimate(E.read_stage_log(args.stage_log), args.cores, args.efficiency, expected)
    print(f"laptop preset, full Stanford Cars, {args.cores}-core CPU (estimate)\n{out['method']}\n")
    print(f"{'stage':34s} {'dev98 wall s':>12s} {'dev98 cpu s':>11s} {'full s':>8s}")
    for r in out["stages"]:
        print(f"{r['stage']:34s} {r['wall_dev98_s']:12.1f} {r['cpu_dev98_s']:11.1f} {r['full_s']:8.0f}")
    print(f"{'dvc between stages':34s} {'':12s} {'':11s} {out['dvc_s']:8.0f}")
    what = "of the measured stages only" if out["missing_stages"] else "(download not included)"
    print(f"estimated total {what}: {out['total_s']:.0f} s = {out['total_s'] / 60:.0f} min")
    if out["missing_stages"]:
        print(f"NOT MEASURED (not in the total): {', '.join(out['missing_stages'])}")


def paper(args: argparse.Namespace) -> None:
    images = E.paper_images(args.epochs, not args.no_refit)
    seconds = images / args.rate
    print(f"paper ResNet-50 preset, full Stanford Cars, one GPU (estimate)\n{E.PAPER_METHOD}\n")
    print(f"training-step equivalents: {images:,.0f}; at {args.rate:g} images/s: {seconds:.0f} s = "
          f"{seconds / 3600:.1f} h (train@ and evaluate@ of tl_resnet50_finetune; plus crop and start-up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="preset", required=True)
    lap = sub.add_parser("laptop", help="configs/overrides/laptop.yaml on a multi-core CPU")
    lap.add_argument("--stage-log", required=True, help="the dev98 run's $CARBENCH_STAGE_LOG")
    lap.add_argument("--params", type=Path, help="the run's params.yaml: its stages not in the log are listed")
    lap.add_argument("--cores", type=int, default=4)
    lap.add_argument("--efficiency", type=float, default=0.75, help="speed gained per added core (assumed)")
    pap = sub.add_parser("paper", help="configs/overrides/paper_resnet50.yaml on one GPU")
    pap.add_argument("--rate", type=float, required=True,
                     help="training images/s of ResNet-50 at 448 px on the GPU, as the scale benchmark measures it")
    pap.add_argument("--epochs", type=int, default=128)
    pap.add_argument("--no-refit", action="store_true")
    args = parser.parse_args()
    laptop(args) if args.preset == "laptop" else paper(args)


if __name__ == "__main__":
    main()
