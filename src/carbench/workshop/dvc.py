"""``dvc`` run from the workshop's tools (experiment runner, queue recovery, sweeps, SLURM collector): its output
captured, a missing ``dvc`` said in one line, a failure worded by its own first error line."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from ..core.errors import UserError


def run_dvc(args: list[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """``dvc ARGS`` with its output captured; a missing ``dvc`` command is a UserError saying how to get it. The
    caller words a failure with :func:`tool_error`."""
    try:
        return subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("dvc not found: install the requirements (pip install -r requirements.txt) "
                        "or activate their environment") from None


def tool_error(stderr: str) -> str:
    """The line of another tool's stderr (dvc) that says what went wrong: its first ``ERROR`` line, else its
    last non-empty line (DVC adds help links and blank lines around the message)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.upper().startswith("ERROR")]
    return (errors or lines or ["(no message)"])[0 if errors else -1]
