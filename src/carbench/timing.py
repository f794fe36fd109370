"""Stage timings for the benchmarks: when the first batch started, how fast the steady state ran.

Every stage's process appends one JSON line to ``$CARBENCH_STAGE_LOG`` when it ends (:mod:`carbench.cli`);
the library adds what only it knows through :func:`first_batch` and :func:`record`. Nothing is kept or
measured when the variable is unset, so these calls cost nothing in a normal run.
"""
from __future__ import annotations

import os
import time
from typing import Any

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
