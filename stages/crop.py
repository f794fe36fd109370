"""crop: crop every image to its box once and store uint8 crops per split in data/crops."""
from __future__ import annotations

from carbench.core import cli
from carbench import config
from carbench.data import crop


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--raw", required=True, help="download stage output (data/raw)")
    parser.add_argument("--split", required=True, help="split stage output (data/split)")
    parser.add_argument("--out", required=True, help="crop store folder (data/crops)")
    parser.add_argument("--metrics", required=True, help="metrics JSON (metrics/crop.json)")
    parser.add_argument("--preview", required=True, help="crop preview grid (plots/crops_preview.png)")
    args = parser.parse_args()
    crop.run(config.load_params(args.params), args.raw, args.split, args.out, args.metrics, args.preview)


if __name__ == "__main__":
    cli.run(main)
