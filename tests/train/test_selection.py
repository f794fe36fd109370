"""carbench.train.selection: the val score that picks the epoch, and the retrieval scores it can be."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from carbench.core.errors import DataError
from carbench.retrieval.loo import loo_means, loo_scores
from carbench.train import selection

# top-1 peaks at epoch 2, MAP@R at epoch 4, Recall@1 ties between epochs 3 and 5 (the first wins)
HISTORY = [
    {"val/top1": 0.50, "val/recall_at_1": 0.30, "val/map_at_r": 0.10},
    {"val/top1": 0.80, "val/recall_at_1": 0.35, "val/map_at_r": 0.12},
    {"val/top1": 0.60, "val/recall_at_1": 0.40, "val/map_at_r": 0.15},
    {"val/top1": 0.55, "val/recall_at_1": 0.38, "val/map_at_r": 0.21},
    {"val/top1": 0.52, "val/recall_at_1": 0.40, "val/map_at_r": 0.20},
]


@pytest.mark.parametrize("select, epoch", [("top1", 2), ("map_at_r", 4), ("recall_at_1", 3)])
def test_selection_picks_the_epoch_of_its_score(select, epoch):
    assert selection.best_epoch(HISTORY, select) == epoch
    assert selection.best_epoch([], select) == 0


def test_auto_is_top1_on_trained_val_classes_and_map_at_r_on_held_out_ones():
    assert selection.resolve("auto", val_classes_trained=True) == "top1"
    assert selection.resolve("auto", val_classes_trained=False) == "map_at_r"
    assert selection.resolve("recall_at_1", val_classes_trained=True) == "recall_at_1"
    with pytest.raises(DataError, match="never sees"):
        selection.resolve("top1", val_classes_trained=False)


def test_loo_retrieval_on_a_crafted_set():
    # cosine neighbours: a->b (same), b->a (same), c->b (other class), d->c (same)
    x = torch.tensor([[1.0, 0.0], [0.95, 0.31], [0.8, 0.6], [0.0, 1.0]])
    scores = selection.loo_retrieval(x * torch.tensor([[3.0], [1.0], [2.0], [0.5]]), torch.tensor([0, 0, 1, 1]))
    assert scores == pytest.approx({"val/recall_at_1": 0.75, "val/map_at_r": 0.75})


def test_loo_retrieval_equals_the_test_protocols_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 60)
    x = rng.normal(size=(60, 8)) + 1.5 * np.eye(8)[labels]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = loo_means(loo_scores(x.astype(np.float32), labels, "euclidean", (1,)))
    got = selection.loo_retrieval(torch.from_numpy(x), torch.from_numpy(labels))
    assert got["val/recall_at_1"] == pytest.approx(want["recall_at_1"])
    assert got["val/map_at_r"] == pytest.approx(want["map_at_r"])
