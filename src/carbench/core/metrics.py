"""Classification and retrieval metrics on NumPy arrays: pure functions, checkable by hand.

Conventions: ``probs`` is ``(N, C)`` float (rows need not sum to 1), ``labels``/``preds`` are ``(N,)``
int class ids in ``0..C-1``. Retrieval functions take ``neighbour_labels`` ``(Nq, K)``: the class ids
of each query's gallery neighbours, nearest first.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pandas is imported where a table is built: embed@ and knn@ never need it (0.4-0.6 s)
    import pandas as pd

#: Probabilities are clipped here before the log in :func:`nll`, so a k-NN vote of exactly 0 for
#: the true class costs -log(1e-7) = 16.1 nats instead of infinity.
PROB_FLOOR = 1e-7

PER_CLASS_COLUMNS = ("class", "support", "precision", "recall", "f1")
PAIR_COLUMNS = ("class_a", "class_b", "count", "a_as_b", "b_as_a")


# ----------------------------------------------------------------------------- classification
def rank_classes(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices ``(N, k)`` of the ``k`` most probable classes; ties go to the lower class id."""
    k = min(k, probs.shape[1])
    # A stable sort of -probs keeps equal probabilities in class-id order, so results never
    # depend on the sort implementation.
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose true label is among the ``k`` most probable classes."""
    if len(labels) == 0:
        return float("nan")
    top = rank_classes(probs, k)
    return float((top == labels[:, None]).any(axis=1).mean())


def nll(probs: np.ndarray, labels: np.ndarray, floor: float = PROB_FLOOR) -> float:
    """Mean negative log-likelihood (nats) of the true class, probabilities clipped at ``floor``.

    For softmax outputs this is the cross-entropy loss (unless the true class has p < floor).
    """
    if len(labels) == 0:
        return float("nan")
    p_true = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(p_true, floor)).mean())


def summarize_classification(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """Macro/weighted precision, recall, F1 and balanced accuracy (scikit-learn definitions).

    Averages run over the classes present in ``labels`` or ``preds`` (scikit-learn's default);
    an undefined precision/recall (no predictions / no support) counts as 0.
    """
    from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

    out: dict[str, float] = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, preds, average=average, zero_division=0)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    out["balanced_accuracy"] = float(balanced_accuracy_score(labels, preds))
    return out


def per_class_table(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per class (all C, in class-id order): class, support, precision, recall, f1."""
    import pandas as pd
    from sklearn.metrics import precision_recall_fscore_support

    ids = np.arange(len(class_names))
    p, r, f, support = precision_recall_fscore_support(labels, preds, labels=ids, average=None, zero_division=0)
    return pd.DataFrame({"class": list(class_names), "support": support.astype(np.int64),
                         "precision": p, "recall": r, "f1": f}, columns=list(PER_CLASS_COLUMNS))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(C, C)`` int64: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def most_confused_pairs(cm: np.ndarray, class_names: Sequence[str], n: int) -> pd.DataFrame:
    """The ``n`` unordered class pairs with the most confusions in either direction.

    ``count = a_as_b + b_as_a`` where ``a_as_b`` = images of class a predicted as b. Sorted by
    count (descending), then by class ids; pairs that are never confused are left out.
    """
    import pandas as pd

    both = cm + cm.T
    rows, cols = np.triu_indices(len(cm), k=1)
    counts = both[rows, cols]
    order = np.lexsort((cols, rows, -counts))
    order = [i for i in order if counts[i] > 0][:n]
    return pd.DataFrame({
        "class_a": [class_names[rows[i]] for i in order],
        "class_b": [class_names[cols[i]] for i in order],
        "count": [int(counts[i]) for i in order],
        "a_as_b": [int(cm[rows[i], cols[i]]) for i in order],
        "b_as_a": [int(cm[cols[i], rows[i]]) for i in order],
    }, columns=list(PAIR_COLUMNS))


# ----------------------------------------------------------------------------- retrieval
def _relevance(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean ``(Nq, k)``: neighbour j of query i has the query's class."""
    if neighbour_labels.shape[1] < k:
        raise ValueError(f"need at least {k} neighbours per query, got {neighbour_labels.shape[1]}")
    return neighbour_labels[:, :k] == query_labels[:, None]


def precision_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of the ``k`` nearest gallery items with the query's class."""
    return float(_relevance(neighbour_labels, query_labels, k).mean())


def recall_hits(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> np.ndarray:
    """Per query (bool ``(Nq,)``): at least one same-class item among its ``k`` nearest (Recall@K's summand)."""
    return _relevance(neighbour_labels, query_labels, k).any(axis=1)


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Recall@K as in the metric-learning literature: fraction of queries with at least one
    same-class item among their ``k`` nearest (not the fraction of all relevant items found)."""
    return float(recall_hits(neighbour_labels, query_labels, k).mean())


def ap_at_r(neighbour_labels: np.ndarray, query_labels: np.ndarray, class_counts: np.ndarray) -> np.ndarray:
    """AP@R per query (float ``(Nq,)``; NaN where R = 0), the summand of :func:`map_at_r`."""
    r = class_counts[query_labels]
    keep = r > 0
    out = np.full(len(query_labels), np.nan)
    if not keep.any():
        return out
    r_max = int(r[keep].max())
    rel = _relevance(neighbour_labels[keep], query_labels[keep], r_max).astype(np.float64)
    ranks = np.arange(1, r_max + 1)
    precision = np.cumsum(rel, axis=1) / ranks
    within_r = ranks[None, :] <= r[keep][:, None]
    out[keep] = (precision * rel * within_r).sum(axis=1) / r[keep]
    return out


def map_at_r(neighbour_labels: np.ndarray, query_labels: np.ndarray, class_counts: np.ndarray) -> float:
    """MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020).

    For a query with ``R`` same-class gallery items (``class_counts[label]``):
    ``AP@R = (1/R) * sum_{i<=R} P(i) * rel(i)``, with ``P(i)`` the precision among the first i.
    ``neighbour_labels`` must hold at least ``max R`` neighbours. Queries whose class is absent
    from the gallery (R = 0) are skipped, since AP@R is undefined for them.
    """
    ap = ap_at_r(neighbour_labels, query_labels, class_counts)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
