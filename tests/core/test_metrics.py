"""carbench.core.metrics against values computed by hand on tiny arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest

from carbench.core import metrics as M

# Five images, three classes: true labels and predictions used by several tests.
LABELS = np.array([0, 0, 1, 1, 2])
PREDS = np.array([0, 1, 1, 1, 0])


def test_topk_accuracy_and_tie_order():
    probs = np.array([[0.1, 0.6, 0.3],
                      [0.5, 0.2, 0.3],
                      [0.4, 0.4, 0.2]])
    labels = np.array([1, 2, 1])
    assert M.topk_accuracy(probs, labels, 1) == pytest.approx(1 / 3)    # only row 0 (row 2's tie -> class 0)
    assert M.topk_accuracy(probs, labels, 2) == pytest.approx(1.0)
    assert M.topk_accuracy(probs, labels, 5) == 1.0                      # k > C: every class counts
    assert M.rank_classes(probs, 3)[2].tolist() == [0, 1, 2]             # equal probabilities: lower id first


def test_nll_clips_zero_probability():
    probs = np.array([[0.5, 0.5], [0.75, 0.25], [1.0, 0.0]])
    labels = np.array([0, 1, 1])
    want = (-math.log(0.5) - math.log(0.25) - math.log(M.PROB_FLOOR)) / 3
    assert M.nll(probs, labels) == pytest.approx(want)


def test_summary_matches_hand_computation():
    # class 0: P=1/2 R=1/2 F=1/2; class 1: P=2/3 R=1 F=0.8; class 2: P=R=F=0 (never predicted)
    s = M.summarize_classification(LABELS, PREDS)
    assert s["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert s["recall_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert s["f1_macro"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    # weighted by support (2, 2, 1) / 5
    assert s["precision_weighted"] == pytest.approx((2 * 0.5 + 2 * 2 / 3) / 5)
    assert s["recall_weighted"] == pytest.approx((2 * 0.5 + 2 * 1) / 5)
    assert s["f1_weighted"] == pytest.approx((2 * 0.5 + 2 * 0.8) / 5)
    assert s["balanced_accuracy"] == pytest.approx(0.5)


def test_per_class_table_and_confusion():
    table = M.per_class_table(LABELS, PREDS, ["a", "b", "c", "d"])
    assert list(table.columns) == list(M.PER_CLASS_COLUMNS)
    assert table["support"].tolist() == [2, 2, 1, 0]
    assert table["recall"].tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0])
    assert table["f1"].tolist() == pytest.approx([0.5, 0.8, 0.0, 0.0])
    cm = M.confusion_matrix(LABELS, PREDS, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_most_confused_pairs():
    cm = np.array([[5, 3, 1],
                   [2, 4, 0],
                   [1, 0, 7]])
    pairs = M.most_confused_pairs(cm, ["a", "b", "c"], 5)
    assert list(pairs.columns) == list(M.PAIR_COLUMNS)
    assert pairs.values.tolist() == [["a", "b", 5, 3, 2], ["a", "c", 2, 1, 1]]   # (b, c) never confused
    assert len(M.most_confused_pairs(cm, ["a", "b", "c"], 1)) == 1


# ----------------------------------------------------------------------------- retrieval
NEIGHBOURS = np.array([[0, 1, 0, 0],     # query of class 0
                       [1, 1, 2, 0],     # query of class 1
                       [0, 1, 1, 2]])    # query of class 2
QUERIES = np.array([0, 1, 2])


def test_precision_at_k():
    # k=2: 1/2, 2/2, 0/2 -> 0.5; k=3: 2/3, 2/3, 0 -> 4/9
    assert M.precision_at_k(NEIGHBOURS, QUERIES, 2) == pytest.approx(0.5)
    assert M.precision_at_k(NEIGHBOURS, QUERIES, 3) == pytest.approx(4 / 9)
    with pytest.raises(ValueError):
        M.precision_at_k(NEIGHBOURS, QUERIES, 5)


def test_recall_at_k_is_hit_rate():
    assert M.recall_at_k(NEIGHBOURS, QUERIES, 1) == pytest.approx(2 / 3)
    assert M.recall_at_k(NEIGHBOURS, QUERIES, 3) == pytest.approx(2 / 3)
    assert M.recall_at_k(NEIGHBOURS, QUERIES, 4) == pytest.approx(1.0)


def test_map_at_r():
    # gallery has R = 3 items of class 0, 2 of class 1, 1 of class 2
    counts = np.array([3, 2, 1])
    ap0 = (1 / 1 + 2 / 3) / 3          # rel = 1,0,1 in the first R=3
    ap1 = (1 / 1 + 2 / 2) / 2          # rel = 1,1
    ap2 = 0.0                          # first neighbour is class 0
    assert M.map_at_r(NEIGHBOURS, QUERIES, counts) == pytest.approx((ap0 + ap1 + ap2) / 3)


def test_map_at_r_skips_classes_absent_from_gallery():
    counts = np.array([3, 2, 0])
    assert M.map_at_r(NEIGHBOURS, QUERIES, counts) == pytest.approx(((1 + 2 / 3) / 3 + 1.0) / 2)
