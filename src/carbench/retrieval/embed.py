"""The embed stage: embeddings of the gallery and query crops from a trained experiment's checkpoint.

The embedder is ``models/<dag.retrieval[name]>/best.pt``, or for a baseline of ``dag.pretrained``
the pretrained torchvision weights it names, untrained. ``embed.layer: backbone`` takes the head
input (for a frozen-backbone transfer experiment these are exactly the pretrained ImageNet
features, since training never changed the backbone); ``penultimate`` takes the output of the head's
hidden layer (= backbone when ``model.head_hidden`` is 0). Gallery = train (+ val with
``embed.gallery: train+val``), queries = test. Under the class-disjoint protocol (a crop store with
``train_classes``) every test photo is embedded once and is both gallery and query: knn@ and evaluate@ score it
leave-one-out (:mod:`carbench.retrieval.loo`). Stored as float16 (docs/ARCHITECTURE.md §5).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core import timing
from ..config import BaseConfig, EmbedConfig, EmbedJob, EmbedWithConfig, RetrievalExperiment
from ..core.errors import UserError
from ..core.io import atomic_dir
from ..core.io import file_md5
from .predictor import CHECKPOINT, ClassifierPredictor, load_classifier_predictor, load_pretrained_embedder
from .embedding_store import Embeddings, as_stored, save_embeddings
from ..config import to_dict
from ..data.store import load_meta, load_split
from ..core.runtime import configure, select_device

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


def build_embeddings(predictor: ClassifierPredictor, crops_dir: str | Path, cfg: EmbedConfig,
                     disjoint: bool = False) -> Embeddings:
    """Embed the gallery splits and the test split; gallery rows remember (split, row in that split).
    ``disjoint``: the test split alone, as gallery and queries both (scored leave-one-out)."""
    if disjoint:
        test = load_split(crops_dir, QUERY_SPLIT, mmap=True)
        vectors, labels = embed_images(predictor, test.images, cfg), np.asarray(test.labels, np.int64)
        return Embeddings(gallery=vectors, gallery_labels=labels, gallery_split=np.full(len(labels), QUERY_SPLIT),
                          gallery_row=np.arange(len(labels), dtype=np.int64), query=vectors, query_labels=labels)
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
                     out_dir: str | Path, device: Any, offline: bool = False) -> dict:
    """Embed gallery and query crops for retrieval experiment ``exp`` (the whole experiment, or the part
    embed@ gets: only ``name``, ``embedder`` and ``embed`` are read); returns the written meta.json content.
    ``offline`` (``base.offline``): pretrained weights of ``dag.pretrained`` missing from the cache are not
    downloaded."""
    name = exp.name
    crop_meta = load_meta(crops_dir)
    class_names = list(crop_meta.class_names)
    if isinstance(exp.embedder, EmbedWithConfig):
        predictor, ckpt_path = load_pretrained_embedder(exp.embedder, device, offline)
        embedder: Any = to_dict(exp.embedder)
    else:
        ckpt_path, embedder = Path(models_root) / exp.embedder / CHECKPOINT, exp.embedder
        predictor = load_classifier_predictor(ckpt_path, device)
        if predictor.class_names != list(crop_meta.trained().class_names):
            raise UserError(f"{ckpt_path} was trained on other classes than {crops_dir}/meta.json lists; retrain "
                            f"{exp.embedder!r}")
    emb = build_embeddings(predictor, crops_dir, exp.embed, crop_meta.disjoint)
    timing.record(images=int(len(emb.query) if crop_meta.disjoint else len(emb.gallery) + len(emb.query)))
    # A pretrained weights file lives in a per-machine cache: its name (its md5 pins the content) keeps the outputs
    # identical across machines and clones.
    recorded = ckpt_path.name if isinstance(exp.embedder, EmbedWithConfig) else ckpt_path.as_posix()
    emb.meta = {"experiment": name, "embedder": embedder, "checkpoint": recorded,
                "checkpoint_md5": file_md5(ckpt_path), "layer": exp.embed.layer,
                "l2_normalize": exp.embed.l2_normalize, "protocol": crop_meta.protocol,
                "gallery": QUERY_SPLIT if crop_meta.disjoint else exp.embed.gallery, "class_names": class_names,
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
    return embed_experiment(exp, crops_dir, models_root, out_dir, select_device(base.device), base.offline)
