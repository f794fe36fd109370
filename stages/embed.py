"""embed@<name>: embed the gallery (train[+val]) and query (test) crops with the embedder's best checkpoint."""
from __future__ import annotations

from carbench.core import cli
from carbench.config import resolved
from carbench.retrieval import embed


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--name", required=True, help="retrieval experiment")
    parser.add_argument("--crops", required=True, help="crop store directory (data/crops)")
    parser.add_argument("--models", required=True, help="models root holding <embedder>/best.pt (models)")
    parser.add_argument("--out", required=True, help="output directory (data/embeddings/<name>)")
    parser.add_argument("--resolved", help="its resolved config (data/resolved/embed/<name>.yaml); read instead of "
                                           "--params when given")
    args = parser.parse_args()
    base, exp = resolved.embed_stage(args.params, args.resolved, args.name)
    embed.run(base, exp, args.crops, args.models, args.out)


if __name__ == "__main__":
    cli.run(main)
