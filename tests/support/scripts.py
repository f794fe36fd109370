"""The project's commands (``scripts/*.py``) run as a user runs them (or imported, to test a function of theirs), and
a fake ``dvc`` on PATH for the paths where DVC fails or answers something known."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import textwrap
import sys
from pathlib import Path

from support.params import ROOT


def load_script(name: str):
    """``scripts/NAME.py`` imported as a module (its ``main`` not run), for tests of its functions."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python scripts/NAME ARGS`` with this environment plus ``env``; output captured as text."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def fake_dvc(folder: Path, stdout: str = "", stderr: str = "", code: int = 0) -> dict:
    """Environment variables that put a ``dvc`` printing ``stdout`` and ``stderr`` and exiting ``code`` first on
    PATH (``folder`` holds it)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    (folder / "dvc.stdout").write_text(stdout)
    (folder / "dvc.stderr").write_text(stderr)
    fake = bin_dir / "dvc"
    fake.write_text(f"#!/bin/sh\ncat '{folder / 'dvc.stdout'}'\ncat '{folder / 'dvc.stderr'}' >&2\nexit {code}\n")
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def run_stage_script(tmp_path, body: str, env_extra: dict | None = None, argv: tuple = ()) -> subprocess.CompletedProcess:
    """``body`` as a script of its own process (named like a stage script), run with ``env_extra`` added."""
    script = tmp_path / "stage_x.py"
    script.write_text(textwrap.dedent(body))
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env)
