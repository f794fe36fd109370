"""carbench.report.aggregate: one row per experiment, declared columns, collected (never recomputed) values."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.params import ROOT, repo_params

from carbench.config import parse_params
from carbench.core.errors import UserError
from carbench.report import aggregate as A

EPOCHS = 3


@pytest.fixture()
def inputs(tmp_path):
    """Fake outputs of evaluate / train (real dvclive layout) / knn for the nine experiments in params.yaml."""
    params = parse_params(repo_params())
    ev, train, knn = tmp_path / "metrics" / "eval", tmp_path / "metrics" / "train", tmp_path / "metrics" / "knn"
    ev.mkdir(parents=True)
    knn.mkdir(parents=True)
    for i, (name, exp) in enumerate(params.experiments.items()):
        metrics = {col: 0.01 * (i + 1) + 0.001 * j for j, col in enumerate(A.EVAL_COLUMNS)}
        (ev / f"{name}.json").write_text(json.dumps({**metrics, "config": exp.config, "kind": "x"}))
        write_predictions(ev / name, n_right=i + 1)
        if exp.trained:
            write_dvclive(train / name, [0.1 * (i + 1) * (e + 1) / EPOCHS for e in range(EPOCHS)])
        else:
            ks = {f"recall_at_{k}": 0.5 for k in exp.knn.retrieval_ks}
            (knn / f"{name}.json").write_text(json.dumps({"k": exp.knn.k, "precision_at_k": 0.4, "map_at_r": 0.3,
                                                          "query_ms_per_image": 1.5, "top1": 0.9, **ks}))
    return params, ev, train, knn


TEST_IMAGES = 20


def write_predictions(tables_dir: Path, n_right: int) -> None:
    """predictions.csv as evaluate writes it: the first ``n_right`` of TEST_IMAGES test images right."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    true = np.arange(TEST_IMAGES) % 4
    pred = np.where(np.arange(TEST_IMAGES) < n_right, true, (true + 1) % 4)
    pd.DataFrame({"image": [f"cars_test/{i:05d}.jpg" for i in range(TEST_IMAGES)], "true": true,
                  "predicted": pred, "correct": (true == pred).astype(int)}).to_csv(tables_dir / "predictions.csv",
                                                                                    index=False)


def write_dvclive(live_dir: Path, val_top1: list[float]) -> None:
    """Train metrics the way the trainer logs them (dvclive 3.x), so the TSV path is the real one."""
    from dvclive import Live

    with Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        for value in val_top1:
            live.log_metric("val/top1", value)
            live.next_step()
    summary = json.loads((live_dir / "metrics.json").read_text())
    summary["best_val_top1"] = max(val_top1)
    (live_dir / "metrics.json").write_text(json.dumps(summary))


def test_one_row_per_experiment_with_declared_columns(inputs):
    params, ev, train, knn = inputs
    table = A.build_table(params, ev, train, knn)
    assert list(table.columns) == A.summary_columns(params)
    assert sorted(table["experiment"]) == sorted(params.experiments) and len(table) == len(params.experiments)
    configs = table["config"].tolist()
    assert configs == sorted(configs, key=["transfer", "scratch", "retrieval"].index)     # grouped
    row = table.set_index("experiment").loc["cnn_basic"]
    i = list(params.experiments).index("cnn_basic")
    assert row["top1"] == pytest.approx(0.01 * (i + 1))                                 # copied from its file
    assert row["best_val_top1"] == pytest.approx(0.1 * (i + 1)) and np.isnan(row["map_at_r"])
    knn_row = table.set_index("experiment").loc["knn_resnet50_k3"]
    assert knn_row["map_at_r"] == 0.3 and knn_row["recall_at_8"] == 0.5 and np.isnan(knn_row["best_val_top1"])


def test_summary_files_and_plots(inputs, tmp_path):
    params, ev, train, knn = inputs
    A.build_summary(params, ev, train, knn, tmp_path / "summary", tmp_path / "plots")
    csv_table = pd.read_csv(tmp_path / "summary" / "summary.csv")
    assert list(csv_table.columns) == A.summary_columns(params) and len(csv_table) == len(params.experiments)
    md = (tmp_path / "summary" / "summary.md").read_text().splitlines()
    # the metrics, uncertainty and published-anchors tables: header + one row per experiment each
    assert sum(line.startswith("| ") for line in md) == 3 * (len(params.experiments) + 1)
    summary = json.loads((tmp_path / "summary" / "summary.json").read_text())
    last = list(params.experiments)[-1]                                                 # highest fake top1
    assert summary["best"]["experiment"] == last and A.read_best(tmp_path / "summary") == last
    assert set(summary["experiments"]) == set(params.experiments)
    assert summary["experiments"]["cnn_basic"]["map_at_r"] is None                      # NaN -> null
    for png in ("top1_f1.png", "val_top1.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_val_curve_is_read_from_dvclive_tsv(inputs):
    params, _, train, _ = inputs
    curve = A.read_val_curve(train, "cnn_basic")
    assert curve["step"].tolist() == list(range(EPOCHS)) and len(curve["top1"]) == EPOCHS


def test_missing_inputs_are_named(inputs, tmp_path):
    params, ev, train, knn = inputs
    (ev / "cnn_basic.json").unlink()
    with pytest.raises(UserError, match=r"metrics/eval/cnn_basic\.json"):
        A.build_table(params, ev, train, knn)
    with pytest.raises(UserError, match="top1.tsv"):
        A.read_val_curve(train, "missing_experiment")
    assert A.read_best(tmp_path / "nowhere") is None


def test_aggregate_stage_script(inputs, tmp_path, monkeypatch, params_path):
    params, ev, train, knn = inputs
    monkeypatch.setattr(sys, "argv", ["aggregate.py", "--params", str(params_path), "--eval", str(ev),
                                      "--train-live", str(train), "--knn", str(knn), "--out",
                                      str(tmp_path / "out"), "--plots", str(tmp_path / "pl")])
    runpy.run_path(str(ROOT / "stages" / "aggregate.py"), run_name="__main__")
    assert len(pd.read_csv(tmp_path / "out" / "summary.csv")) == len(params.experiments)


def test_summary_has_intervals_and_paired_test_against_the_best(inputs, tmp_path):
    params, ev, train, knn = inputs
    A.build_summary(params, ev, train, knn, tmp_path / "summary", tmp_path / "plots")
    table = pd.read_csv(tmp_path / "summary" / "summary.csv").set_index("experiment")
    best = list(params.experiments)[-1]                       # most images right (and highest fake top1)
    assert np.isnan(table.loc[best, "p_vs_best"])
    others = table.drop(index=best)
    assert (others["p_vs_best"].between(0, 1)).all()
    assert (table["top1_ci_low"] <= table["top1_ci_high"]).all()
    # cnn_basic's predictions are right on 4 of 20 images: the interval brackets 0.2
    row = table.loc["cnn_basic"]
    assert row["top1_ci_low"] < 0.2 < row["top1_ci_high"]
    md = (tmp_path / "summary" / "summary.md").read_text()
    assert "McNemar p vs best" in md and "| best |" in md


def test_aggregate_knob_is_its_own_section(inputs, tmp_path):
    params, ev, train, knn = inputs
    no_ci = parse_params(repo_params({"aggregate": {"bootstrap": 0}}))
    table = A.build_table(no_ci, ev, train, knn)
    assert table["top1_ci_low"].isna().all() and table["p_vs_best"].notna().sum() == len(table) - 1


def test_predictions_of_other_test_images_cannot_be_paired(inputs):
    params, ev, train, knn = inputs
    frame = pd.read_csv(ev / "cnn_basic" / "predictions.csv")
    frame.iloc[:-1].to_csv(ev / "cnn_basic" / "predictions.csv", index=False)
    with pytest.raises(UserError, match="same test images"):
        A.build_table(params, ev, train, knn)


def test_aggregate_stage_loads_no_torch(inputs, tmp_path, params_path):
    """aggregate's bootstrap is numpy: the stage process must not pay torch's seconds of import."""
    import subprocess

    params, ev, train, knn = inputs
    argv = ["aggregate.py", "--params", str(params_path), "--eval", str(ev), "--train-live", str(train),
            "--knn", str(knn), "--out", str(tmp_path / "out"), "--plots", str(tmp_path / "pl")]
    code = (f"import sys, runpy; sys.argv = {argv!r}\n"
            f"runpy.run_path({str(ROOT / 'stages' / 'aggregate.py')!r}, run_name='__main__')\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "summary.csv").exists()
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_classical_classifier_gets_its_own_row_with_intervals(inputs, tmp_path):
    params, ev, train, knn = inputs
    scored = json.loads((knn / "knn_resnet50_k3.json").read_text())
    (knn / "knn_resnet50_k3.json").write_text(json.dumps({**scored, "classical": "random_forest"}))
    with pytest.raises(UserError, match="classical_predictions.csv"):
        A.build_table(params, ev, train, knn)
    evaluated = pd.read_csv(ev / "knn_resnet50_k3" / "predictions.csv")
    true = evaluated["true"].to_numpy()
    pred = np.where(np.arange(TEST_IMAGES) < 15, true, (true + 1) % 4)        # 15 of 20 right
    (knn / "knn_resnet50_k3").mkdir()
    pd.DataFrame({"image": range(TEST_IMAGES), "true": true, "predicted": pred,
                  "correct": (true == pred).astype(int)}).to_csv(knn / "knn_resnet50_k3" / A.CLASSICAL_CSV,
                                                                 index=False)
    table = A.build_table(params, ev, train, knn)
    names = table["experiment"].tolist()
    assert names[names.index("knn_resnet50_k3") + 1] == "knn_resnet50_k3+random_forest"
    row = table.set_index("experiment").loc["knn_resnet50_k3+random_forest"]
    assert row["config"] == "retrieval" and row["top1"] == pytest.approx(0.75)
    assert row["top1_ci_low"] < 0.75 < row["top1_ci_high"]
    assert A.best_experiment(table)["experiment"] == "knn_resnet50_k3+random_forest"     # paired with the others
    assert not np.isnan(table.set_index("experiment").loc["knn_resnet50_k3", "p_vs_best"])
    assert len(table) == len(params.experiments) + 1
    pd.DataFrame({"image": range(3), "true": [0, 1, 2], "predicted": [0, 1, 2], "correct": 1}).to_csv(
        knn / "knn_resnet50_k3" / A.CLASSICAL_CSV, index=False)
    with pytest.raises(UserError, match="not the test images"):
        A.build_table(params, ev, train, knn)
