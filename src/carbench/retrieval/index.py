"""Exact nearest-neighbour search over a processed gallery: torch chunked matrix products or a faiss flat index.

Both backends return the same neighbours: the candidates are re-scored directly (:func:`exact_distances`)
and sorted by (distance, gallery index). Used by the k-NN model (:mod:`carbench.retrieval.knn`).
"""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from ..core.errors import UserError

#: Budget for one block of the query x gallery distance matrix (float32), so a 8k x 16k search
#: never materialises 0.5 GB at once; also bounds the (chunk, k, D) block of the exact re-scoring.
CHUNK_BYTES = 256 * 2**20
_FLOAT32_BYTES = 4


def faiss_available() -> bool:
    """True when the faiss module can be imported."""
    return importlib.util.find_spec("faiss") is not None


def resolve_backend(backend: str, n_gallery: int, faiss_min_gallery: int) -> str:
    """``knn.backend`` -> 'torch' | 'faiss' (auto: faiss only when installed and the gallery is big)."""
    if backend == "faiss" and not faiss_available():
        raise UserError("knn.backend is 'faiss' but faiss is not installed (pip install faiss-cpu), "
                        "or set knn.backend to torch/auto")
    if backend == "auto":
        return "faiss" if faiss_available() and n_gallery > faiss_min_gallery else "torch"
    return backend


class ExactIndex:
    """Exact nearest-neighbour index over a fixed processed gallery ``(Ng, D)``, built once.

    backend ``torch``: the gallery lives on ``device`` and queries are scored by chunked matrix
    products; ``faiss``: a flat (exact) faiss index on the CPU. Either way the k candidates are then
    re-scored directly (:func:`exact_distances`) and sorted by (distance, gallery index).
    """

    def __init__(self, gallery: np.ndarray, metric: str, backend: str = "torch", device: Any = "cpu") -> None:
        import torch

        self.metric, self.backend = metric, backend
        gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        self.size = len(gallery)
        # faiss runs on the CPU, so its re-scoring does too (no second copy of the gallery on a GPU).
        self.device = torch.device(device if backend == "torch" else "cpu")
        self.gallery = torch.from_numpy(gallery).to(self.device)
        self.gallery_sq = (self.gallery * self.gallery).sum(dim=1)
        self.faiss_index = None
        if backend == "faiss":
            import faiss

            dim = gallery.shape[1]
            self.faiss_index = faiss.IndexFlatL2(dim) if metric == "euclidean" else faiss.IndexFlatIP(dim)
            self.faiss_index.add(gallery)

    def _candidates_torch(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Indices ``(Nq, k)`` of the k nearest gallery rows by chunked matrix products."""
        import torch

        chunk = max(1, CHUNK_BYTES // (_FLOAT32_BYTES * max(1, self.size)))
        out = []
        for start in range(0, len(queries), chunk):
            q = torch.from_numpy(queries[start:start + chunk]).to(self.device)
            sim = q @ self.gallery.T
            # Squared euclidean via |q|^2 + |g|^2 - 2 q.g; cosine distance 1 - q.g on unit vectors.
            if self.metric == "euclidean":
                dist = (q * q).sum(dim=1, keepdim=True) + self.gallery_sq - 2 * sim
            else:
                dist = 1 - sim
            out.append(torch.topk(dist, k, dim=1, largest=False, sorted=True).indices.cpu())
        return torch.cat(out).numpy().astype(np.int64) if out else np.zeros((0, k), np.int64)

    def _candidates_faiss(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Indices ``(Nq, k)`` of the k nearest gallery rows from the faiss flat index."""
        import faiss
        import torch

        # faiss uses OpenMP; honour base.threads as configured for torch by runtime.configure.
        faiss.omp_set_num_threads(torch.get_num_threads())
        _, idx = self.faiss_index.search(queries, k)
        return idx.astype(np.int64)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, indices)``, both ``(Nq, min(k, Ng))`` float32 / int64, nearest first."""
        k = min(k, self.size)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.faiss_index is not None:
            idx = self._candidates_faiss(queries, k)
        else:
            idx = self._candidates_torch(queries, k)
        dist = exact_distances(queries, self.gallery, idx, self.metric)
        order = np.lexsort((idx, dist), axis=-1)
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)


def exact_distances(queries: np.ndarray, gallery: Any, idx: np.ndarray, metric: str) -> np.ndarray:
    """Distances ``(Nq, k)`` from each query to the gallery rows ``idx`` ``(Nq, k)``, computed directly.

    ``gallery`` is a torch tensor ``(Ng, D)``; the work runs on its device. Euclidean: ``||q - g||``;
    cosine: ``1 - q.g`` on unit vectors, clamped at 0. Direct differences avoid the cancellation of
    the expanded form, so identical vectors give exactly 0 and both backends agree.
    """
    import torch

    k = max(1, idx.shape[1])
    chunk = max(1, CHUNK_BYTES // (_FLOAT32_BYTES * k * max(1, gallery.shape[1])))
    out = []
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(queries[start:start + chunk]).to(gallery.device)[:, None, :]
        nb = gallery[torch.from_numpy(idx[start:start + chunk]).to(gallery.device)]
        d = (q - nb).norm(dim=2) if metric == "euclidean" else (1 - (q * nb).sum(dim=2)).clamp_min(0)
        out.append(d.cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(idx.shape, np.float32)


def search(queries: np.ndarray, gallery: np.ndarray, k: int, metric: str, backend: str = "torch",
           device: Any = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of processed ``queries`` ``(Nq, D)`` in ``gallery`` ``(Ng, D)``.

    One-off convenience around :class:`ExactIndex`. Returns ``(distances, indices)``, both
    ``(Nq, min(k, Ng))``, nearest first; equal distances are ordered by gallery index, so both
    backends give the same answer.
    """
    return ExactIndex(gallery, metric, backend, device).search(queries, k)
