"""carbench.workshop.queue_recovery: queue tasks whose worker was killed are found from DVC's process records and cleared with
`dvc queue kill` + `dvc queue remove` (a fake `dvc` records the calls here; tests/e2e/test_queue.py kills a real
worker); live, finished and workspace runs are left alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from carbench.workshop import queue_recovery
from carbench.core.errors import UserError


def _record(root, rev: str, pid: int, returncode, name: str | None = "q1", copy: bool = True) -> None:
    folder = root / queue_recovery.RUN_DIR / rev
    folder.mkdir(parents=True)
    (folder / f"{rev}.json").write_text(json.dumps({"pid": pid, "stdin": None, "stdout": str(folder / f"{rev}.out"),
                                                    "stderr": None, "returncode": returncode}))
    if copy:
        workdir = root / queue_recovery.EXPS_DIR / f"tmp{rev[:6]}"
        workdir.mkdir(parents=True)
        (folder / f"{rev}.run").write_text(json.dumps({"name": name, "root_dir": str(workdir), "status": 2}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch):
    """A `dvc` on PATH that logs its arguments; `queue status` lists what `queue.txt` holds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path / 'calls.txt'}
if [ "$1 $2" = "queue status" ]; then cat {tmp_path / 'queue.txt'}; fi
if [ "$1 $2" = "queue remove" ] && [ -f {tmp_path / 'refuse'} ]; then echo "ERROR: cannot remove" >&2; exit 255; fi
""")
    (bin_dir / "dvc").chmod(0o755)
    (tmp_path / "queue.txt").write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "calls.txt"


def test_only_a_started_task_with_no_return_code_and_no_live_process_is_dead(tmp_path):
    root = tmp_path / "repo"
    _record(root, "a" * 40, _dead_pid(), None, name="killed")
    _record(root, "b" * 40, os.getpid(), None)                        # still running
    _record(root, "c" * 40, _dead_pid(), 0)                           # finished
    _record(root, "workspace", _dead_pid(), None, copy=False)         # a workspace run: not the queue's
    (root / queue_recovery.RUN_DIR / ("d" * 40)).mkdir()                   # queued, never started: no record
    dead = queue_recovery.dead_tasks(root)
    assert [(t.rev, t.name, t.copy.name) for t in dead] == [("a" * 40, "killed", "tmpaaaaaa")]
    assert dead[0].label == "aaaaaaa (killed)"


def test_a_dead_task_is_killed_removed_and_its_leftovers_deleted(tmp_path, fake_dvc):
    root = tmp_path / "repo"
    _record(root, "a" * 40, _dead_pid(), None)
    _record(root, "b" * 40, os.getpid(), None)
    assert queue_recovery.clear_dead_tasks(root) == [
        "cleared queue task aaaaaaa (q1): its worker was killed, `dvc queue status` showed it Running"]
    assert fake_dvc.read_text().splitlines() == ["queue kill aaaaaaa", "queue remove aaaaaaa"]
    assert sorted(p.name for p in (root / queue_recovery.RUN_DIR).iterdir()) == ["b" * 40]
    assert not (root / queue_recovery.EXPS_DIR / "tmpaaaaaa").exists() and (root / queue_recovery.EXPS_DIR / "tmpbbbbbb").is_dir()
    assert queue_recovery.clear_dead_tasks(root) == []


def test_a_task_dvc_will_not_remove_is_an_error_naming_it(tmp_path, fake_dvc):
    root = tmp_path / "repo"
    _record(root, "a" * 40, _dead_pid(), None)
    (tmp_path / "refuse").write_text("")
    (tmp_path / "queue.txt").write_text("aaaaaaa  q1  12:35 PM  Running\n")
    with pytest.raises(UserError, match=r"^dvc queue remove aaaaaaa failed: ERROR: cannot remove$"):
        queue_recovery.clear_dead_tasks(root)
    assert (root / queue_recovery.RUN_DIR / ("a" * 40)).is_dir()           # nothing deleted behind DVC's back


def test_a_copy_outside_the_queue_folder_is_never_deleted(tmp_path, fake_dvc):
    root = tmp_path / "repo"
    rev = "a" * 40
    _record(root, rev, _dead_pid(), None, copy=False)
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (root / queue_recovery.RUN_DIR / rev / f"{rev}.run").write_text(json.dumps({"name": "q1", "root_dir": str(elsewhere)}))
    assert len(queue_recovery.clear_dead_tasks(root)) == 1
    assert elsewhere.is_dir()
