"""Tune trained experiments on the validation split (never on test): a grid of params overrides, scored on val.

    python scripts/tune.py --overrides configs/overrides/dev98.yaml --crops data/crops \
        --grid configs/grids/tune_dev98_round1.yaml [--jobs 4] [--only tl_resnet50_finetune] [--out tune.jsonl]

Reads params.yaml with the overrides file merged in (as `scripts/offline.py` runs it) and the crop store the
pipeline wrote (`data/crops`, after the `crop` stage ran with those overrides). The grid file lists runs:

    runs:
      - experiment: tl_resnet50_finetune
        set: {train.lr: 0.01, model.backbone_lr_mult: 1.0}       # applied to experiments.<name>
        vary: {train.lr: [0.005, 0.01, 0.02]}                    # one run per combination (optional)
        knn: {k: [3, 10], metric: [euclidean, cosine], pca_components: [0, 256], whiten: [false, true]}

Every run goes through `carbench.config` (a typo in a key fails loudly) and trains with the pipeline's own engine
(`carbench.train.engine`: its fit phase, and its refit and test predictions with `--test`), as `train@<name>` does,
keeping the best epoch on val. With `knn:`, the best model then
embeds train and val (backbone features, L2-normalised and stored as float16, as `embed@` does) and every k-NN
setting of the product is scored with train as the gallery and val as the queries (`carbench.retrieval.knn`).
`train.refit` is ignored here: a refitted model has no validation score.

`--jobs N` trains N runs at once in separate processes (on one GPU, small models leave it mostly idle otherwise).
Prints one JSON line per run (val top-1, best epoch, seconds) and, last, the best run of each experiment.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
from pathlib import Path

import yaml

from carbench.core import cli
from carbench.workshop.tuning import expand, load_raw, run_one, validate

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    p.add_argument("--overrides", default=None, help="a YAML file merged over params.yaml (configs/overrides/dev98.yaml)")
    p.add_argument("--crops", default=str(ROOT / "data" / "crops"), help="the crop stage's store")
    p.add_argument("--grid", required=True, help="YAML file with `runs:` (see above)")
    p.add_argument("--only", default="", help="comma-separated experiments of the grid to run (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--test", action="store_true",
                   help="after tuning is over: also score each run's final model on test (see carbench.workshop.tuning.final_test)")
    args = p.parse_args()
    raw = load_raw(Path(args.params), Path(args.overrides) if args.overrides else None)
    runs = expand(yaml.safe_load(Path(args.grid).read_text()) or {}, {s for s in args.only.split(",") if s})
    validate(raw, runs)
    print(json.dumps({"runs": len(runs), "jobs": args.jobs}), flush=True)
    sink = open(args.out, "a") if args.out else None
    best: dict = {}

    def report(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()
        if row["val_top1"] > best.get(row["experiment"], {}).get("val_top1", -1.0):
            best[row["experiment"]] = row

    if args.jobs <= 1:
        for run in runs:
            report(run_one(raw, run, args.crops, args.test))
    else:
        spawn = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        with futures.ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            pending = [pool.submit(run_one, raw, run, args.crops, args.test) for run in runs]
            for done in futures.as_completed(pending):
                report(done.result())
    print(json.dumps({"best": best}), flush=True)
    return 0


if __name__ == "__main__":
    cli.run_command(main)
