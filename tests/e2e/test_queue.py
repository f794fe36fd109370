"""End to end: a queue worker killed in the middle of training (SIGKILL to the worker, its executor and the stage,
as the out-of-memory killer or a reboot would) leaves the workspace, HEAD and the index as they were; `dvc queue
status` then lists the task as Running for ever, `python scripts/recover.py` clears it, and the queue runs the
next experiment to the end."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support.project import env, make_project, run, tiny_params

pytestmark = pytest.mark.e2e

TARGET = "evaluate@cnn_basic"


def _processes_in(project: Path) -> list[psutil.Process]:
    """This project's processes: the queue worker, its executor, the stages (they run in .dvc/tmp/exps/tmp*)."""
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline"]):
        if proc.pid != os.getpid() and str(project) in (proc.info["cwd"] or ""):
            found.append(proc)
    return found


def _start_worker(project: Path, environ: dict) -> None:
    """`dvc queue start`, returning as in a terminal: its worker inherits the command's stdout, so a captured pipe
    would stay open, and the call block, until the worker has run the whole queue."""
    subprocess.run(["dvc", "queue", "start"], cwd=project, env=environ, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=120)


def _queue_status(project: Path, environ: dict) -> str:
    return run(["dvc", "queue", "status"], project, environ).stdout


def _wait(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_killed_queue_worker_is_cleared_by_recover_and_the_queue_runs_on(tmp_path):
    environ = env(tmp_path / "torch_home")
    project = make_project(tmp_path / "project", tiny_params())
    git = lambda *args: subprocess.run(["git", *args], cwd=project, capture_output=True, text=True).stdout  # noqa: E731
    before = (git("status", "--porcelain", "--untracked-files=no"), git("rev-parse", "HEAD"), git("diff", "--cached"))

    run(["dvc", "exp", "run", "--queue", "-n", "killed", TARGET, "-S", "experiments.cnn_basic.train.epochs=500"],
        project, environ)
    _start_worker(project, environ)
    _wait(lambda: any("stages/train.py" in " ".join(p.info["cmdline"] or []) for p in _processes_in(project)),
          "train@cnn_basic to start in the queue")
    for proc in _processes_in(project):
        proc.kill()
    _wait(lambda: not _processes_in(project), "the killed processes to go", timeout=30)

    status = _queue_status(project, environ)
    assert any("killed" in line and "Running" in line for line in status.splitlines()), status   # DVC's view
    assert (git("status", "--porcelain", "--untracked-files=no"), git("rev-parse", "HEAD"),
            git("diff", "--cached")) == before

    recovered = run([sys.executable, "scripts/recover.py"], project, environ)
    assert [line for line in recovered.stdout.splitlines() if "queue task" in line] == [
        f"cleared queue task {line.split()[0]} (killed): its worker was killed, `dvc queue status` showed it Running"
        for line in status.splitlines() if " killed " in f" {line} "]
    status = _queue_status(project, environ)
    assert "killed" not in status and "Running" not in status, status
    assert not list((project / ".dvc" / "tmp" / "exps").glob("tmp*")), "the dead task's copy is left"

    run(["dvc", "exp", "run", "--queue", "-n", "after", TARGET, "-S", "train.lr=0.003"], project, environ)
    _start_worker(project, environ)
    _wait(lambda: "after" in (s := _queue_status(project, environ)) and "Running" not in s and "Queued" not in s,
          "the next queued experiment")
    status = _queue_status(project, environ)
    assert any("after" in line and "Success" in line for line in status.splitlines()), status
    assert (git("status", "--porcelain", "--untracked-files=no"), git("rev-parse", "HEAD"),
            git("diff", "--cached")) == before
