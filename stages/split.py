"""Split stage: stratified train/val/test assignment of every image in data/raw."""
from carbench.cli import parser, run
from carbench.config import load_params
from carbench.runtime import configure
from carbench.split import run_split


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--raw", default="data/raw", help="download stage output")
    p.add_argument("--out", default="data/split", help="output folder (split.csv)")
    p.add_argument("--metrics", default="metrics/split.json")
    p.add_argument("--plot", default="plots/class_distribution.png")
    args = p.parse_args()
    params = load_params(args.params)
    configure(params.base.seed, params.base.threads, use_torch=False)
    run_split(params.split, params.base.seed, args.raw, args.out, args.metrics, args.plot)


if __name__ == "__main__":
    run(main)
