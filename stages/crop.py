"""Crop stage: crop every image to its box once and store uint8 crops per split in data/crops."""
from carbench.cli import parser, run
from carbench.config import load_params
from carbench.crop import run_crop
from carbench.runtime import configure


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--raw", default="data/raw", help="download stage output")
    p.add_argument("--split", default="data/split", help="split stage output")
    p.add_argument("--out", default="data/crops", help="crop store folder")
    p.add_argument("--metrics", default="metrics/crop.json")
    p.add_argument("--preview", default="plots/crops_preview.png")
    args = p.parse_args()
    params = load_params(args.params)
    configure(params.base.seed, params.base.threads, use_torch=False)
    run_crop(params.crop, params.data.skip_bad_images, args.raw, args.split, args.out, args.metrics, args.preview)


if __name__ == "__main__":
    run(main)
