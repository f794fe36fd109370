"""Shared entry-point plumbing for the thin scripts in stages/ and the user commands (carbench-predict, scripts/)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import timing
from .config import ConfigError
from .errors import DataWarning, Interrupted, UserError

STAGE_LOG_ENV = timing.STAGE_LOG_ENV
_KIB_PER_MIB = 1024
#: Exit status when the reader of stdout went away (``... | head -1``): what a shell reports for a command
#: killed by SIGPIPE, so pipelines treat it like any other program cut short by the reader.
BROKEN_PIPE_STATUS = 128 + signal.SIGPIPE
INTERRUPTED_STATUS = 130
#: Set by scripts/offline.py for the `dvc exp run` it starts: a path that exists once the run was interrupted. A stage
#: started after that stops before doing anything, so DVC ends at a stage boundary without being signalled itself
#: (a signal to DVC between stages could cut its write of dvc.lock or the cache short). Under it, stages also stay
#: quiet when interrupted: the wrapper prints the one `interrupted:` line, after it has put the repository back.
STOP_FILE_ENV = "CARBENCH_STOP_FILE"
#: The signals that stop a stage or command cleanly: Ctrl-C, and what `kill` and cluster schedulers send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
    record = {"stage": _stage_name(), "seconds": round(seconds, 3), "cpu_s": round(timing.cpu_seconds(), 3),
              "peak_rss_mib": round(peak_mib, 1), "status": status, "start": round(end - seconds, 3), "end": round(end, 3), **timing.fields()}
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


def interrupted_status(signum: int) -> int:
    """The shell's exit status for a process stopped by ``signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


def interrupted_line(what: str, signum: int, detail: str = "") -> str:
    """The one line a user sees when ``what`` was stopped by ``signum`` (``detail``: what was kept)."""
    return (f"interrupted: {what} stopped by {signal.Signals(signum).name}{'; ' + detail if detail else ''}; "
            "run the same command again to continue")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, once: a repeat is ignored, so the clean-up
    of the first (temporary outputs, resume state) runs to its end although a terminal signals the whole process
    group and a wrapper may forward the same signal again. Without this, SIGTERM would end the process on the
    spot, leaving temporary directories behind. A signal ignored at start (``nohup``) stays ignored."""
    owner = os.getpid()

    def handler(signum, frame):  # noqa: ANN001 (signal's signature)
        if _forked_child(owner, signum):
            return
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    with _stop_signals_to(handler):
        yield


@contextlib.contextmanager
def _stop_signals_to(handler: Callable) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` inside the block, then back to the handlers before it. Only in the main
    thread (signal handlers are its only); a signal ignored at start (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, old in previous.items():
        if old is not signal.SIG_IGN:
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (pending, not lost) while worker processes are forked; the workers start with
    :func:`release_stop_signals`. A signal that reaches a child between ``fork()`` and the interpreter's after-fork
    step is dropped there (Python clears signals its handler has not run yet), so a ``multiprocessing`` pool
    terminated right after it started would wait for ever on a worker that never saw its SIGTERM."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """A SIGINT or SIGTERM that arrives inside the block takes effect when the block ends, as if it came then (the
    first one; a repeat is dropped, as :func:`stop_on_signals` drops it): for a write that must end whole. Raised
    inside ``torch.save``, a stop makes its zip writer fail a second time while unwinding (``unexpected pos``), a
    traceback instead of the one ``interrupted:`` line. Only the main thread handles signals: elsewhere the block
    runs as it is. A signal ignored at start (``nohup``) stays ignored."""
    owner, pending = os.getpid(), []

    def remember(signum, frame):  # noqa: ANN001 (signal's signature)
        if not _forked_child(owner, signum) and not pending:
            pending.append(signum)

    try:
        with _stop_signals_to(remember):
            yield
    finally:
        if pending:   # now to the handler the block found (Interrupted, or the default action)
            signal.raise_signal(pending[0])


def release_stop_signals() -> None:
    """First thing in a worker forked under :func:`stop_signals_held`: SIGINT and SIGTERM back to their default
    action (the worker dies of them, silently: its parent speaks), then unblocked, so one that came meanwhile
    takes effect now. An ignored signal (``nohup``) stays ignored."""
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _forked_child(owner: int, signum: int) -> bool:
    """In a process forked after the handler was installed (a multiprocessing worker, which its pool ends with
    SIGTERM), act as if there were no handler: die of the signal, as before, without a traceback."""
    if os.getpid() == owner:
        return False
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return True


def _stop_requested() -> bool:
    """True when the wrapper that started this stage was interrupted (see :data:`STOP_FILE_ENV`)."""
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and os.path.exists(path)


#: A SIGINT/SIGTERM that reached a stage before its ``main`` started (see :func:`_remember_early_signals`).
_early_signals: list[int] = []


def _remember_early_signals() -> None:
    """In a stage script, note SIGINT/SIGTERM from here on instead of acting on it: the heavy imports that follow
    (torch: seconds) would otherwise end in a KeyboardInterrupt traceback, or, for SIGTERM, no message at all.
    :func:`_guarded` then stops before ``main`` with the one ``interrupted:`` line."""
    owner = os.getpid()

    def remember(signum, frame):  # noqa: ANN001 (signal's signature)
        if _forked_child(owner, signum):
            return
        _early_signals.append(signum)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, remember)


#: True in a stage script's own process (stages/*.py import this module first); a library import, or a test that
#: runs a stage in its process, must not take over that process's signals.
_STAGE_PROCESS = Path(sys.argv[0] if sys.argv else "").parent.name == "stages" and \
    threading.current_thread() is threading.main_thread()
if _STAGE_PROCESS:
    _remember_early_signals()


def _ignore_stop_signals() -> None:
    """The work is done (or stopped): a SIGINT/SIGTERM from now on must not turn the exit status into a kill. Python
    puts the default disposition back while it shuts down, so a signal then (a wrapper forwarding Ctrl-C just as
    the stage ends) would kill a stage that succeeded; an ignored signal stays ignored."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python flushes it again at exit, which would raise once more on the closed pipe
    (the recipe of the Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def params_hint() -> str:
    """What to add to a stage's params error under a plain ``dvc repro`` / ``dvc exp run`` in the workspace when
    params.yaml differs from the last commit: ``dvc exp run -S`` has already written the refused value there, and a
    user who did not edit the file by hand wants the committed one back. Empty elsewhere: outside DVC, under the
    scripts that check params before DVC starts (they put params.yaml back themselves), and in a queued run's
    temporary copy (the user's params.yaml is untouched)."""
    root = os.environ.get("DVC_ROOT")
    if not root or "DVC_STAGE" not in os.environ or os.environ.get(STOP_FILE_ENV) \
            or f"{os.sep}.dvc{os.sep}tmp{os.sep}" in root:
        return ""
    try:
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "params.yaml"], cwd=root,
                                 capture_output=True, timeout=30).returncode == 1
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if not changed:
        return ""
    return ("; params.yaml differs from the last commit (`dvc exp run -S` writes its values there before any stage "
            "checks them): `git diff params.yaml` shows how, `git checkout params.yaml` puts the committed file back")


def _guarded(main: Callable[[], Optional[int]], log: Callable[[str], None], what: str,
             hint: Callable[[], str] = lambda: "") -> int:
    """Run ``main``; a user error becomes one 'error: ...' line (a params error followed by ``hint()``),
    SIGINT/SIGTERM one 'interrupted: ...' line naming ``what``. Returns the exit status."""
    try:
        with _one_line_warnings(), stop_on_signals():
            if _early_signals or _stop_requested():
                raise Interrupted(_early_signals[0] if _early_signals else signal.SIGINT)
            status = main()
            sys.stdout.flush()   # a closed pipe shows up here, where it can still be handled
    except (ConfigError, UserError) as exc:
        log("error")
        print(f"error: {exc}{hint() if isinstance(exc, ConfigError) else ''}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _silence_stdout()
        log("ok")
        return BROKEN_PIPE_STATUS
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        log("interrupted")
        if not os.environ.get(STOP_FILE_ENV):
            print(interrupted_line(what, signum), file=sys.stderr)
        return interrupted_status(signum)
    log("ok")
    return int(status or 0)


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a user error becomes one 'error: ...' line and exit status 1."""
    status = _guarded(main, _log_stage, "stage " + _stage_name(), params_hint)
    if _STAGE_PROCESS:
        # the stage process exits right after: DVC must see the status it finished with. Only there: an ignored
        # SIGTERM would outlive a stage run inside another process and be inherited by every process it forks
        # later (a multiprocessing pool could then never be terminated).
        _ignore_stop_signals()
    if status:
        sys.exit(status)


def run_command(main: Callable[[], Optional[int]]) -> None:
    """Run a user command's ``main`` (carbench-predict, scripts/*.py) like a stage, without the stage log; exit
    with its status when not 0: user errors are one 'error: ...' line, a closed stdout pipe ends quietly
    (:data:`BROKEN_PIPE_STATUS`)."""
    status = _guarded(main, lambda status: None, Path(sys.argv[0]).name)
    if status:
        sys.exit(status)


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
