"""download: get Stanford Cars (routes | local | synthetic), check its fingerprint, pack it into data/raw."""
from __future__ import annotations

from carbench.core import cli
from carbench import config
from carbench.download import acquire


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--out", required=True, help="output folder (data/raw: images.bin, manifest.csv, classes.json)")
    parser.add_argument("--metrics", required=True, help="metrics JSON (metrics/data.json)")
    args = parser.parse_args()
    acquire.run(config.load_params(args.params), args.out, args.metrics)


if __name__ == "__main__":
    cli.run(main)
