"""carbench.retrieval.index: exact neighbour search (torch and faiss backends agree), chunked, by metric."""
from __future__ import annotations

import numpy as np
import pytest

from carbench.retrieval import embedding_store as E
from carbench.retrieval import index as X


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_euclidean_neighbours_on_a_line(backend):
    gallery = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]], np.float32)
    dist, idx = X.search(np.array([[2.25]], np.float32), gallery, 4, "euclidean", backend)
    assert idx.tolist() == [[2, 1, 0, 3]]
    assert dist[0].tolist() == pytest.approx([0.75, 1.25, 2.25, 3.75])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_cosine_neighbours_by_angle(backend):
    angles = np.deg2rad([0.0, 30.0, 100.0, 180.0])
    gallery = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    query = np.array([[np.cos(np.deg2rad(20.0)), np.sin(np.deg2rad(20.0))]], np.float32)
    dist, idx = X.search(query, gallery, 4, "cosine", backend)
    assert idx.tolist() == [[1, 0, 2, 3]]
    want = 1 - np.cos(np.deg2rad([10.0, 20.0, 80.0, 160.0]))
    assert dist[0] == pytest.approx(want, abs=1e-6)


def test_identical_vector_has_distance_zero_and_k_is_capped():
    gallery = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    dist, idx = X.search(gallery[:1] * 1, gallery, 5, "euclidean")
    assert idx.tolist() == [[0, 1]] and dist.tolist() == [[0.0, 5.0]]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_torch_and_faiss_backends_agree(metric):
    rng = np.random.default_rng(0)
    gallery, queries = rng.standard_normal((500, 32)), rng.standard_normal((120, 32))
    if metric == "cosine":
        gallery, queries = E.l2_normalize(gallery), E.l2_normalize(queries)
    gallery, queries = gallery.astype(np.float32), queries.astype(np.float32)
    d_t, i_t = X.search(queries, gallery, 8, metric, "torch")
    d_f, i_f = X.search(queries, gallery, 8, metric, "faiss")
    assert np.array_equal(i_t, i_f)
    assert np.allclose(d_t, d_f, atol=1e-6)


def test_torch_search_chunks_match_one_block(monkeypatch):
    rng = np.random.default_rng(1)
    gallery, queries = rng.standard_normal((64, 8)).astype(np.float32), rng.standard_normal((50, 8)).astype(np.float32)
    _, whole = X.search(queries, gallery, 5, "euclidean")
    monkeypatch.setattr(X, "CHUNK_BYTES", 64 * 4 * 3)   # three queries per block
    _, chunked = X.search(queries, gallery, 5, "euclidean")
    assert np.array_equal(whole, chunked)


def test_resolve_backend():
    assert X.resolve_backend("auto", 100, 200_000) == "torch"
    assert X.resolve_backend("auto", 300_000, 200_000) == "faiss"
    assert X.resolve_backend("torch", 300_000, 0) == "torch"
