"""Download stage: get Stanford Cars (routes | local | synthetic), check its fingerprint, pack it into data/raw."""
from carbench.cli import parser, run
from carbench.config import load_params
from carbench.download import run_download
from carbench.runtime import configure


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", default="data/raw", help="output folder (images.bin, manifest.csv, classes.json)")
    p.add_argument("--metrics", default="metrics/data.json")
    args = p.parse_args()
    params = load_params(args.params)
    configure(params.base.seed, params.base.threads, use_torch=False)
    run_download(params.data, params.base.seed, args.out, args.metrics, offline=params.base.offline)


if __name__ == "__main__":
    run(main)
