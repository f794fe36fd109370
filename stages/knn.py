"""knn@<name>: fit the k-NN model on the gallery embeddings and write its retrieval metrics."""
from __future__ import annotations

from carbench.core import cli
from carbench.config import resolved
from carbench.retrieval import knn


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--name", required=True, help="retrieval experiment")
    parser.add_argument("--embeddings", required=True, help="embedding store (data/embeddings/<name>)")
    parser.add_argument("--out", required=True, help="model directory (models/<name>)")
    parser.add_argument("--metrics", required=True, help="metrics JSON (metrics/knn/<name>.json)")
    parser.add_argument("--tables", help="dir of the classical classifier's per-query predictions (metrics/knn/<name>)")
    parser.add_argument("--resolved", help="its resolved config (data/resolved/knn/<name>.yaml); read instead of "
                                           "--params when given")
    args = parser.parse_args()
    base, exp = resolved.knn_stage(args.params, args.resolved, args.name)
    knn.run(base, exp, args.embeddings, args.out, args.metrics, args.tables)


if __name__ == "__main__":
    cli.run(main)
