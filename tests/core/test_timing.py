"""carbench.core.timing: the stage log records name, time and memory, and what the library adds; nothing when off."""
from __future__ import annotations

import json

import pytest
from support.scripts import run_stage_script


def test_stage_log_records_name_seconds_and_memory(tmp_path):
    log = tmp_path / "stages.jsonl"
    result = run_stage_script(tmp_path, """
        from carbench.core.cli import run
        run(lambda: None)
    """, {"CARBENCH_STAGE_LOG": str(log)}, ("--name", "cnn_basic"))
    assert result.returncode == 0, result.stderr
    record = json.loads(log.read_text())
    assert record["stage"] == "stage_x@cnn_basic" and record["status"] == "ok"
    assert record["seconds"] > 0 and record["peak_rss_mib"] > 1
    assert record["end"] - record["start"] == pytest.approx(record["seconds"], abs=0.01)
    assert "first_batch_s" not in record   # this stage ran no batch


def test_stage_log_adds_first_batch_and_recorded_fields(tmp_path):
    log = tmp_path / "stages.jsonl"
    result = run_stage_script(tmp_path, """
        import time
        from carbench.core import timing
        from carbench.core.cli import run
        def main():
            time.sleep(0.2)
            timing.first_batch()
            timing.first_batch()   # only the first call counts
            timing.record(steady_images_per_second=123.0)
        run(main)
    """, {"CARBENCH_STAGE_LOG": str(log)})
    assert result.returncode == 0, result.stderr
    record = json.loads(log.read_text())
    assert 0.2 <= record["first_batch_s"] <= record["seconds"]
    assert record["start"] + 0.2 <= record["first_batch_at"] <= record["end"]
    assert record["steady_images_per_second"] == 123.0


def test_timing_keeps_nothing_when_the_log_is_off(monkeypatch):
    from carbench.core import timing

    monkeypatch.delenv(timing.STAGE_LOG_ENV, raising=False)
    timing.first_batch()
    timing.record(x=1)
    assert timing.fields() == {}


