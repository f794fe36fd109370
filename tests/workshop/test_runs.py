"""carbench.workshop.runs and scripts/runs.py: runs side by side within 120 columns, from `dvc exp show --json`."""
from __future__ import annotations

import json

from support.scripts import fake_dvc, run_script

from carbench.workshop import runs as R
from carbench.workshop import sweep_report

NINE = ["tl_resnet50_frozen", "tl_resnet50_finetune", "tl_densenet121_progressive", "cnn_basic", "cnn_bn_dropout",
        "cnn_residual", "knn_resnet50_k3", "knn_resnet50_k10", "knn_densenet121_cosine"]


def exp_show(lrs: dict[str, float]) -> list:
    """What `dvc exp show --json` prints for experiments of one commit that differ in train.lr (newest first)."""
    revs = []
    for i, (name, lr) in enumerate(lrs.items()):
        metrics = {f"metrics/headline/{n}.json": {"data": {"top1": round(0.5 + j / 100 + lr, 4), "f1_macro": 0.4}}
                   for j, n in enumerate(NINE)}
        params = {"params.yaml": {"data": {"train": {"lr": lr, "epochs": 8}, "crop": {"size": 64}}}}
        revs.append({"rev": f"{i:040d}", "name": name, "data": {"params": params, "metrics": metrics}})
    return [{"rev": "workspace", "data": {}},
            {"rev": "a" * 40, "name": "main", "data": {}, "experiments": [{"revs": [r]} for r in reversed(revs)]}]


def test_table_has_a_column_per_run_the_varied_params_and_nine_headline_rows():
    runs = list(reversed(sweep_report.runs_from_exp_show(exp_show({"base": 0.01, "lr3e-4": 0.0003}))))
    text = R.table(runs)
    lines = text.splitlines()
    assert lines[0].split() == ["run", "base", "lr3e-4"]
    assert lines[1].split() == ["train.lr", "0.0100", "0.0003"]        # the one param that differs
    assert not any(line.startswith(("train.epochs", "crop.size")) for line in lines)   # same in both: left out
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert list(rows) == NINE                                         # params.yaml's order
    assert rows["cnn_basic"] == ["0.5400", "0.5303"]
    assert R.fits(text)


def test_table_of_six_runs_of_the_nine_experiments_fits_120_columns():
    runs = sweep_report.runs_from_exp_show(exp_show({f"lr{i}": 0.001 * (i + 1) for i in range(6)}))
    text = R.table(runs)
    assert R.fits(text), text
    assert not R.fits("x" * 121)


def test_other_metric_and_missing_values():
    runs = sweep_report.runs_from_exp_show(exp_show({"a": 0.01}))
    del runs[0]["metrics"]["metrics/headline/cnn_basic.json"]
    rows = dict(R.rows(runs, "f1_macro"))
    assert rows["  cnn_residual"] == ["0.4000"]
    assert "  cnn_basic" not in rows
    runs.append({**runs[0], "name": "b", "metrics": {}})
    rows = dict(R.rows(runs, "top1"))
    assert rows["  cnn_residual"][1] == R.MISSING


def test_script_prints_the_runs_named_in_order_and_errors_in_one_line(tmp_path):
    env = fake_dvc(tmp_path, json.dumps(exp_show({"base": 0.01, "lr3e-4": 0.0003})))
    done = run_script("runs.py", "lr3e-4", "base", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == ["run", "lr3e-4", "base"]
    done = run_script("runs.py", env=env)                                 # default: oldest first
    assert done.stdout.splitlines()[0].split() == ["run", "base", "lr3e-4"]
    done = run_script("runs.py", "nope", env=env)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: no experiment named 'nope' among those of HEAD (base, lr3e-4); "
                                        "`dvc exp list` names them"]


def test_script_failing_dvc_is_one_line(tmp_path):
    done = run_script("runs.py", env=fake_dvc(tmp_path, stderr="ERROR: unknown Git revision\n", code=255))
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: dvc exp show failed: ERROR: unknown Git revision"]
