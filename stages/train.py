"""train@<experiment>: train one transfer/scratch experiment on the crop store (see docs/train.md)."""
from __future__ import annotations

from pathlib import Path

from carbench import cli
from carbench.config import stage_experiment
from carbench.runtime import configure

RESUME_DIR = Path(".cache/resume")
CURVES_DIR = Path("plots/curves")


def main() -> None:
    p = cli.parser("Train one experiment; writes <out>/best.pt and the dvclive dir <live>.")
    p.add_argument("--name", required=True, help="experiment name (params.yaml experiments.<name>)")
    p.add_argument("--resolved", type=Path, help="its resolved config (data/resolved/train/<name>.yaml, written by "
                                                  "the resolve stage); read instead of --params when given")
    p.add_argument("--crops", required=True, type=Path, help="crop store directory (data/crops)")
    p.add_argument("--out", required=True, type=Path, help="model output directory (models/<name>)")
    p.add_argument("--live", required=True, type=Path, help="dvclive directory (metrics/train/<name>)")
    p.add_argument("--curves", default=CURVES_DIR, type=Path,
                   help="train/val curves for dvc.yaml's plots: <curves>/{top1,loss}/<name>.tsv (default: %(default)s)")
    p.add_argument("--resume-dir", default=RESUME_DIR, type=Path, help="resume state directory (default: %(default)s)")
    args = p.parse_args()
    base, exp = stage_experiment(args.params, args.resolved, args.name)
    configure(base.seed, base.threads)
    from carbench.engine import train_experiment  # after configure: torch threads are set first

    train_experiment(exp, base, args.crops, args.out, args.live, args.resume_dir,
                     curves_dir=args.curves)


if __name__ == "__main__":
    cli.run(main)
