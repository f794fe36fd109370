"""Stage timings for the benchmarks: when the first batch started, how fast the steady state ran.

Every stage's process appends one JSON line to ``$CARBENCH_STAGE_LOG`` when it ends (:func:`log_stage`, called by :mod:`carbench.core.cli`);
the library adds what only it knows through :func:`first_batch` and :func:`record`. Nothing is kept or
measured when the variable is unset, so these calls cost nothing in a normal run.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

_KIB_PER_MIB = 1024

#: When set, every stage appends one JSON line (stage, seconds, peak RSS, the fields below) to this file;
#: scripts/benchmark.py uses it to time each stage of a `dvc repro`.
STAGE_LOG_ENV = "CARBENCH_STAGE_LOG"

_fields: dict[str, Any] = {}


def enabled() -> bool:
    """True when this process logs its stage timings."""
    return bool(os.environ.get(STAGE_LOG_ENV))


def process_seconds() -> float:
    """Seconds since this process started (interpreter start-up and imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children so far: on a shared machine the
    work a stage did, where its wall time also counts the other processes'."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def first_batch() -> None:
    """Mark the start of the stage's first batch of model work (only the first call counts): everything
    before it (start-up, imports, reading data, building the model) is the stage's fixed cost."""
    if enabled() and "first_batch_s" not in _fields:
        _fields["first_batch_s"] = round(process_seconds(), 3)
        _fields["first_batch_at"] = round(time.time(), 3)
        _fields["first_batch_cpu_s"] = round(cpu_seconds(), 3)


def record(**fields: Any) -> None:
    """Add fields to this stage's log line (later calls overwrite earlier values of a key)."""
    if enabled():
        _fields.update(fields)


def fields() -> dict[str, Any]:
    """What :func:`first_batch` and :func:`record` collected (empty when logging is off)."""
    return dict(_fields)


def stage_name() -> str:
    """``train@cnn_basic``-style name of the running stage, from the script name and ``--name``."""
    name = Path(sys.argv[0]).stem
    if "--name" in sys.argv[:-1]:
        name += "@" + sys.argv[sys.argv.index("--name") + 1]
    return name


def log_stage(status: str) -> None:
    """Append this stage's wall time, peak resident memory, start and end (epoch seconds) and what the library
    recorded (:func:`first_batch`, :func:`record`: time to first batch, steady images/s) to $CARBENCH_STAGE_LOG, if set.

    The wall time counts from the process start, so interpreter start-up and imports are included.
    """
    path = os.environ.get(STAGE_LOG_ENV)
    if not path or os.environ.get("RANK", "0") != "0":   # under torchrun (base.gpus > 1) rank 0 logs the stage
        return
    seconds, end = process_seconds(), time.time()
    # ru_maxrss is in KiB on Linux: the peak resident set of this process.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KIB_PER_MIB
    record = {"stage": stage_name(), "seconds": round(seconds, 3), "cpu_s": round(cpu_seconds(), 3),
              "peak_rss_mib": round(peak_mib, 1), "status": status, "start": round(end - seconds, 3), "end": round(end, 3), **fields()}
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
