"""resolve: write the effective config of every train@/embed@/knn@ stage (see carbench.preflight)."""
from __future__ import annotations

from carbench.core import cli
from carbench import config, preflight


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--out", required=True, help="resolved configs directory (data/resolved)")
    args = parser.parse_args()
    params = config.load_params(args.params)
    preflight.warn_unread(args.params)      # a knob a plain `dvc exp run -S` set that no stage reads
    preflight.run(params, args.out)


if __name__ == "__main__":
    cli.run(main)
