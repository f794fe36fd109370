"""carbench.retrieval.loo: leave-one-out retrieval among the test photos (the class-disjoint protocol), by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from carbench.retrieval import embedding_store as E
from carbench.retrieval import knn as K
from carbench.retrieval import loo
from carbench.retrieval.index import ExactIndex

#: Six photos on a line, classes A = 0 and B = 1 (R = 2 others each). Their neighbours, nearest first:
#: p0 A B A B B | p1 A B A B B | p2 A A A B B | p3 B A A B B | p4 B A B A A | p5 B A B A A
POINTS = np.array([[0.0], [1.0], [2.2], [3.5], [10.0], [11.0]], np.float32)
LABELS = np.array([0, 0, 1, 0, 1, 1])
#: R@1: p0 p1 p4 p5 hit; R@2: p3 too; R@4: p2 too. AP@R (R = 2): 1/2 for A-then-B, 0 for p2, 1/4 for p3.
EXPECTED = {"recall_at_1": 4 / 6, "recall_at_2": 5 / 6, "recall_at_4": 1.0, "map_at_r": 2.25 / 6,
            "precision_at_1": 4 / 6}


def test_scores_of_a_crafted_set_match_the_hand_computed_ones():
    scores = loo.loo_scores(POINTS, LABELS, "euclidean", (2, 4))          # K = 1 is always scored (P@1)
    assert list(scores["recall_at_1"]) == [1, 1, 0, 0, 1, 1]
    assert list(scores["ap_at_r"]) == pytest.approx([0.5, 0.5, 0.0, 0.25, 0.5, 0.5])
    assert list(scores["nearest"]) == [0, 0, 0, 1, 1, 1]
    assert loo.loo_means(scores) == pytest.approx(EXPECTED)


def test_a_photo_never_retrieves_itself_even_among_exact_duplicates():
    vectors = np.array([[0.0], [0.0], [0.0], [5.0], [5.1]], np.float32)
    neighbours = loo.loo_neighbours(ExactIndex(vectors, "euclidean"), vectors, 3)
    assert neighbours.shape == (5, 3)
    assert not (neighbours == np.arange(5)[:, None]).any()
    # three identical photos of class 0 and two of class 1: every photo finds its class first
    scores = loo.loo_scores(vectors, np.array([0, 0, 0, 1, 1]), "euclidean", (1,))
    assert loo.loo_means(scores)["recall_at_1"] == 1.0 and loo.loo_means(scores)["map_at_r"] == 1.0


def test_a_photo_alone_in_its_class_has_no_ap_and_misses_every_recall():
    scores = loo.loo_scores(POINTS[:4], np.array([0, 0, 0, 1]), "euclidean", (1,))
    assert np.isnan(scores["ap_at_r"][3]) and scores["recall_at_1"][3] == 0
    assert loo.loo_means(scores)["map_at_r"] == pytest.approx(np.nanmean(scores["ap_at_r"]))


def test_knn_stage_scores_a_disjoint_store_leave_one_out_and_fits_no_classifier_on_its_queries(tmp_path):
    emb = E.Embeddings(gallery=POINTS, gallery_labels=LABELS, gallery_split=np.array(["test"] * 6),
                       gallery_row=np.arange(6), query=POINTS, query_labels=LABELS,
                       meta={"embedder": "emb", "checkpoint_md5": "0" * 32, "layer": "backbone", "protocol": "disjoint",
                             "l2_normalize": False, "class_names": ["A", "B"]})
    (tmp_path / "emb").mkdir()
    E.save_embeddings(emb, tmp_path / "emb")
    cfg = K.KnnConfig(k=1, metric="euclidean", weighting="uniform", standardize=False, pca_components=0,
                      backend="torch", faiss_min_gallery=0, retrieval_ks=(1, 2, 4), classical="logreg")
    result = K.fit_and_save(cfg, tmp_path / "emb", tmp_path / "m", tmp_path / "k.json", 0)
    assert {k: result[k] for k in EXPECTED} == pytest.approx(EXPECTED)
    assert result["protocol"] == "disjoint"
    # a photo found as its own neighbour would make every score 1; no classification number is written
    assert not {"top1", "top5", "logreg_top1"} & set(json.loads((tmp_path / "k.json").read_text()))
