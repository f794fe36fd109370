"""Stop signals (Ctrl-C, ``kill``, a scheduler's SIGTERM): one ``interrupted:`` line and a clean stop, for every stage
and command. A stage process notes a signal that arrives while it still imports (:func:`_remember_early_signals`)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

from .errors import Interrupted

#: Set by scripts/offline.py for the `dvc exp run` it starts: a path that exists once the run was interrupted. A stage
#: started after that stops before doing anything, so DVC ends at a stage boundary without being signalled itself
#: (a signal to DVC between stages could cut its write of dvc.lock or the cache short). Under it, stages also stay
#: quiet when interrupted: the wrapper prints the one `interrupted:` line, after it has put the repository back.
STOP_FILE_ENV = "CARBENCH_STOP_FILE"
#: The signals that stop a stage or command cleanly: Ctrl-C, and what `kill` and cluster schedulers send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


#: A SIGINT/SIGTERM that reached a stage before its ``main`` started (see :func:`_remember_early_signals`).
early_signals: list[int] = []


def _remember_early_signals() -> None:
    """In a stage script, note SIGINT/SIGTERM from here on instead of acting on it: the heavy imports that follow
    (torch: seconds) would otherwise end in a KeyboardInterrupt traceback, or, for SIGTERM, no message at all.
    :mod:`carbench.core.cli` then stops before ``main`` with the one ``interrupted:`` line."""
    owner = os.getpid()

    def remember(signum, frame):  # noqa: ANN001 (signal's signature)
        if _forked_child(owner, signum):
            return
        early_signals.append(signum)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, remember)


#: True in a stage script's own process (stages/*.py import carbench.core.cli, and so this module, first); a library
#: import, or a test that runs a stage in its process, must not take over that process's signals.
STAGE_PROCESS = Path(sys.argv[0] if sys.argv else "").parent.name == "stages" and \
    threading.current_thread() is threading.main_thread()
if STAGE_PROCESS:
    _remember_early_signals()


def ignore_stop_signals() -> None:
    """The work is done (or stopped): a SIGINT/SIGTERM from now on must not turn the exit status into a kill. Python
    puts the default disposition back while it shuts down, so a signal then (a wrapper forwarding Ctrl-C just as
    the stage ends) would kill a stage that succeeded; an ignored signal stays ignored."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def stop_requested() -> bool:
    """True when the wrapper that started this stage was interrupted (see :data:`STOP_FILE_ENV`)."""
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and os.path.exists(path)
