"""Runs side by side in a terminal: the params that differ between DVC experiments, then each benchmark
experiment's test top-1 (a column per run).

Usage:
    python scripts/runs.py                      # every experiment of HEAD (`dvc exp show`), oldest first
    python scripts/runs.py base lr3e-4          # the runs named, in this order
    python scripts/runs.py --metric f1_macro    # macro-F1 instead of top-1

`dvc exp show` prints every param, dependency and metric DVC tracks as a column of its own (hundreds here);
this is the same data (`dvc exp show --json`) turned so that it fits 120 columns for a handful of runs.
Bad input or a failing `dvc` prints one `error: ...` line and exits with status 1.
"""
from __future__ import annotations

import argparse
import sys

from carbench.core import cli
from carbench.core.errors import UserError
from carbench.workshop import runs as R
from carbench.workshop import sweep_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="experiment names (default: every experiment of HEAD)")
    parser.add_argument("--metric", default="top1", choices=sweep_report.METRICS, help="headline metric to show")
    parser.add_argument("--exp-show", default="", help="extra `dvc exp show` arguments, e.g. '-A'")
    args = parser.parse_args()
    every = sweep_report.runs_from_exp_show(sweep_report.exp_show(args.exp_show.split()))
    if args.names:
        by_name = {run["name"]: run for run in every}
        unknown = [name for name in args.names if name not in by_name]
        if unknown:
            raise UserError(f"no experiment named {unknown[0]!r} among those of HEAD "
                            f"({', '.join(sorted(by_name)) or 'none'}); `dvc exp list` names them")
        chosen = [by_name[name] for name in args.names]
    else:
        chosen = list(reversed(every))      # dvc exp show lists the newest first
    if not chosen:
        raise UserError("no experiment to show: run one (python scripts/offline.py -n NAME, or dvc exp run)")
    text = R.table(chosen, args.metric)
    print(text, end="")
    if not R.fits(text):
        print(f"(wider than {R.WIDTH} columns: name fewer runs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run_command(main)
