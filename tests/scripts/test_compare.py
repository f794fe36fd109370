"""scripts/compare.py: intervals and paired tests between experiments; its errors are one line."""
from __future__ import annotations

import numpy as np
import pandas as pd
from support.scripts import run_script


def test_compare_script_prints_intervals_and_the_paired_test(tmp_path):
    import subprocess
    import sys

    from support.params import ROOT

    for name, right in (("a", 18), ("b", 18), ("c", 5)):
        (tmp_path / name).mkdir()
        true = np.arange(20) % 4
        pred = np.where(np.arange(20) < right, true, (true + 1) % 4)
        pd.DataFrame({"image": [f"i{k}" for k in range(20)], "true": true, "predicted": pred,
                      "correct": (true == pred).astype(int)}).to_csv(tmp_path / name / "predictions.csv", index=False)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--eval", str(tmp_path),
                          "--bootstrap", "200"], capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert rows["a"].endswith("| best |") and rows["b"].endswith("| 1.0000 |")     # identical predictions: p = 1
    assert "0.9000 [" in rows["a"] and "e-" in rows["c"]


def _write_predictions(folder, images: int) -> None:
    folder.mkdir(parents=True)
    true = np.arange(images) % 4
    pd.DataFrame({"image": [f"i{k}" for k in range(images)], "true": true, "predicted": true,
                  "correct": 1}).to_csv(folder / "predictions.csv", index=False)


def test_compare_script_on_runs_of_two_datasets_is_one_error_line(tmp_path):
    _write_predictions(tmp_path / "a", 20)
    _write_predictions(tmp_path / "b", 30)
    result = run_script("compare.py", "--eval", str(tmp_path), "--bootstrap", "10")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: b vs a: the two experiments were not evaluated on the same test images (30 vs 20); "
        "a paired test needs the same split"]


def test_compare_script_names_a_missing_experiment(tmp_path):
    _write_predictions(tmp_path / "a", 20)
    result = run_script("compare.py", "--eval", str(tmp_path), "a", "nope")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: missing per-image predictions: {tmp_path / 'nope' / 'predictions.csv'}")
