"""The embed stage: embeddings of the gallery and query crops from a trained experiment's checkpoint.

The embedder is ``models/<dag.retrieval[name]>/best.pt``. ``embed.layer: backbone`` takes the head
input (for a frozen-backbone transfer experiment these are exactly the pretrained ImageNet
features, since training never changed the backbone); ``penultimate`` takes the output of the head's
hidden layer (= backbone when ``model.head_hidden`` is 0). Gallery = train (+ val with
``embed.gallery: train+val``), queries = test. Stored as float16 (docs/ARCHITECTURE.md §5).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import timing
from ..config import BaseConfig, EmbedConfig, EmbedJob, RetrievalExperiment
from ..errors import UserError
from ..io import atomic_dir
from ..io import file_md5
from .predictor import CHECKPOINT, ClassifierPredictor, load_classifier_predictor
from .embeddings import Embeddings, as_stored, save_embeddings
from ..data.store import load_meta, load_split
from ..runtime import configure, select_device

QUERY_SPLIT = "test"


def gallery_splits(gallery: str) -> tuple[str, ...]:
    """``embed.gallery`` -> the crop-store splits that form the gallery."""
    return tuple(gallery.split("+"))


def embed_images(predictor: ClassifierPredictor, images: np.ndarray, cfg: EmbedConfig) -> np.ndarray:
    """Stored-form embeddings ``(N, D)`` (float16 values as float32) of uint8 crops ``(N, S, S, 3)``,
    computed in batches of ``embed.batch_size``."""
    timing.first_batch()
    out = [as_stored(predictor.embed(images[i:i + cfg.batch_size], cfg.layer), cfg.l2_normalize)
           for i in range(0, len(images), cfg.batch_size)]
    if not out:
        raise UserError("cannot embed an empty split")
    return np.concatenate(out)


def build_embeddings(predictor: ClassifierPredictor, crops_dir: str | Path, cfg: EmbedConfig) -> Embeddings:
    """Embed the gallery splits and the test split; gallery rows remember (split, row in that split)."""
    parts, labels, splits, rows = [], [], [], []
    for split in gallery_splits(cfg.gallery):
        data = load_split(crops_dir, split, mmap=True)
        parts.append(embed_images(predictor, data.images, cfg))
        labels.append(np.asarray(data.labels, np.int64))
        splits.append(np.full(len(data.labels), split))
        rows.append(np.arange(len(data.labels), dtype=np.int64))
    query = load_split(crops_dir, QUERY_SPLIT, mmap=True)
    return Embeddings(gallery=np.concatenate(parts), gallery_labels=np.concatenate(labels),
                      gallery_split=np.concatenate(splits), gallery_row=np.concatenate(rows),
                      query=embed_images(predictor, query.images, cfg),
                      query_labels=np.asarray(query.labels, np.int64))


def embed_experiment(exp: RetrievalExperiment | EmbedJob, crops_dir: str | Path, models_root: str | Path,
                     out_dir: str | Path, device: Any) -> dict:
    """Embed gallery and query crops for retrieval experiment ``exp`` (the whole experiment, or the part
    embed@ gets: only ``name``, ``embedder`` and ``embed`` are read); returns the written meta.json content."""
    name = exp.name
    ckpt_path = Path(models_root) / exp.embedder / CHECKPOINT
    predictor = load_classifier_predictor(ckpt_path, device)
    crop_meta = load_meta(crops_dir)
    class_names = list(crop_meta.class_names)
    if predictor.class_names != class_names:
        raise UserError(f"{ckpt_path} was trained on other classes than {crops_dir}/meta.json lists; retrain "
                        f"{exp.embedder!r}")
    emb = build_embeddings(predictor, crops_dir, exp.embed)
    timing.record(images=int(len(emb.gallery) + len(emb.query)))
    emb.meta = {"experiment": name, "embedder": exp.embedder, "checkpoint": ckpt_path.as_posix(),
                "checkpoint_md5": file_md5(ckpt_path), "layer": exp.embed.layer,
                "l2_normalize": exp.embed.l2_normalize, "gallery": exp.embed.gallery, "class_names": class_names,
                "num_classes": len(class_names), "dim": int(emb.gallery.shape[1]),
                "image_size": predictor.image_size, "crop_size": crop_meta.size,
                "counts": {"gallery": int(len(emb.gallery)), "query": int(len(emb.query))}}
    with atomic_dir(out_dir) as tmp:
        save_embeddings(emb, tmp)
    return emb.meta


def run(base: BaseConfig, exp: EmbedJob, crops_dir: str | Path, models_root: str | Path,
        out_dir: str | Path) -> dict:
    """Stage entry point (stages/embed.py): seed, pick the device, then :func:`embed_experiment`."""
    configure(base.seed, base.threads)
    return embed_experiment(exp, crops_dir, models_root, out_dir, select_device(base.device))
