"""DVC's experiment queue after a killed worker. When a queue worker, its executor and the stage it runs are killed
(out of memory, ``kill -9``, a machine reboot), ``dvc queue status`` lists the task as ``Running`` for ever:
nothing is left to finish it, and ``dvc queue remove`` refuses a running task. The workspace, HEAD and the git
index are not involved (queued runs work in a copy under ``.dvc/tmp/exps/``), so ``dvc exp run`` works on; only
the queue's own records need clearing.

A dead task is found from DVC's own process record, ``.dvc/tmp/exps/run/<rev>/<rev>.json``: the executor's pid
with no return code yet, and no process of that pid alive. It is cleared with DVC's commands (``dvc queue kill``
marks it failed, ``dvc queue remove`` drops it), then its temporary copy and process record are deleted.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .dvc import run_dvc, tool_error
from ..core.errors import UserError

#: DVC's records of queued runs (one folder per task, named by its stash revision) and their temporary copies.
EXPS_DIR = Path(".dvc") / "tmp" / "exps"
RUN_DIR = EXPS_DIR / "run"


@dataclass(frozen=True)
class DeadTask:
    """A queue task whose executor process is gone: its revision, name and temporary copy (when recorded)."""
    rev: str
    name: Optional[str]
    copy: Optional[Path]

    @property
    def label(self) -> str:
        return f"{self.rev[:7]}" + (f" ({self.name})" if self.name else "")


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def dead_tasks(root: Path) -> list[DeadTask]:
    """The tasks under ``root`` whose executor was started, never returned, and no longer runs."""
    found = []
    for record in sorted((root / RUN_DIR).glob("*/*.json")):
        rev = record.stem
        if record.parent.name != rev or rev == "workspace":   # workspace runs: carbench.workshop.runner's
            continue
        try:
            proc = json.loads(record.read_text())
            pid, returned = int(proc["pid"]), proc.get("returncode")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if returned is not None or _pid_alive(pid):
            continue
        name, copy = None, None
        try:
            executor = json.loads(record.with_suffix(".run").read_text())
            name, copy = executor.get("name"), Path(executor["root_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        found.append(DeadTask(rev, name, copy))
    return found


def clear_dead_tasks(root: Path) -> list[str]:
    """Clear every dead task of ``root``'s queue; returns one line per task cleared."""
    done = []
    exps = (root / EXPS_DIR).resolve()
    for task in dead_tasks(root):
        rev = task.rev[:7]
        run_dvc(["queue", "kill", rev], cwd=root)       # a dead task cannot be killed, but it is marked failed
        removed = run_dvc(["queue", "remove", rev], cwd=root)
        if removed.returncode != 0 and rev in run_dvc(["queue", "status"], cwd=root).stdout:
            raise UserError(f"dvc queue remove {rev} failed: {tool_error(removed.stderr)}")
        if task.copy is not None and task.copy.resolve().parent == exps and task.copy.is_dir():
            shutil.rmtree(task.copy, ignore_errors=True)
        shutil.rmtree(root / RUN_DIR / task.rev, ignore_errors=True)
        done.append(f"cleared queue task {task.label}: its worker was killed, `dvc queue status` showed it Running")
    return done
