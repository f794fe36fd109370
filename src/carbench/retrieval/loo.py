"""Leave-one-out retrieval on one set of embeddings: how the class-disjoint protocol scores the test photos.

Under ``split.strategy: disjoint`` the embedder never saw a test class, so the test photos are not classified: each
one is a query against all the *other* test photos (itself left out), as in the retrieval papers on Cars196
(docs/retrieval_eval.md). Scores use :mod:`carbench.core.metrics`' definitions: Recall@K (a same-class photo among the K
nearest), MAP@R (R = the other photos of the query's class; Musgrave et al., 2020) and P@1 (the nearest photo has
the query's class: equal to Recall@1 by definition, reported because MAP@R papers print it). Per-query values are
kept (:func:`loo_scores`) so the summary can bootstrap intervals over queries (:mod:`carbench.report.stats`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core import metrics as M
from .index import ExactIndex

#: The per-query column of MAP@R; Recall@K's are ``recall_at_<K>``.
AP_COLUMN = "ap_at_r"
#: Per query, the class of the nearest other photo (the retrieval diagnostics' "prediction"; not a score).
NEAREST_COLUMN = "nearest"
#: The Recall@K of the retrieval papers (a trained experiment's leave-one-out scoring uses them).
DEFAULT_KS = (1, 2, 4, 8)
#: The headline and summary keys of the protocol, besides ``recall_at_<K>``.
MEAN_KEYS = ("map_at_r", "precision_at_1")
#: The one line that stands where a classification number would (summary, evaluate output).
UNDEFINED_LINE = ("test-set classification (top-1, macro-F1, ...) is undefined under the class-disjoint protocol: "
                  "the test classes were never trained; the test photos are scored by leave-one-out retrieval")


def loo_neighbours(index: ExactIndex, vectors: np.ndarray, depth: int) -> np.ndarray:
    """Indices ``(N, min(depth, N - 1))`` of each row's nearest other rows of ``vectors`` (the index's gallery).

    Searches one deeper and drops the row itself; where exact duplicates push it out of that depth, the deepest
    neighbour is dropped instead, so every row keeps the same count."""
    n = len(vectors)
    depth = min(depth, n - 1)
    _, idx = index.search(vectors, depth + 1)
    drop = idx == np.arange(n)[:, None]
    drop[~drop.any(axis=1), -1] = True
    return idx[~drop].reshape(n, depth)


def loo_scores(vectors: np.ndarray, labels: np.ndarray, metric: str, ks: Sequence[int], backend: str = "torch",
               device: Any = "cpu") -> dict[str, np.ndarray]:
    """Per-query leave-one-out scores of processed embeddings ``(N, D)`` with class ids ``labels`` ``(N,)``:
    ``recall_at_<K>`` (0/1) for each K of ``ks`` and 1, ``ap_at_r`` (NaN for a photo alone in its class) and
    ``nearest`` (the class of the nearest other photo)."""
    labels, ks = np.asarray(labels, np.int64), sorted({1, *ks})     # K = 1 always: P@1
    if len(labels) < 2:
        raise ValueError("leave-one-out retrieval needs at least two photos")
    others = np.bincount(labels) - 1                     # R: the other photos of each class
    index = ExactIndex(vectors, metric, backend, device)
    nb_labels = labels[loo_neighbours(index, vectors, max(max(ks), int(others.max())))]
    depth = nb_labels.shape[1]
    out = {f"recall_at_{k}": M.recall_hits(nb_labels, labels, min(k, depth)).astype(np.float64) for k in ks}
    out[AP_COLUMN] = M.ap_at_r(nb_labels, labels, others)
    out[NEAREST_COLUMN] = nb_labels[:, 0]
    return out


def loo_means(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """The protocol's numbers from :func:`loo_scores`: Recall@K, MAP@R (over queries with R > 0) and P@1."""
    out = {key: float(values.mean()) for key, values in scores.items() if key.startswith("recall_at_")}
    ap = scores[AP_COLUMN]
    out["map_at_r"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
    if "recall_at_1" in out:
        out["precision_at_1"] = out["recall_at_1"]
    return out


def knn_loo_metrics(model: Any, device: Any = "cpu") -> dict[str, Any]:
    """knn@'s metrics under the disjoint protocol: the leave-one-out means of a k-NN model
    (:class:`carbench.retrieval.knn.KnnModel`) whose gallery is the test photos."""
    cfg = model.config
    scores = loo_scores(model.gallery, model.gallery_labels, cfg.metric, cfg.retrieval_ks, model.backend, device)
    return {"protocol": "disjoint", **loo_means(scores), "gallery_size": int(len(model.gallery)),
            "query_size": int(len(model.gallery)), "dim": int(model.gallery.shape[1]), "backend": model.backend}
