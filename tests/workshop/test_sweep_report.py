"""carbench.workshop.sweep_report: a sweep's runs read from `dvc exp show --json`, summarised as mean and std."""
from __future__ import annotations

import pytest

from carbench.workshop import sweep_report


def _exp_show(values):
    revs = [{"rev": f"r{i}", "name": f"fold{i}", "data": {
        "params": {"params.yaml": {"data": {"split": {"strategy": "kfold", "fold": i}, "base": {"seed": 0}}}},
        "metrics": {"metrics/headline/cnn_basic.json": {"data": {"top1": v, "f1_macro": v - 0.1, "loss": 1.0}},
                    "metrics/split.json": {"data": {"counts": {}}}}}} for i, v in enumerate(values)]
    return [{"rev": "workspace", "data": {}}, {"rev": "abc", "name": "main", "data": {},
                                               "experiments": [{"revs": [r]} for r in revs]}]


def test_sweep_summary_is_mean_and_std_over_the_runs():
    runs = sweep_report.select(sweep_report.runs_from_exp_show(_exp_show([0.5, 0.6, 0.7])), where={"split.strategy": "kfold"})
    (row,) = sweep_report.summarize(runs)
    assert row["experiment"] == "cnn_basic" and row["runs"] == 3
    assert row["top1_mean"] == pytest.approx(0.6) and row["top1_std"] == pytest.approx(0.1)
    text = sweep_report.to_markdown([row], runs)
    assert "0.6000 +/- 0.1000" in text and "split.fold: 0, 1, 2" in text
    assert sweep_report.select(runs, names=["fold1"])[0]["params"]["split.fold"] == 1
