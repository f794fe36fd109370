"""train@<name>: train one transfer/scratch experiment on the crop store (see docs/train.md)."""
from __future__ import annotations

from carbench.core import cli
from carbench.config import resolved
from carbench.train import experiment


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--name", required=True, help="experiment (params.yaml experiments.<name>)")
    parser.add_argument("--crops", required=True, help="crop store directory (data/crops)")
    parser.add_argument("--out", required=True, help="model output directory (models/<name>)")
    parser.add_argument("--live", required=True, help="dvclive directory (metrics/train/<name>)")
    parser.add_argument("--curves", required=True, help="train/val curves: <curves>/{top1,loss}/<name>.tsv (plots/curves)")
    parser.add_argument("--resume-dir", required=True, help="resume state directory (.cache/resume)")
    parser.add_argument("--resolved", help="its resolved config (data/resolved/train/<name>.yaml); read instead of "
                                           "--params when given")
    args = parser.parse_args()
    base, exp = resolved.train_stage(args.params, args.resolved, args.name)
    experiment.run(base, exp, args.crops, args.out, args.live, args.curves, args.resume_dir)


if __name__ == "__main__":
    cli.run(main)
