"""Entry-point plumbing for the thin scripts in stages/ and the user commands (carbench-predict, scripts/): the
argument parser every stage starts from, and the guarded run that turns a user error into one ``error:`` line, a
stop signal into one ``interrupted:`` line (:mod:`.signals`) and logs the stage (:func:`.timing.log_stage`)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Optional

from . import signals, timing
from .params_hint import params_hint
from .errors import ConfigError, Interrupted, UserError, one_line_warnings

#: Exit status when the reader of stdout went away (``... | head -1``): what a shell reports for a command
#: killed by SIGPIPE, so pipelines treat it like any other program cut short by the reader.
BROKEN_PIPE_STATUS = 128 + signal.SIGPIPE


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--params`` option every stage takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python flushes it again at exit, which would raise once more on the closed pipe
    (the recipe of the Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _guarded(main: Callable[[], Optional[int]], log: Callable[[str], None], what: str,
             hint: Callable[[], str] = lambda: "") -> int:
    """Run ``main``; a user error becomes one 'error: ...' line (a params error followed by ``hint()``),
    SIGINT/SIGTERM one 'interrupted: ...' line naming ``what``. Returns the exit status."""
    try:
        with one_line_warnings(), signals.stop_on_signals():
            if signals.early_signals or signals.stop_requested():
                raise Interrupted(signals.early_signals[0] if signals.early_signals else signal.SIGINT)
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
        if not os.environ.get(signals.STOP_FILE_ENV):
            print(signals.interrupted_line(what, signum), file=sys.stderr)
        return signals.interrupted_status(signum)
    log("ok")
    return int(status or 0)


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a user error becomes one 'error: ...' line and exit status 1."""
    status = _guarded(main, timing.log_stage, "stage " + timing.stage_name(), params_hint)
    if signals.STAGE_PROCESS:
        # the stage process exits right after: DVC must see the status it finished with. Only there: an ignored
        # SIGTERM would outlive a stage run inside another process and be inherited by every process it forks
        # later (a multiprocessing pool could then never be terminated).
        signals.ignore_stop_signals()
    if status:
        sys.exit(status)


def run_command(main: Callable[[], Optional[int]]) -> None:
    """Run a user command's ``main`` (carbench-predict, scripts/*.py) like a stage, without the stage log; exit
    with its status when not 0: user errors are one 'error: ...' line, a closed stdout pipe ends quietly
    (:data:`BROKEN_PIPE_STATUS`)."""
    status = _guarded(main, lambda status: None, Path(sys.argv[0]).name)
    if status:
        sys.exit(status)
