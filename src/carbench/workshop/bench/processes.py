"""Commands run with their output copied to a log as it comes and stopped at a timeout, and packages (dvc,
dvclive) installed from a folder of wheels where python cannot import them (a GPU machine without network): the
device plan's plumbing."""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .repro import stop_group


class Tee:
    """A text stream copied into a log file, flushed at every write (the log grows as the run goes)."""

    def __init__(self, stream: Any, log: Any) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.stream.flush()
        self.log.write(text)
        self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()


def run_logged(cmd: list[str], timeout: float, cwd: Optional[Path] = None,
               env: Optional[dict] = None) -> tuple[Optional[int], float, str]:
    """Run ``cmd`` with its output copied line by line to stdout (the phase's log); after ``timeout`` seconds it
    and its children are stopped. Returns (exit status, None when stopped; seconds; its output)."""
    start, lines = time.perf_counter(), []
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write("    " + line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code: Optional[int] = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        stop_group(proc)
        code = None
    reader.join(timeout=5)
    return code, time.perf_counter() - start, "".join(lines)


def add_site(site: Path) -> None:
    """Put ``site`` first on this process's path and on the PYTHONPATH of every process it starts."""
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([str(site / "bin"), os.environ.get("PATH", "")])
    importlib.invalidate_caches()


def missing_modules(names: tuple[str, ...]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def ensure_packages(wheels: Optional[Path], site: Path, names: tuple[str, ...] = ("dvc", "dvclive"),
                    timeout: float = 240.0) -> dict:
    """Make ``names`` importable here and in child processes: as they are, from ``site`` (installed there by an
    earlier call on the same machine), or by installing every wheel of ``wheels`` (when given) into ``site``."""
    if not missing_modules(names):
        return {"source": "importable", "seconds": 0.0}
    if site.is_dir():
        add_site(site)
        if not missing_modules(names):
            return {"source": f"{site} (installed earlier)", "seconds": 0.0}
    files = sorted(str(p) for p in wheels.glob("*.whl")) if wheels is not None else []
    if not files:
        where = f"no wheels in {wheels}" if wheels is not None else "no --wheels folder given"
        raise SystemExit(f"{', '.join(missing_modules(names))} not importable and {where}: install the project on "
                         f"this machine (`pip install -r requirements.txt`), or, without network, pass --wheels DIR "
                         f"with their wheels and dependencies (`pip download -d DIR` of requirements.txt's dvc and "
                         f"dvclive lines, on a machine with network)")
    print(f"installing {len(files)} wheels from {wheels} into {site}")
    code, seconds, output = run_logged([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                        "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
                                        "--target", str(site), *files], timeout)
    if code != 0:
        raise SystemExit(f"pip install --target {site} failed (exit {code}):\n{output[-2000:]}")
    add_site(site)
    still = missing_modules(names)
    if still:
        raise SystemExit(f"{', '.join(still)} still not importable after installing the wheels of {wheels}")
    return {"source": f"{len(files)} wheels of {wheels} installed into {site}", "seconds": seconds}


def dvc_version() -> Optional[str]:
    done = subprocess.run([sys.executable, "-m", "dvc", "--version"], capture_output=True, text=True)
    return done.stdout.strip() or None

