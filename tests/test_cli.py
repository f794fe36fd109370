"""carbench.cli: user errors are one line and exit 1; the stage log records time and memory."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


def _run_script(tmp_path, body: str, env_extra: dict | None = None, argv: tuple = ()) -> subprocess.CompletedProcess:
    script = tmp_path / "stage_x.py"
    script.write_text(textwrap.dedent(body))
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env)


def test_user_error_is_one_line_and_exit_1(tmp_path):
    result = _run_script(tmp_path, """
        from carbench.cli import run
        from carbench.errors import DataError
        def main():
            raise DataError("cars_train/00001.jpg is truncated")
        run(main)
    """)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: cars_train/00001.jpg is truncated"


def test_stage_log_records_name_seconds_and_memory(tmp_path):
    log = tmp_path / "stages.jsonl"
    result = _run_script(tmp_path, """
        from carbench.cli import run
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
    result = _run_script(tmp_path, """
        import time
        from carbench import timing
        from carbench.cli import run
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
    from carbench import timing

    monkeypatch.delenv(timing.STAGE_LOG_ENV, raising=False)
    timing.first_batch()
    timing.record(x=1)
    assert timing.fields() == {}


def test_cuda_requested_without_a_gpu_is_one_error_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a GPU: base.device cuda is valid here")
    result = _run_script(tmp_path, """
        from carbench.cli import run
        from carbench.runtime import select_device
        run(lambda: select_device("cuda"))
    """)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: base.device is 'cuda' but torch sees no CUDA device; set base.device to auto or cpu"


def test_closed_stdout_pipe_exits_141_without_a_traceback(tmp_path):
    """`command | head -1`: the reader is gone before the output is flushed."""
    script = tmp_path / "cmd.py"
    script.write_text(textwrap.dedent("""
        from carbench.cli import run_command
        def main():
            for i in range(5):
                print(f"{i}. line")
            return 0
        run_command(main)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_command_user_error_is_one_line_and_warnings_lose_their_source_line(tmp_path):
    result = _run_script(tmp_path, """
        import warnings
        from carbench.cli import run_command
        from carbench.errors import DataWarning, UserError
        def main():
            warnings.warn("skipped 2 bad image(s); see metrics", DataWarning)
            raise UserError("a vs b: not evaluated on the same test images")
        run_command(main)
    """)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["warning: skipped 2 bad image(s); see metrics",
                                          "error: a vs b: not evaluated on the same test images"]


def test_command_exit_status_is_mains():
    from carbench.cli import run_command

    run_command(lambda: 0)                    # success: no SystemExit, as a console entry point expects
    with pytest.raises(SystemExit) as info:
        run_command(lambda: 3)
    assert info.value.code == 3


def test_tool_error_is_the_error_line_of_dvc():
    from carbench.cli import tool_error

    stderr = "ERROR: unknown Git revision 'nope'\n\nHaving any troubles? Hit us up at https://dvc.org/support\n"
    assert tool_error(stderr) == "ERROR: unknown Git revision 'nope'"
    assert tool_error("something\nbroke\n") == "broke" and tool_error("") == "(no message)"


def test_a_stage_run_inside_another_process_leaves_its_signal_dispositions_alone():
    """Only a stage's own process ignores SIGINT/SIGTERM once its work is done: a process that runs a stage's main
    in-process (a test, a notebook) keeps its handlers, so the processes it forks later (a multiprocessing pool)
    can still be terminated."""
    import signal

    from carbench import cli

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cli.run(lambda: None)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_params_error_under_dvc_says_how_to_put_back_a_params_yaml_that_differs_from_the_commit(tmp_path):
    """`dvc exp run -S train.lr=-0.1` writes the value into params.yaml before the stage refuses it: the error line
    says so when params.yaml differs from the last commit, and nothing more where that is not the case."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("train:\n  lr: 0.01\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "params"]):
        subprocess.run([*git, *args], cwd=repo, check=True)
    body = """
        from carbench.cli import run
        from carbench.config import ConfigError
        def main():
            raise ConfigError("train.lr must be > 0.0, got -0.1")
        run(main)
    """
    under_dvc = {"DVC_ROOT": str(repo), "DVC_STAGE": "resolve"}
    hint = "params.yaml differs from the last commit"

    def error_line(env: dict) -> str:
        result = _run_script(tmp_path, body, env)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
        return result.stderr.strip()

    assert error_line(under_dvc) == "error: train.lr must be > 0.0, got -0.1"          # params.yaml as committed
    (repo / "params.yaml").write_text("train:\n  lr: -0.1\n")                             # what -S wrote
    line = error_line(under_dvc)
    assert line.startswith("error: train.lr must be > 0.0, got -0.1; " + hint)
    assert line.endswith("`git checkout params.yaml` puts the committed file back")
    assert hint not in error_line({})                                                     # not under DVC
    assert hint not in error_line({**under_dvc, "CARBENCH_STOP_FILE": str(tmp_path / "stop")})   # our wrappers
    queued = repo / ".dvc" / "tmp" / "exps" / "tmp1"                                      # a queued run's copy,
    subprocess.run(["git", "clone", "-q", str(repo), str(queued)], check=True)           # with -S applied there
    (queued / "params.yaml").write_text("train:\n  lr: -0.1\n")
    assert hint not in error_line({"DVC_ROOT": str(queued), "DVC_STAGE": "resolve"})
