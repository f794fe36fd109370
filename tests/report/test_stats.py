"""carbench.report.stats: bootstrap confidence intervals, McNemar's paired test and macro-F1 against references."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from carbench.report import stats


def test_constant_predictor_has_a_zero_width_interval():
    labels = np.arange(50) % 5
    for preds in (labels, (labels + 1) % 5):           # always right, always wrong
        ci = stats.bootstrap_ci(labels, preds, samples=200, confidence=0.95, seed=0)
        assert ci["top1"].low == ci["top1"].high
    always_right = stats.bootstrap_ci(labels, labels, 200, 0.95, 0)
    assert always_right["top1"].low == 1.0 and always_right["f1_macro"].low == pytest.approx(1.0)


def test_identical_predictions_give_p_one_and_a_lopsided_split_a_small_p():
    rng = np.random.default_rng(0)
    correct = rng.random(100) < 0.7
    assert stats.mcnemar(correct, correct) == 1.0
    a = np.ones(40, bool)
    b = a.copy()
    b[:12] = False                                      # 12 discordant pairs, all for a
    assert stats.mcnemar(a, b) == pytest.approx(2 * 0.5 ** 12)


def test_interval_brackets_the_estimate_is_seeded_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    def ci(n, seed=0):
        labels = rng.integers(0, 10, n)
        preds = np.where(rng.random(n) < 0.6, labels, (labels + 1) % 10)
        return stats.bootstrap_ci(labels, preds, 500, 0.95, seed), labels, preds
    small, labels, preds = ci(100)
    assert small["top1"].low <= (labels == preds).mean() <= small["top1"].high
    assert stats.bootstrap_ci(labels, preds, 500, 0.95, 0) == small        # same seed, same interval
    big, _, _ = ci(4000)
    assert big["top1"].high - big["top1"].low < (small["top1"].high - small["top1"].low) / 3


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    labels, preds = rng.integers(0, 7, 300), rng.integers(0, 9, 300)
    assert stats.macro_f1(labels, preds) == pytest.approx(f1_score(labels, preds, average="macro", zero_division=0))


def test_bootstrap_mean_ci_brackets_each_mean_leaves_nan_out_and_is_seeded():
    from carbench.report.stats import bootstrap_mean_ci

    frame = pd.DataFrame({"hit": [1.0] * 30 + [0.0] * 10, "ap": [0.5, np.nan] * 20, "all": [1.0] * 40})
    ci = bootstrap_mean_ci(frame, 500, 0.95, seed=3)
    assert ci["hit"].low < 0.75 < ci["hit"].high and ci["hit"].high - ci["hit"].low < 0.4
    assert ci["ap"].low == ci["ap"].high == 0.5 and ci["all"].low == ci["all"].high == 1.0
    assert bootstrap_mean_ci(frame, 500, 0.95, seed=3) == ci
    scores = pd.DataFrame({"x": np.random.default_rng(0).random(50)})
    assert bootstrap_mean_ci(scores, 500, 0.95, seed=3) != bootstrap_mean_ci(scores, 500, 0.95, seed=4)


def test_paired_retrieval_aligns_on_the_image_and_tests_both_scores():
    from scipy.stats import binomtest, wilcoxon

    rng = np.random.default_rng(0)
    n = 50
    a = pd.DataFrame({"image": [f"q{i}" for i in range(n)], "recall_at_1": (rng.random(n) < 0.7).astype(float),
                      "ap_at_r": rng.random(n)})
    b = a.assign(recall_at_1=(rng.random(n) < 0.4).astype(float), ap_at_r=rng.random(n) * 0.6)
    b.loc[3, "ap_at_r"] = np.nan                                  # a photo alone in its class: left out
    shuffled = b.sample(frac=1.0, random_state=1)                 # another row order: aligned on the image
    result = stats.paired_retrieval(a, shuffled, "a vs b")
    hits_a, hits_b = a["recall_at_1"] > 0, b["recall_at_1"] > 0
    assert (result.only_a, result.only_b) == ((hits_a & ~hits_b).sum(), (~hits_a & hits_b).sum())
    assert result.p_recall_at_1 == pytest.approx(binomtest(result.only_a, result.only_a + result.only_b).pvalue)
    keep = b["ap_at_r"].notna()
    want = wilcoxon(a["ap_at_r"][keep], b["ap_at_r"][keep])
    assert result.ap_pairs == n - 1 and result.p_map_at_r == pytest.approx(want.pvalue)
    assert result.wilcoxon_statistic == pytest.approx(want.statistic)
    assert result.ap_mean_diff == pytest.approx((a["ap_at_r"] - b["ap_at_r"])[keep].mean())
    same = stats.paired_retrieval(a, a, "a vs a")
    assert same.p_recall_at_1 == 1.0 and same.p_map_at_r == 1.0
    with pytest.raises(stats.UserError, match="same query photos"):
        stats.paired_retrieval(a, b.iloc[1:], "a vs b")
