"""scripts/sweep.py: its errors (a bad --where, a failing dvc) are one line."""
from __future__ import annotations

from support.scripts import fake_dvc, run_script


def test_sweep_script_errors_are_one_line(tmp_path):
    result = run_script("sweep.py", "--where", "split.strategy")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: --where 'split.strategy': expected KEY=VALUE, "
                                          "e.g. --where split.strategy=kfold"]
    result = run_script("sweep.py", env=fake_dvc(tmp_path, stderr="ERROR: unknown Git revision 'nope'\n\nHaving any troubles? "
                                                            "Hit us up at https://dvc.org/support\n", code=255))
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: dvc exp show failed: ERROR: unknown Git revision 'nope'"]
