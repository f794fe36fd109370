"""embed@<name>: embed the gallery (train[+val]) and query (test) crops with the embedder's best checkpoint."""
from __future__ import annotations

from carbench import cli, config, runtime
from carbench.embed import run_embed


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--name", required=True, help="retrieval experiment")
    parser.add_argument("--crops", required=True, help="crop store directory (data/crops)")
    parser.add_argument("--models", required=True, help="models root holding <embedder>/best.pt")
    parser.add_argument("--out", required=True, help="output directory (data/embeddings/<name>)")
    args = parser.parse_args()
    params = config.load_params(args.params)
    runtime.configure(params.base.seed, params.base.threads)
    device = runtime.select_device(params.base.device)
    run_embed(params, args.name, args.crops, args.models, args.out, device)


if __name__ == "__main__":
    cli.run(main)
