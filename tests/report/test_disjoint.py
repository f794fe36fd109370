"""carbench.report.disjoint (through the aggregate stage): the summary of the class-disjoint protocol: leave-one-out
Recall@K / MAP@R with bootstrap intervals over the queries, and one line in place of every classification number."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from support.params import repo_params

from carbench.config import parse_params
from carbench.core.errors import UserError
from carbench.report import aggregate as A
from carbench.report import disjoint as D
from carbench.retrieval.loo import UNDEFINED_LINE

QUERIES = 40


@pytest.fixture()
def inputs(tmp_path):
    """Fake evaluate / train outputs under the disjoint protocol: experiment i finds the class of the first
    4 * (i + 1) queries at rank 1 (the others at rank 2), AP@R 1 or 1/2 alike."""
    params = parse_params(repo_params())
    ev, train = tmp_path / "metrics" / "eval", tmp_path / "metrics" / "train"
    for i, (name, exp) in enumerate(params.experiments.items()):
        hit = (np.arange(QUERIES) < 4 * (i + 1)).astype(float)
        scores = {"recall_at_1": hit, "recall_at_2": np.ones(QUERIES), "recall_at_4": np.ones(QUERIES),
                  "recall_at_8": np.ones(QUERIES), "ap_at_r": np.where(hit > 0, 1.0, 0.5)}
        (ev / name).mkdir(parents=True)
        pd.DataFrame({"image": [f"q{j}" for j in range(QUERIES)], "true": np.arange(QUERIES) % 5, **scores,
                      "nearest": 0}).to_csv(ev / name / "retrieval.csv", index=False)
        means = {k: float(v.mean()) for k, v in scores.items() if k != "ap_at_r"}
        (ev / f"{name}.json").write_text(json.dumps({
            "config": exp.config, "protocol": "disjoint", "classification": UNDEFINED_LINE, **means,
            "map_at_r": float(scores["ap_at_r"].mean()), "precision_at_1": means["recall_at_1"],
            "params_count": 10 + i, "size_mb": 1.0, "latency_ms": 2.0}))
        if exp.trained:       # the files of dvclive's layout aggregate reads (carbench.report.aggregate.VAL_CURVE)
            (train / name / A.VAL_CURVE).parent.mkdir(parents=True)
            (train / name / A.VAL_CURVE).write_text("step\ttop1\n0\t0.2\n1\t0.3\n")
            (train / name / "metrics.json").write_text(json.dumps({"best_val_top1": 0.3}))
    return params, ev, train, tmp_path


def test_summary_prints_the_undefined_line_and_retrieval_scores_with_intervals_never_a_top1(inputs):
    params, ev, train, root = inputs
    table = A.build_summary(params, ev, train, root / "metrics" / "knn", root / "summary", root / "plots")
    assert len(table) == len(params.experiments) and set(table["protocol"]) == {D.PROTOCOL_LABEL}
    assert not {"top1", "f1_macro", "top1_ci_low"} & set(table.columns)
    md = (root / "summary" / "summary.md").read_text()
    assert f"Classification: {UNDEFINED_LINE}." in md and "| top1 |" not in md and "top-1 [" not in md
    assert "| R@1 [95% CI] | R@2 [95% CI] | R@4 [95% CI] | R@8 [95% CI] | MAP@R [95% CI] | P@1 |" in md
    row = table.set_index("experiment").loc["knn_resnet50_k3"]
    assert row["recall_at_1_ci_low"] < row["recall_at_1"] < row["recall_at_1_ci_high"]
    assert row["map_at_r_ci_low"] < row["map_at_r"] < row["map_at_r_ci_high"]
    assert row["recall_at_2_ci_low"] == row["recall_at_2_ci_high"] == 1.0     # every query hit: no spread
    summary = json.loads((root / "summary" / "summary.json").read_text())
    last = list(params.experiments)[-1]                                      # the most hits at rank 1
    assert summary["protocol"] == "disjoint" and summary["best"]["experiment"] == last
    assert (root / "plots" / "recall1_map.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluations_of_two_protocols_are_refused(inputs):
    params, ev, train, root = inputs
    name = next(iter(params.experiments))
    (ev / f"{name}.json").write_text(json.dumps({"top1": 0.5}))
    with pytest.raises(UserError, match="follow different protocols"):
        A.build_summary(params, ev, train, root / "metrics" / "knn", root / "summary", root / "plots")


def test_each_row_is_tested_against_the_best_on_the_same_queries(inputs):
    from scipy.stats import binomtest

    params, ev, train, root = inputs
    table = A.build_summary(params, ev, train, root / "metrics" / "knn", root / "summary", root / "plots")
    first, best = list(params.experiments)[0], list(params.experiments)[-1]
    rows = table.set_index("experiment")
    # the first finds 4 of the 40 queries at rank 1, the best all 40: 36 discordant queries, all the best's
    assert rows.loc[first, "p_r1_vs_best"] == pytest.approx(binomtest(0, 36, 0.5).pvalue)
    assert rows.loc[first, "p_map_vs_best"] < 1e-6 and pd.isna(rows.loc[best, "p_r1_vs_best"])
    md = (root / "summary" / "summary.md").read_text()
    assert f"## Paired tests against the best row ({best})" in md
    assert f"| {first} | 0 / 36 | {binomtest(0, 36, 0.5).pvalue:.3g} | -0.4500 | 0.0 |" in md
