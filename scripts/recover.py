"""Clear what an interrupted or killed hand-run `dvc exp run` or a killed queue worker left in this repository, so
the next run works and `dvc queue status` tells the truth.

Usage: python scripts/recover.py

DVC's own clean-up, done late: HEAD re-attached to its branch, refs/exps/exec/* removed, the git index reset to
HEAD (a `dvc exp run` stages params.yaml, dvc.lock and its outputs while it runs), DVC's record of a dead workspace
run removed; queue tasks whose worker was killed (listed as Running for ever) killed and removed with DVC's own
commands, their temporary copies deleted. Workspace files are not touched (params.yaml is only reported when it
differs from the last commit). Runs through scripts/offline.py or scripts/exp_run.py never need it
(docs/recovery.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from carbench.core import cli
from carbench.workshop import queue_recovery, runner

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    done = runner.recover(ROOT) + queue_recovery.clear_dead_tasks(ROOT)
    for line in done or ["nothing to clear: no trace of an interrupted `dvc exp run` or a killed queue worker"]:
        print(line)


if __name__ == "__main__":
    cli.run_command(main)
