"""The split stage: assign every manifest row to ``train``, ``val`` or ``test`` (ARCHITECTURE.md §2).

Strategies (``split.strategy``):

- ``official``: the official test set is ``test``; per class, ``round(val_fraction * n)`` of the official
  train images become ``val`` (at least 1 and at most n - 1 when n >= 2), the rest ``train``.
- ``pooled``: per class, all labelled images are pooled; ``round(test_fraction * n)`` go to ``test``, then
  ``round(val_fraction * rest)`` of the rest to ``val`` (same clamping), the remainder to ``train``.
- ``kfold``: per class, all labelled images are shuffled and dealt round-robin into ``folds`` folds (sizes
  differ by at most one); fold ``split.fold`` is ``test``, then ``round(val_fraction * rest)`` of the other
  folds' images go to ``val``. The fold is the *test* set, so the ``folds`` runs of a sweep test every image
  exactly once (the mean over folds estimates test accuracy on all the data); model selection (best epoch,
  early stopping) still uses a separate ``val`` set and never sees the test fold. The fold assignment
  depends only on the seed and the class sizes, never on ``split.fold``, so the folds of one sweep are
  disjoint.
- ``disjoint``: the class-disjoint protocol of the retrieval papers. Classes split by id: official class numbers
  1..``disjoint_at`` form the train half (all their photos, official train and test pooled; per class
  ``round(val_fraction * n)`` become ``val``, the rest ``train``), every photo of the later classes is ``test``.
  With ``split.disjoint_val: classes`` val is instead ``round(val_fraction * disjoint_at)`` whole train-half classes
  (a seeded draw, at least one, never all): model selection then scores retrieval on classes training never saw,
  as the test does (:func:`val_classes`).
  Trained models never see a test class, so test-set classification is undefined; the test photos are scored by
  leave-one-out retrieval among themselves (:mod:`carbench.retrieval.loo`). ``protocol.json`` records the split
  point for the later stages (:func:`read_protocol`).

Per-class stratification is our own (works for classes of 1-3 images): deterministic for a seed (classes are
visited in class-id order, each shuffled by one ``numpy.random.default_rng(seed)`` stream). Every class must
reach every split, else a DataError names the classes, unless ``split.allow_missing_classes`` (then a warning
and a list in the metrics).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..config import SPLITS, Params, SplitConfig
from ..core.errors import DataError, DataWarning
from ..core.io import atomic_dir, write_json
from ..core.runtime import configure
from .raw import read_classes, read_manifest
from .store import CLASSIFICATION, DISJOINT

SPLIT_CSV = "split.csv"
#: The evaluation protocol of the split (:func:`write_protocol`): which classes training learns.
PROTOCOL_JSON = "protocol.json"
MAX_NAMED_CLASSES = 8  # in messages; the metrics list them all


def holdout_count(n: int, fraction: float) -> int:
    """How many of ``n`` images to hold out: ``round(fraction * n)``, kept within 1..n-1 when n >= 2."""
    if n < 2:
        return 0
    return min(max(int(round(fraction * n)), 1), n - 1)


def _hold_out(indices: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``indices`` and split them into (kept, held out)."""
    shuffled = rng.permutation(indices)
    k = holdout_count(len(shuffled), fraction)
    return shuffled[k:], shuffled[:k]


def assign_splits(class_ids: np.ndarray, official_split: np.ndarray, cfg: SplitConfig, seed: int) -> np.ndarray:
    """Split names (``train``/``val``/``test``) for each row, stratified per class.

    ``class_ids``: (N,) ints; ``official_split``: (N,) ``"train"``/``"test"``. Returns an (N,) object array.
    """
    rng = np.random.default_rng(seed)
    out = np.full(len(class_ids), "train", dtype=object)
    if cfg.strategy == DISJOINT:
        out[class_ids >= cfg.disjoint_at] = "test"     # ids are 0-based: official class disjoint_at + 1 onwards
        if cfg.disjoint_val == "classes":
            out[np.isin(class_ids, val_classes(cfg, rng))] = "val"
            return out
        for c in np.unique(class_ids[class_ids < cfg.disjoint_at]):
            _, val = _hold_out(np.flatnonzero(class_ids == c), cfg.val_fraction, rng)
            out[val] = "val"
        return out
    if cfg.strategy == "kfold":
        folds = fold_ids(class_ids, cfg.folds, rng)      # first, so the val draws cannot shift the folds
        out[folds == cfg.fold] = "test"
        for c in np.unique(class_ids):
            pool = np.flatnonzero((class_ids == c) & (folds != cfg.fold))
            _, val = _hold_out(pool, cfg.val_fraction, rng)
            out[val] = "val"
        return out
    for c in np.unique(class_ids):
        rows = np.flatnonzero(class_ids == c)
        if cfg.strategy == "official":
            out[rows[official_split[rows] == "test"]] = "test"
            pool = rows[official_split[rows] != "test"]
        else:
            pool, test = _hold_out(rows, cfg.test_fraction, rng)
            out[test] = "test"
        _, val = _hold_out(pool, cfg.val_fraction, rng)
        out[val] = "val"
    return out


def val_classes(cfg: SplitConfig, rng: np.random.Generator) -> np.ndarray:
    """``split.disjoint_val: classes``: the sorted ids of the train-half classes held out whole as val,
    ``holdout_count(disjoint_at, val_fraction)`` of them drawn from ``rng``."""
    return np.sort(rng.permutation(cfg.disjoint_at)[:holdout_count(cfg.disjoint_at, cfg.val_fraction)])


def fold_ids(class_ids: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Per row, its fold ``0..folds-1``: per class (in class-id order) a shuffle dealt round-robin."""
    out = np.zeros(len(class_ids), dtype=np.int64)
    for c in np.unique(class_ids):
        rows = rng.permutation(np.flatnonzero(class_ids == c))
        out[rows] = np.arange(len(rows)) % folds
    return out


def missing_classes(class_ids: np.ndarray, splits: np.ndarray, class_names: list[str],
                    train_classes: int = 0, held_out: Sequence[int] = ()) -> dict[str, list[str]]:
    """For each split, the classes (as ``"<id> <name>"``) with no image there; with ``train_classes`` (disjoint)
    only the classes that split should hold: ids below it in train and val, the others in test; with
    ``held_out`` (val classes held out whole) those in val and the other train-half classes in train."""
    missing = {}
    for split in SPLITS:
        present = set(np.unique(class_ids[splits == split]).tolist())
        expected: Sequence[int] = range(len(class_names))
        if train_classes:
            expected = range(train_classes, len(class_names)) if split == "test" else range(train_classes)
        if len(held_out) and split != "test":
            expected = [c for c in expected if (c in set(held_out)) == (split == "val")]
        absent = [f"{c} {class_names[c]}" for c in expected if c not in present]
        if absent:
            missing[split] = absent
    return missing


def split_counts(class_ids: np.ndarray, splits: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Images per class in each split: ``{split: (C,) int array}``."""
    return {s: np.bincount(class_ids[splits == s], minlength=num_classes) for s in SPLITS}


def _check_missing(missing: dict[str, list[str]], allow: bool, where: Path) -> None:
    if not missing:
        return
    text = "; ".join(f"{split}: {', '.join(names[:MAX_NAMED_CLASSES])}"
                     + (f" and {len(names) - MAX_NAMED_CLASSES} more" if len(names) > MAX_NAMED_CLASSES else "")
                     for split, names in missing.items())
    if not allow:
        raise DataError(f"{where}: some classes have no image in a split ({text}); use more data, or set "
                        "split.allow_missing_classes: true for a small subset")
    warnings.warn(f"classes missing from a split ({text})", DataWarning, stacklevel=3)


def write_split(cfg: SplitConfig, seed: int, raw_dir: str | Path, out_dir: str | Path,
                metrics_path: Optional[str | Path], plot_path: Optional[str | Path]) -> dict[str, Any]:
    """The split stage's work: write ``split.csv``, the metrics and the class-distribution plot.

    Returns the metrics (counts per split, classes per split, missing classes).
    """
    started = time.perf_counter()
    manifest = read_manifest(raw_dir)
    names = read_classes(raw_dir)["class_names"]
    class_ids = manifest["class_id"].to_numpy(dtype=np.int64)
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= len(names)):
        raise DataError(f"{Path(raw_dir) / 'manifest.csv'}: class_id outside 0..{len(names) - 1}")
    train_classes = check_disjoint_at(cfg, len(names), Path(raw_dir) / "classes.json")
    splits = assign_splits(class_ids, manifest["official_split"].to_numpy(), cfg, seed)
    held_out = (np.unique(class_ids[splits == "val"]).tolist()
                if train_classes and cfg.disjoint_val == "classes" else [])
    missing = missing_classes(class_ids, splits, names, train_classes, held_out)
    _check_missing(missing, cfg.allow_missing_classes, Path(raw_dir) / "manifest.csv")
    with atomic_dir(out_dir) as tmp:
        frame = manifest[["image", "class_id"]].assign(split=splits)
        frame.to_csv(tmp / SPLIT_CSV, index=False)
        write_protocol(tmp, train_classes)
    per_class = split_counts(class_ids, splits, len(names))
    if plot_path is not None:
        from .previews import plot_class_distribution

        plot_class_distribution(per_class, names, plot_path)
    metrics = {"strategy": cfg.strategy, "seed": seed,
               **({"folds": cfg.folds, "fold": cfg.fold} if cfg.strategy == "kfold" else {}),
               **({"disjoint_at": cfg.disjoint_at, "disjoint_val": cfg.disjoint_val} if train_classes else {}),
               **({"val_classes": [names[c] for c in held_out]} if held_out else {}),
               "counts": {s: int(per_class[s].sum()) for s in SPLITS},
               "classes": {s: int((per_class[s] > 0).sum()) for s in SPLITS}, "num_classes": len(names),
               "missing_classes": missing, "seconds": round(time.perf_counter() - started, 3)}
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    print(f"split ({cfg.strategy}): " + ", ".join(f"{s} {metrics['counts'][s]}" for s in SPLITS) + f" -> {out_dir}")
    return metrics


def check_disjoint_at(cfg: SplitConfig, num_classes: int, where: Path) -> int:
    """How many leading class ids the train half holds: ``split.disjoint_at`` under ``disjoint``, else 0 (all
    classes are trained and tested). DataError when the split point leaves a half empty."""
    if cfg.strategy != DISJOINT:
        return 0
    if cfg.disjoint_at >= num_classes:
        raise DataError(f"split.disjoint_at ({cfg.disjoint_at}) leaves no test class: {where} lists {num_classes} "
                        f"classes; set it below {num_classes} (e.g. {num_classes // 2})")
    return cfg.disjoint_at


def write_protocol(split_dir: str | Path, train_classes: int) -> None:
    """``protocol.json``: ``{"protocol": "classification"}``, or ``disjoint`` with ``train_classes`` (class ids
    0..train_classes-1 are the train half). The crop stage copies it into the crop store's meta."""
    protocol = {"protocol": DISJOINT, "train_classes": int(train_classes)} if train_classes else \
        {"protocol": CLASSIFICATION}
    write_json(Path(split_dir) / PROTOCOL_JSON, protocol)


def read_protocol(split_dir: str | Path) -> int:
    """The train half's class count of a disjoint split, 0 for the classification protocol (also for a split
    directory written before ``protocol.json`` existed)."""
    from ..core.io import read_json

    path = Path(split_dir) / PROTOCOL_JSON
    if not path.is_file():
        return 0
    protocol = read_json(path)
    if protocol.get("protocol") == DISJOINT:
        return int(protocol["train_classes"])
    return 0


def read_split(split_dir: str | Path, manifest=None):
    """``split.csv`` as a DataFrame; when ``manifest`` is given, check it is row-aligned with it."""
    import pandas as pd

    path = Path(split_dir) / SPLIT_CSV
    if not path.is_file():
        raise DataError(f"{path} not found: run the split stage first")
    frame = pd.read_csv(path, dtype={"image": str, "split": str}, keep_default_na=False)
    for column in ("image", "class_id", "split"):
        if column not in frame.columns:
            raise DataError(f"{path}: missing column {column!r}")
    bad = sorted(set(frame["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"{path}: unknown split name(s) {bad}")
    if manifest is not None and not frame["image"].equals(manifest["image"]):
        raise DataError(f"{path} does not match the manifest row for row; rerun the split stage")
    return frame


def run(params: Params, raw_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
        plot_path: str | Path) -> dict[str, Any]:
    """Stage entry point (stages/split.py): seed, then :func:`write_split` with the ``split`` section."""
    configure(params.base.seed, params.base.threads, use_torch=False)
    return write_split(params.split, params.base.seed, raw_dir, out_dir, metrics_path, plot_path)
