"""split: stratified train/val/test assignment of every image in data/raw."""
from __future__ import annotations

from carbench.core import cli
from carbench import config
from carbench.data import split


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--raw", required=True, help="download stage output (data/raw)")
    parser.add_argument("--out", required=True, help="output folder (data/split)")
    parser.add_argument("--metrics", required=True, help="metrics JSON (metrics/split.json)")
    parser.add_argument("--plot", required=True, help="class distribution plot (plots/class_distribution.png)")
    args = parser.parse_args()
    split.run(config.load_params(args.params), args.raw, args.out, args.metrics, args.plot)


if __name__ == "__main__":
    cli.run(main)
