"""Shared entry-point plumbing for the thin scripts in stages/."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable

from . import timing
from .config import ConfigError
from .errors import UserError

STAGE_LOG_ENV = timing.STAGE_LOG_ENV
_KIB_PER_MIB = 1024


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


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a user error becomes one 'error: ...' line and exit status 1."""
    try:
        main()
    except (ConfigError, UserError) as exc:
        _log_stage("error")
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        _log_stage("interrupted")
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    _log_stage("ok")
