"""Shared entry-point plumbing for the thin scripts in stages/ and the user commands (carbench-predict, scripts/)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import timing
from .config import ConfigError
from .errors import DataWarning, UserError

STAGE_LOG_ENV = timing.STAGE_LOG_ENV
_KIB_PER_MIB = 1024
#: Exit status when the reader of stdout went away (``... | head -1``): what a shell reports for a command
#: killed by SIGPIPE, so pipelines treat it like any other program cut short by the reader.
BROKEN_PIPE_STATUS = 128 + signal.SIGPIPE
INTERRUPTED_STATUS = 130


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--params`` option every stage takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def _stage_name() -> str:
    """``train@cnn_basic``-style name of the running stage, from the script name and ``--name``."""
    name = Path(sys.argv[0]).stem
    if "--name" in sys.argv[:-1]:
        name += "@" + sys.argv[sys.argv.index("--name") + 1]
    return name


def _log_stage(status: str) -> None:
    """Append this stage's wall time, peak resident memory, start and end (epoch seconds) and what the library
    recorded (:mod:`carbench.timing`: time to first batch, steady images/s) to $CARBENCH_STAGE_LOG, if set.

    The wall time counts from the process start, so interpreter start-up and imports are included.
    """
    path = os.environ.get(STAGE_LOG_ENV)
    if not path or os.environ.get("RANK", "0") != "0":   # under torchrun (base.gpus > 1) rank 0 logs the stage
        return
    seconds, end = timing.process_seconds(), time.time()
    # ru_maxrss is in KiB on Linux: the peak resident set of this process.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KIB_PER_MIB
    record = {"stage": _stage_name(), "seconds": round(seconds, 3), "peak_rss_mib": round(peak_mib, 1),
              "status": status, "start": round(end - seconds, 3), "end": round(end, 3), **timing.fields()}
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show our data warnings as one ``warning: ...`` line, without the file, line and source Python adds."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (warnings' signature)
        if issubclass(category, DataWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python flushes it again at exit, which would raise once more on the closed pipe
    (the recipe of the Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _guarded(main: Callable[[], Optional[int]], log: Callable[[str], None]) -> int:
    """Run ``main``; a user error becomes one 'error: ...' line. Returns the exit status."""
    try:
        with _one_line_warnings():
            status = main()
            sys.stdout.flush()   # a closed pipe shows up here, where it can still be handled
    except (ConfigError, UserError) as exc:
        log("error")
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _silence_stdout()
        log("ok")
        return BROKEN_PIPE_STATUS
    except KeyboardInterrupt:
        log("interrupted")
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS
    log("ok")
    return int(status or 0)


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a user error becomes one 'error: ...' line and exit status 1."""
    status = _guarded(main, _log_stage)
    if status:
        sys.exit(status)


def run_command(main: Callable[[], Optional[int]]) -> None:
    """Run a user command's ``main`` (carbench-predict, scripts/*.py) like a stage, without the stage log; exit
    with its status when not 0: user errors are one 'error: ...' line, a closed stdout pipe ends quietly
    (:data:`BROKEN_PIPE_STATUS`)."""
    status = _guarded(main, lambda status: None)
    if status:
        sys.exit(status)


def tool_error(stderr: str) -> str:
    """The line of another tool's stderr (dvc) that says what went wrong: its first ``ERROR`` line, else its
    last non-empty line (DVC adds help links and blank lines around the message)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.upper().startswith("ERROR")]
    return (errors or lines or ["(no message)"])[0 if errors else -1]
