"""evaluate@<name>: test-set metrics, confusion matrix, per-class table and timings of one experiment."""
from __future__ import annotations

from carbench.core import cli
from carbench import config
from carbench.report import evaluate


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--name", required=True, help="experiment (any of params.experiments)")
    parser.add_argument("--crops", required=True, help="crop store directory (data/crops)")
    parser.add_argument("--models", required=True, help="models root (models)")
    parser.add_argument("--metrics", required=True, help="metrics JSON (metrics/eval/<name>.json)")
    parser.add_argument("--plots", required=True, help="plots directory (plots/eval/<name>)")
    parser.add_argument("--tables", required=True, help="tables directory (metrics/eval/<name>)")
    parser.add_argument("--headline", required=True, help="top-1 and macro-F1 JSON (metrics/headline/<name>.json)")
    args = parser.parse_args()
    evaluate.run(config.load_params(args.params), args.name, args.crops, args.models, args.metrics, args.plots,
                 args.tables, args.headline)


if __name__ == "__main__":
    cli.run(main)
