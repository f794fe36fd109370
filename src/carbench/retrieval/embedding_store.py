"""The embedding store ``data/embeddings/<name>/`` (docs/ARCHITECTURE.md §5) and the stored form of an embedding.

Written by :mod:`carbench.retrieval.embed`, read by :mod:`carbench.retrieval.knn`; :func:`as_stored` is also applied by the
predictors, so a query embedded at predict time is bit-identical to the stored one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.io import read_json, write_json

EMBEDDINGS_FORMAT = "carbench-embeddings/1"
EMBEDDINGS_FILE = "embeddings.npz"
META_FILE = "meta.json"


# ----------------------------------------------------------------------------- embedding store (§5)
@dataclass
class Embeddings:
    """The embedding store: gallery ``(Ng, D)`` and queries ``(Nq, D)`` (float16 on disk)."""

    gallery: np.ndarray
    gallery_labels: np.ndarray
    gallery_split: np.ndarray
    gallery_row: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    meta: dict = field(default_factory=dict)


def save_embeddings(emb: Embeddings, out_dir: str | Path) -> None:
    """Write ``embeddings.npz`` (float16 vectors) and ``meta.json`` into ``out_dir`` (which exists)."""
    out_dir = Path(out_dir)
    np.savez(out_dir / EMBEDDINGS_FILE,
             gallery=emb.gallery.astype(np.float16), gallery_labels=emb.gallery_labels.astype(np.int64),
             gallery_split=emb.gallery_split.astype(str), gallery_row=emb.gallery_row.astype(np.int64),
             query=emb.query.astype(np.float16), query_labels=emb.query_labels.astype(np.int64))
    write_json(out_dir / META_FILE, {"format": EMBEDDINGS_FORMAT, **emb.meta})


def read_checked_meta(meta_path: Path, fmt: str, required: tuple[Path, ...], what: str, stage: str) -> dict:
    """Read ``meta_path`` after checking every ``required`` file exists (in order) and the JSON names ``fmt``.

    Shared with the k-NN model's ``knn.json`` (:func:`carbench.retrieval.knn.load_knn`)."""
    for p in required:
        if not p.is_file():
            raise UserError(f"{what} incomplete: {p} not found (run the {stage} stage first)")
    meta = read_json(meta_path)
    if meta.get("format") != fmt:
        raise UserError(f"{meta_path}: format {meta.get('format')!r} is not {fmt!r}")
    return meta


def load_embeddings(emb_dir: str | Path) -> Embeddings:
    """Read an embedding store written by :func:`save_embeddings`; vectors come back as float32."""
    emb_dir = Path(emb_dir)
    path = emb_dir / EMBEDDINGS_FILE
    meta_path = emb_dir / META_FILE
    meta = read_checked_meta(meta_path, EMBEDDINGS_FORMAT, (path, meta_path), "embedding store", "embed")
    with np.load(path, allow_pickle=False) as z:
        return Embeddings(gallery=z["gallery"].astype(np.float32), gallery_labels=z["gallery_labels"],
                          gallery_split=z["gallery_split"], gallery_row=z["gallery_row"],
                          query=z["query"].astype(np.float32), query_labels=z["query_labels"], meta=meta)


# ----------------------------------------------------------------------------- stored form
def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``(N, D)`` scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def as_stored(x: np.ndarray, l2: bool) -> np.ndarray:
    """Raw model outputs ``(N, D)`` -> the embedding as stored: optional L2 normalisation (``embed.l2_normalize``)
    then float16 rounding, returned as float32. Predictors apply the same, so a query embedded at
    predict time is bit-identical to the stored one."""
    x = np.asarray(x, dtype=np.float32)
    if l2:
        x = l2_normalize(x)
    return x.astype(np.float16).astype(np.float32)
