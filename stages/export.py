"""export@<name>: the experiment's model as ONNX and TorchScript files with their preprocessing contract, checked
against PyTorch on the test crops."""
from __future__ import annotations

from carbench.core import cli
from carbench import config
from carbench.export import export


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--name", required=True, help="experiment (any of params.experiments)")
    parser.add_argument("--crops", required=True, help="crop store directory (data/crops): test crops, crop geometry")
    parser.add_argument("--models", required=True, help="models root (models)")
    parser.add_argument("--out", required=True, help="export directory (exports/<name>)")
    parser.add_argument("--metrics", required=True, help="parity metrics JSON (metrics/export/<name>.json)")
    args = parser.parse_args()
    base = config.load_params(args.params).base
    export.run(base.seed, base.threads, args.name, args.crops, args.models, args.out, args.metrics)


if __name__ == "__main__":
    cli.run(main)
