"""``dvc repro`` of a workspace with the stage log on, stoppable at a timeout with the stages that ended kept."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional


class ReproTimeout(Exception):
    """``dvc repro`` ran past its timeout and was stopped: ``wall`` seconds, the ``records`` of the stages that
    ended before (a stage stopped midway may add one with a status other than ``ok``)."""

    def __init__(self, wall: float, records: list[dict]) -> None:
        super().__init__(f"dvc repro stopped after {wall:.0f} s (timeout)")
        self.wall, self.records = wall, records


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End ``proc`` and every process of its group (started with ``start_new_session=True``): SIGTERM, then
    SIGKILL after ``grace`` seconds."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def read_records(stage_log: Path) -> list[dict]:
    """The stage log's records (none when it does not exist; a line cut short is skipped)."""
    if not stage_log.is_file():
        return []
    out = []
    for line in stage_log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def run_repro(repo: Path, logs: Path, targets: tuple[str, ...] = (), timeout: Optional[float] = None,
              tag: str = "") -> tuple[float, list[dict]]:
    """``dvc repro [targets]`` in ``repo`` with the stage log on (``logs/stages<tag>.jsonl``, dvc's output in
    ``logs/dvc-repro<tag>.log``, both written as the run goes); returns (wall seconds, stage records in run order).
    With ``timeout`` (seconds), dvc and its stages are stopped then and :class:`ReproTimeout` is raised.

    dvc runs as ``python -m dvc`` and the stages' ``python`` is this interpreter (a ``python`` script first on
    PATH), so the run needs no ``dvc`` or ``python`` command on PATH (an environment whose ``bin`` folder is not on
    PATH, a machine with ``python3`` only)."""
    stage_log, log = logs / f"stages{tag}.jsonl", logs / f"dvc-repro{tag}.log"
    stage_log.unlink(missing_ok=True)
    shim = repo.parent / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "python").unlink(missing_ok=True)
    # A script, not a link: a virtual environment's python started through a link elsewhere misses its pyvenv.cfg
    # and runs without the environment's packages.
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    # Without pyenv's variables: dvc would otherwise strip the first PATH entries (its pyenv fix), the link's too.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYENV_")}
    env = {**inherited, "CARBENCH_STAGE_LOG": str(stage_log), "PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(shim), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *targets], cwd=repo, env=env,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=timeout is not None)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            raise ReproTimeout(time.perf_counter() - start, read_records(stage_log)) from None
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"dvc repro failed (exit {code}); its output: {log}\n" + log.read_text()[-3000:])
    return wall, read_records(stage_log)

