"""aggregate: one table of every experiment's metrics (md/csv/json) plus summary plots; collects only."""
from __future__ import annotations

from carbench.core import cli
from carbench import config
from carbench.report import aggregate


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--eval", required=True, help="evaluation metrics directory (metrics/eval)")
    parser.add_argument("--train-live", required=True, help="dvclive directories of the trained experiments (metrics/train)")
    parser.add_argument("--knn", required=True, help="k-NN metrics directory (metrics/knn)")
    parser.add_argument("--out", required=True, help="summary directory (metrics/summary)")
    parser.add_argument("--plots", required=True, help="summary plots directory (plots/summary)")
    args = parser.parse_args()
    aggregate.run(config.load_params(args.params), args.eval, args.train_live, args.knn, args.out, args.plots)


if __name__ == "__main__":
    cli.run(main)
