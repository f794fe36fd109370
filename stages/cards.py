"""cards: one model card per experiment (cards/<name>.md) from the data, recipe, metrics and export outputs."""
from __future__ import annotations

from carbench.core import cli
from carbench import config
from carbench.report import card


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--data", required=True, help="data metrics JSON with the fingerprint (metrics/data.json)")
    parser.add_argument("--resolved", required=True, help="resolved configs directory (data/resolved)")
    parser.add_argument("--summary", required=True, help="aggregate output directory (metrics/summary)")
    parser.add_argument("--eval", required=True, help="evaluation metrics directory (metrics/eval)")
    parser.add_argument("--exports", required=True, help="exports directory (exports)")
    parser.add_argument("--export-metrics", required=True, help="parity metrics directory (metrics/export)")
    parser.add_argument("--out", required=True, help="cards directory (cards)")
    args = parser.parse_args()
    card.run(config.load_params(args.params), args.data, args.resolved, args.summary, args.eval, args.exports,
             args.export_metrics, args.out)


if __name__ == "__main__":
    cli.run(main)
