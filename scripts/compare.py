"""Confidence intervals and paired tests for experiments evaluated so far (no aggregate stage needed).

Usage: python scripts/compare.py [--eval metrics/eval] [--bootstrap 1000] [--confidence 0.95] [--seed 0] [NAME ...]
Reads metrics/eval/<name>/predictions.csv of each name (default: every experiment that has one) and prints
the aggregate stage's uncertainty table: top-1 and macro-F1 with bootstrap CIs, McNemar p against the best.
Bad input (a missing file, experiments evaluated on different test images) prints one ``error: ...`` line and
exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from carbench.core import cli
from carbench.report import aggregate, stats
from carbench.config import AggregateConfig
from carbench.core.errors import UserError


def experiment_config(path: Path) -> str:
    """The ``config`` field of an experiment's ``metrics/eval/<name>.json`` ("" without the file)."""
    if not path.is_file():
        return ""
    try:
        return json.loads(path.read_text()).get("config", "")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise UserError(f"{path} is not an evaluate stage metrics file ({exc}); rerun that evaluate stage") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--eval", default="metrics/eval")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = Path(args.eval)
    names = args.names or sorted(p.parent.name for p in root.glob(f"*/{stats.PREDICTIONS_CSV}"))
    if not names:
        print(f"error: no {root}/<name>/{stats.PREDICTIONS_CSV} found (run an evaluate stage first)", file=sys.stderr)
        return 1
    predictions = {n: stats.read_predictions(root / n / stats.PREDICTIONS_CSV) for n in names}
    configs = [experiment_config(root / f"{n}.json") for n in names]
    table = pd.DataFrame({"experiment": names, "config": configs,
                          "top1": [float(p["correct"].mean()) for p in predictions.values()],
                          "f1_macro": [stats.macro_f1(p["true"].to_numpy(), p["predicted"].to_numpy())
                                       for p in predictions.values()]})
    cfg = AggregateConfig(bootstrap=args.bootstrap, confidence=args.confidence, seed=args.seed)
    aggregate.add_uncertainty(table, predictions, cfg)
    print(f"{len(predictions[names[0]])} test images; {args.bootstrap} bootstrap resamples, seed {args.seed}")
    print(aggregate.comparison_markdown(table, cfg.confidence), end="")
    return 0


if __name__ == "__main__":
    cli.run_command(main)
