"""carbench.core.cli: user errors are one line and exit 1, a closed pipe ends quietly, a stage run in-process
keeps its caller's signal handlers."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from support.scripts import run_stage_script


def test_user_error_is_one_line_and_exit_1(tmp_path):
    result = run_stage_script(tmp_path, """
        from carbench.core.cli import run
        from carbench.core.errors import DataError
        def main():
            raise DataError("cars_train/00001.jpg is truncated")
        run(main)
    """)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: cars_train/00001.jpg is truncated"


def test_cuda_requested_without_a_gpu_is_one_error_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a GPU: base.device cuda is valid here")
    result = run_stage_script(tmp_path, """
        from carbench.core.cli import run
        from carbench.core.runtime import select_device
        run(lambda: select_device("cuda"))
    """)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: base.device is 'cuda' but torch sees no CUDA device; set base.device to auto or cpu"


def test_closed_stdout_pipe_exits_141_without_a_traceback(tmp_path):
    """`command | head -1`: the reader is gone before the output is flushed."""
    script = tmp_path / "cmd.py"
    script.write_text(textwrap.dedent("""
        from carbench.core.cli import run_command
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
    result = run_stage_script(tmp_path, """
        import warnings
        from carbench.core.cli import run_command
        from carbench.core.errors import DataWarning, UserError
        def main():
            warnings.warn("skipped 2 bad image(s); see metrics", DataWarning)
            raise UserError("a vs b: not evaluated on the same test images")
        run_command(main)
    """)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["warning: skipped 2 bad image(s); see metrics",
                                          "error: a vs b: not evaluated on the same test images"]


def test_command_exit_status_is_mains():
    from carbench.core.cli import run_command

    run_command(lambda: 0)                    # success: no SystemExit, as a console entry point expects
    with pytest.raises(SystemExit) as info:
        run_command(lambda: 3)
    assert info.value.code == 3


def test_a_stage_run_inside_another_process_leaves_its_signal_dispositions_alone():
    """Only a stage's own process ignores SIGINT/SIGTERM once its work is done: a process that runs a stage's main
    in-process (a test, a notebook) keeps its handlers, so the processes it forks later (a multiprocessing pool)
    can still be terminated."""
    import signal

    from carbench.core import cli

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cli.run(lambda: None)
    assert {sig: signal.getsignal(sig) for sig in before} == before


