"""`dvc exp run` that leaves the repository as it found it (the demo's guarantees without its overrides).

Usage: python scripts/exp_run.py [`dvc exp run` arguments...], e.g. python scripts/exp_run.py -n lr3e-4 -S train.lr=3e-4

The params it will run with (params.yaml with every -S applied as DVC applies it) are checked before DVC starts:
a bad key, value or model name is one `error:` line, nothing runs, no output is deleted and params.yaml is not
rewritten. So is a -S that no stage reads under those params (e.g. train.epochs while every experiment sets its
own); --allow-unused turns that refusal into a warning.
After the run, whether it succeeded, failed, was interrupted (Ctrl-C, SIGTERM) or DVC was killed, params.yaml
(byte for byte), HEAD and the git index are as they were; the experiment keeps its values (`dvc exp show`).
Interrupted: run the same command again to continue (docs/recovery.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from carbench.core import cli
from carbench.workshop import runner

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage=f"%(prog)s [-h] [{runner.ALLOW_UNUSED}] [dvc exp run arguments ...]",
                                     epilog="every other argument passes through to `dvc exp run` (see `dvc exp run "
                                            "--help`)")
    parser.add_argument(runner.ALLOW_UNUSED, action="store_true",
                        help="run even when a -S sets a key no stage reads (a warning instead)")
    args, extra = parser.parse_known_args()
    cmd = ["dvc", "exp", "run", *extra]
    runner.check_params(ROOT, runner.set_params(extra), allow_unused=args.allow_unused)
    return runner.run_guarded(cmd, ROOT)


if __name__ == "__main__":
    cli.run_command(main)
