"""knn@<name>: fit the k-NN model on the gallery embeddings and write its retrieval metrics."""
from __future__ import annotations

from carbench import cli, config, runtime
from carbench.retrieval import run_knn_experiment


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--name", required=True, help="retrieval experiment")
    parser.add_argument("--embeddings", required=True, help="embedding store (data/embeddings/<name>)")
    parser.add_argument("--out", required=True, help="model directory (models/<name>)")
    parser.add_argument("--metrics", required=True, help="metrics JSON (metrics/knn/<name>.json)")
    args = parser.parse_args()
    params = config.load_params(args.params)
    runtime.configure(params.base.seed, params.base.threads)
    device = runtime.select_device(params.base.device)
    run_knn_experiment(params, args.name, args.embeddings, args.out, args.metrics, device)


if __name__ == "__main__":
    cli.run(main)
