"""Mean +/- std of the test metrics over a sweep of DVC experiments (k-fold or seeds).

Usage:
    dvc exp run --queue -S split.strategy=kfold -S split.folds=3 -S 'split.fold=0,1,2'   # or -S 'base.seed=0,1,2'
    dvc queue start -j 1          # runs them one after the other (dvc queue status: until none is queued/running)
    python scripts/sweep.py --where split.strategy=kfold     # every such experiment of the current commit
    python scripts/sweep.py NAME NAME ...                    # or the experiments named

Reads `dvc exp show --json` (only what it shows: experiments of HEAD unless `-A` is passed through `--exp-show`).
Bad input or a failing `dvc` prints one `error: ...` line and exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import sys

from carbench.core import cli
from carbench.core.errors import UserError
from carbench.workshop import sweep_report


def parse_where(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings -> {KEY: VALUE}."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise UserError(f"--where {bad[0]!r}: expected KEY=VALUE, e.g. --where split.strategy=kfold")
    return dict(item.split("=", 1) for item in items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="experiment names (default: every experiment shown)")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs whose params.yaml KEY (dotted) equals VALUE; repeatable")
    parser.add_argument("--exp-show", default="", help="extra `dvc exp show` arguments, e.g. '-A'")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of markdown")
    args = parser.parse_args()
    where = parse_where(args.where)
    runs = sweep_report.ordered(sweep_report.select(sweep_report.runs_from_exp_show(sweep_report.exp_show(args.exp_show.split())), args.names, where))
    if not runs:
        print("error: no experiment matches (dvc exp show lists the experiments of HEAD)", file=sys.stderr)
        return 1
    rows = sweep_report.summarize(runs)
    print(json.dumps(rows, indent=2) if args.json else sweep_report.to_markdown(rows, runs), end="")
    return 0


if __name__ == "__main__":
    cli.run_command(main)
