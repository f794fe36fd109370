"""Model selection: the val score that picks the best epoch (``train.select``), and the retrieval scores it can be.

``top1`` is the classifier's val accuracy. ``recall_at_1`` and ``map_at_r`` score retrieval: every val photo is a
query against the other val photos (itself left out), on the embedding the retrieval experiments use (the
L2-normalised projection of a head with ``model.embedding_dim``, else the backbone features), with the definitions
of :mod:`carbench.core.metrics` that the test scores use. Under the class-disjoint protocol with
``split.disjoint_val: classes`` the val photos belong to classes training never sees, so top-1 is undefined there and
``auto`` picks ``map_at_r``: selection then measures what the test measures, retrieval of unseen classes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core import metrics as M
from ..core.errors import DataError

#: ``train.select`` -> the key of the epoch row (and the dvclive metric) it reads.
SCORE_KEYS = {"top1": "val/top1", "recall_at_1": "val/recall_at_1", "map_at_r": "val/map_at_r"}
#: The retrieval scores the trainer adds to an epoch's row when selection needs them.
RETRIEVAL_KEYS = ("val/recall_at_1", "val/map_at_r")


def resolve(select: str, val_classes_trained: bool) -> str:
    """``train.select`` with ``auto`` made concrete: ``top1`` when the val photos' classes are trained, else
    ``map_at_r``. DataError for ``top1`` on untrained val classes (a classifier cannot name them)."""
    if select == "auto":
        return "top1" if val_classes_trained else "map_at_r"
    if select == "top1" and not val_classes_trained:
        raise DataError("train.select: top1 cannot select on val classes that training never sees "
                        "(split.disjoint_val: classes): use map_at_r or recall_at_1 (or auto)")
    return select


def score(row: dict, select: str) -> float:
    """The selection score of one epoch's metric row."""
    return float(row[SCORE_KEYS[select]])


def best_epoch(history: Sequence[dict], select: str) -> int:
    """The 1-based epoch of ``history`` (validated rows, in order) with the highest ``select`` score; the first
    on ties, as the trainer keeps its first best; 0 for no history."""
    best, best_score = 0, -float("inf")
    for epoch, row in enumerate(history, start=1):
        if score(row, select) > best_score:
            best, best_score = epoch, score(row, select)
    return best


@torch.inference_mode()
def loo_retrieval(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Leave-one-out Recall@1 and MAP@R (``val/recall_at_1``, ``val/map_at_r``) of ``embeddings`` (N, D) with
    class ids ``labels`` (N,), by cosine similarity; MAP@R over the photos whose class has another photo."""
    x = torch.nn.functional.normalize(embeddings.float(), dim=1)
    y = labels.cpu().numpy().astype(np.int64)
    if len(y) < 2:
        raise DataError("retrieval selection needs at least two val photos")
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))                    # leave the query itself out
    others = np.bincount(y) - 1                          # R: the other photos of each class
    depth = int(max(1, others.max()))
    neighbours = torch.topk(sim, min(depth, len(y) - 1), dim=1).indices.cpu().numpy()
    nb_labels = y[neighbours]
    ap = M.ap_at_r(nb_labels, y, others)
    return {"val/recall_at_1": float(M.recall_hits(nb_labels, y, 1).mean()),
            "val/map_at_r": float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0}
