"""Uncertainty of the test metrics: seeded bootstrap confidence intervals and paired tests (pure NumPy/SciPy).

Everything works on per-test-image predictions (``metrics/eval/<name>/predictions.csv``, written by evaluate):

- :func:`bootstrap_ci`: percentile bootstrap over test images (resample the N images with replacement,
  ``samples`` times, from ``numpy.random.default_rng(seed)``) of top-1 and macro-F1. Macro-F1 is
  scikit-learn's (classes present in the true or predicted labels of the resample; F1 = 0 when undefined),
  computed from weighted class counts, so 1,000 resamples of 8,041 images take well under a second.
  A predictor that is right on every image (or wrong on every image) gets an interval of zero width.
- :func:`mcnemar`: exact McNemar test of two experiments on the same test images: of the images where
  exactly one of them is right (``b`` only A right, ``c`` only B right), is the split compatible with 50/50?
  Two-sided exact binomial p-value (``scipy.stats.binomtest``); ``p = 1`` when they never disagree
  (identical predictions give p = 1).
- :func:`bootstrap_mean_ci`: the same percentile bootstrap for means of per-query scores (the class-disjoint
  protocol's leave-one-out Recall@K and MAP@R, ``metrics/eval/<name>/retrieval.csv``); NaN scores (AP@R of a
  photo alone in its class) are left out of each resample's mean.
- :func:`paired_retrieval`: two experiments' leave-one-out scores on the same query photos: McNemar on the
  Recall@1 hits and the Wilcoxon signed-rank test on the per-query AP@R (queries with an AP@R in both).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..core.errors import UserError

PREDICTIONS_CSV = "predictions.csv"
PREDICTION_COLUMNS = ("image", "true", "predicted", "correct")
#: Per query image of the class-disjoint protocol: ``image``, ``true``, ``recall_at_<K>`` (0/1), ``ap_at_r``,
#: ``nearest`` (written by evaluate, carbench.retrieval.loo).
RETRIEVAL_CSV = "retrieval.csv"


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def _macro_f1_from_counts(tp: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray) -> np.ndarray:
    """Macro-F1 per row of class counts ``(B, C)``: mean over classes with n_true + n_pred > 0."""
    denom = n_true + n_pred
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=float), where=present)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """scikit-learn's ``f1_score(average="macro", zero_division=0)``, from counts."""
    c = int(max(labels.max(initial=-1), preds.max(initial=-1))) + 1
    hit = labels == preds
    tp = np.bincount(labels[hit], minlength=c)[None].astype(float)
    return float(_macro_f1_from_counts(tp, np.bincount(labels, minlength=c)[None].astype(float),
                                       np.bincount(preds, minlength=c)[None].astype(float))[0])


def bootstrap_ci(labels: Sequence[int], preds: Sequence[int], samples: int, confidence: float,
                 seed: int) -> dict[str, Interval]:
    """Percentile bootstrap intervals ``{"top1": ..., "f1_macro": ...}`` over the test images."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    n = len(labels)
    if n == 0:
        nan = Interval(float("nan"), float("nan"))
        return {"top1": nan, "f1_macro": nan}
    c = int(max(labels.max(), preds.max())) + 1
    hit = labels == preds
    rng = np.random.default_rng(seed)
    # Each resample as multiplicities of the N images (multinomial = N draws with replacement).
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(float)      # (B, N)
    top1 = weights @ hit.astype(float) / n
    onehot_true = np.zeros((n, c))
    onehot_true[np.arange(n), labels] = 1.0
    onehot_pred = np.zeros((n, c))
    onehot_pred[np.arange(n), preds] = 1.0
    n_true, n_pred = weights @ onehot_true, weights @ onehot_pred
    tp = weights @ (onehot_true * hit[:, None])
    f1 = _macro_f1_from_counts(tp, n_true, n_pred)
    alpha = (1.0 - confidence) / 2
    out = {}
    for key, values in (("top1", top1), ("f1_macro", f1)):
        low, high = np.quantile(values, [alpha, 1.0 - alpha])
        out[key] = Interval(float(low), float(high))
    return out


def bootstrap_mean_ci(scores: pd.DataFrame, samples: int, confidence: float, seed: int) -> dict[str, Interval]:
    """Percentile bootstrap intervals of each column's mean over the rows (queries), NaN cells left out."""
    values = scores.to_numpy(dtype=float)
    n = len(values)
    if n == 0 or samples <= 0:
        return {col: Interval(float("nan"), float("nan")) for col in scores.columns}
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(float)      # (B, N)
    present = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (weights @ np.where(present, values, 0.0)) / (weights @ present)     # (B, M)
    alpha = (1.0 - confidence) / 2
    out = {}
    for j, col in enumerate(scores.columns):
        finite = means[:, j][np.isfinite(means[:, j])]
        low, high = np.quantile(finite, [alpha, 1.0 - alpha]) if finite.size else (float("nan"), float("nan"))
        out[col] = Interval(float(low), float(high))
    return out


def read_retrieval(path: str | Path) -> pd.DataFrame:
    """A ``retrieval.csv`` (image, true, recall_at_K..., ap_at_r), columns checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing per-query retrieval scores: {path} (written by the evaluate stage under "
                        "split.strategy: disjoint; rerun it)")
    frame = pd.read_csv(path, dtype={"image": str}, keep_default_na=False, na_values=[""])
    missing = [c for c in ("image", "true", "ap_at_r", "recall_at_1") if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value of two classifiers' per-image correctness on the same images."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same images: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A ``predictions.csv`` (image, true, predicted, correct), columns checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing per-image predictions: {path} (written by the evaluate stage; rerun it)")
    frame = pd.read_csv(path, dtype={"image": str}, keep_default_na=False)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def paired(a: pd.DataFrame, b: pd.DataFrame, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two prediction tables aligned on ``image``; they must cover the same images."""
    if len(a) != len(b) or set(a["image"]) != set(b["image"]):
        raise UserError(f"{what}: the two experiments were not evaluated on the same test images "
                        f"({len(a)} vs {len(b)}); a paired test needs the same split")
    right = b.set_index("image")["correct"]
    return a["correct"].to_numpy(bool), right.loc[a["image"]].to_numpy(bool)


@dataclass(frozen=True)
class PairedRetrieval:
    """Paired tests of experiment A against B on the same query photos (:func:`paired_retrieval`)."""

    queries: int
    #: Recall@1: queries only A gets right, only B gets right; McNemar's exact two-sided p
    only_a: int
    only_b: int
    p_recall_at_1: float
    #: AP@R: mean of A - B over the queries with a value in both; Wilcoxon signed-rank statistic and two-sided p
    ap_pairs: int
    ap_mean_diff: float
    wilcoxon_statistic: float
    p_map_at_r: float


def paired_retrieval(a: pd.DataFrame, b: pd.DataFrame, what: str) -> PairedRetrieval:
    """Paired tests of two ``retrieval.csv`` tables (:func:`read_retrieval`), aligned on ``image``: exact McNemar
    on ``recall_at_1`` and the Wilcoxon signed-rank test (zero differences dropped, scipy's default) on
    ``ap_at_r``; p = 1 where the two never differ."""
    from scipy.stats import wilcoxon

    if len(a) != len(b) or set(a["image"]) != set(b["image"]):
        raise UserError(f"{what}: the two experiments were not scored on the same query photos "
                        f"({len(a)} vs {len(b)}); a paired test needs the same split")
    b = b.set_index("image").loc[a["image"]]
    hits_a, hits_b = a["recall_at_1"].to_numpy(float) > 0, b["recall_at_1"].to_numpy(float) > 0
    ap_a, ap_b = a["ap_at_r"].to_numpy(float), b["ap_at_r"].to_numpy(float)
    both = np.isfinite(ap_a) & np.isfinite(ap_b)
    diff = ap_a[both] - ap_b[both]
    if np.any(diff != 0):
        test = wilcoxon(ap_a[both], ap_b[both])
        statistic, p_ap = float(test.statistic), float(test.pvalue)
    else:
        statistic, p_ap = 0.0, 1.0
    return PairedRetrieval(len(a), int((hits_a & ~hits_b).sum()), int((~hits_a & hits_b).sum()),
                           mcnemar(hits_a, hits_b), int(both.sum()), float(diff.mean()) if len(diff) else 0.0,
                           statistic, p_ap)
