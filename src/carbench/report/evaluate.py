"""The evaluate stage: one code path for all nine experiments (classifier or k-NN predictor).

Outputs (docs/ARCHITECTURE.md §8): ``metrics/eval/<name>.json`` (flat numbers), the tables dir
``metrics/eval/<name>/`` (``per_class.csv``, ``confused_pairs.csv``, ``predictions.csv``: per test image) and the plots dir
``plots/eval/<name>/`` (``confusion.csv`` for DVC's confusion template, ``confusion.png``,
``misclassified.png``).
"""
from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from .. import timing
from . import plots
from ..config import Params, experiment
from ..errors import UserError
from ..io import atomic_dir, write_json
from ..retrieval.predictor import Predictor, load_predictor
from ..data.store import load_split
from ..runtime import configure, select_device

TEST_SPLIT = "test"
BYTES_PER_MB = 1e6   # sizes are reported in decimal megabytes
MS_PER_S = 1000.0


def flip_horizontal(images: np.ndarray) -> np.ndarray:
    """Mirror uint8 crops ``(N, H, W, 3)`` left-right (the TTA view)."""
    return np.ascontiguousarray(images[:, :, ::-1, :])


def predict_batches(predictor: Predictor, images: np.ndarray, batch_size: int, tta: bool) -> tuple[np.ndarray, float]:
    """Probabilities ``(N, C)`` float32 for uint8 crops ``(N, S, S, 3)``, and the wall seconds taken.

    With ``tta`` each batch is also predicted mirrored and the two distributions are averaged.
    """
    out = []
    timing.first_batch()
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[i:i + batch_size])
        probs = predictor.predict(batch).numpy()
        if tta:
            probs = (probs + predictor.predict(flip_horizontal(batch)).numpy()) / 2
        out.append(probs.astype(np.float32))
    seconds = time.perf_counter() - start
    if not out:
        return np.zeros((0, len(predictor.class_names)), np.float32), seconds
    return np.concatenate(out), seconds


def measure_latency_ms(predictor: Predictor, image: np.ndarray, warmup: int, runs: int,
                       budget_s: float = float("inf")) -> float:
    """Median wall time (ms) of predicting one crop ``(1, S, S, 3)`` after ``warmup`` calls, in bounded time:
    warm-up and runs stop once ``budget_s`` seconds are spent (one timed run at least).

    ``Predictor.predict`` returns CPU tensors, so every timed call includes the device sync.
    """
    deadline = time.perf_counter() + budget_s
    for _ in range(warmup):
        if time.perf_counter() >= deadline:
            break
        predictor.predict(image)
    times: list[float] = []
    while len(times) < runs and (not times or time.perf_counter() < deadline):
        start = time.perf_counter()
        predictor.predict(image)
        times.append(time.perf_counter() - start)
    return MS_PER_S * statistics.median(times)


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1, top5, loss (clipped NLL, see metrics.nll) and the scikit-learn averages."""
    preds = probs.argmax(axis=1)
    out = {"top1": M.topk_accuracy(probs, labels, 1), "top5": M.topk_accuracy(probs, labels, 5),
           "loss": M.nll(probs, labels)}
    out.update(M.summarize_classification(labels, preds))
    return out


def misclassified_indices(probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of up to ``n`` wrong predictions, most confident mistakes first (ties: lower index)."""
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)
    confidence = probs[wrong, preds[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:n]


def write_confusion_csv(labels: np.ndarray, preds: np.ndarray, class_names: list[str], path: Path) -> None:
    """DVC confusion-template data: columns ``actual,predicted`` (class names), one row per image."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows((class_names[a], class_names[p]) for a, p in zip(labels, preds))


def write_plots(name: str, images: np.ndarray, labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                n_misclassified: int, plots_dir: str | Path) -> None:
    """confusion.csv / confusion.png / misclassified.png into ``plots_dir`` (replaced atomically)."""
    preds = probs.argmax(axis=1)
    cm = M.confusion_matrix(labels, preds, len(class_names))
    wrong = misclassified_indices(probs, labels, n_misclassified)
    captions = [f"true: {class_names[labels[i]]}\npred: {class_names[preds[i]]} ({probs[i, preds[i]]:.2f})"
                for i in wrong]
    with atomic_dir(plots_dir) as tmp:
        write_confusion_csv(labels, preds, class_names, tmp / "confusion.csv")
        plots.plot_confusion(cm, class_names, tmp / "confusion.png", f"Confusion matrix: {name}")
        plots.image_grid(np.asarray(images[wrong]), captions, tmp / "misclassified.png",
                         f"{name}: {len(wrong)} most confident mistakes")


def write_predictions(images: list[str], labels: np.ndarray, preds: np.ndarray, path: Path) -> None:
    """``predictions.csv``: one row per test image (``image``, ``true``, ``predicted`` class ids, ``correct``
    0/1), in the crop store's order: what aggregate bootstraps and pairs experiments on (carbench.report.stats)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "true", "predicted", "correct"])
        writer.writerows((img, int(t), int(p), int(t == p)) for img, t, p in zip(images, labels, preds))


def write_tables(labels: np.ndarray, probs: np.ndarray, class_names: list[str], n_pairs: int,
                 tables_dir: str | Path, images: list[str] | None = None) -> None:
    """per_class.csv, confused_pairs.csv and (with ``images``) predictions.csv into ``tables_dir`` (atomically)."""
    preds = probs.argmax(axis=1)
    cm = M.confusion_matrix(labels, preds, len(class_names))
    with atomic_dir(tables_dir) as tmp:
        M.per_class_table(labels, preds, class_names).to_csv(tmp / "per_class.csv", index=False)
        M.most_confused_pairs(cm, class_names, n_pairs).to_csv(tmp / "confused_pairs.csv", index=False)
        if images is not None:
            write_predictions(list(images), labels, preds, tmp / "predictions.csv")


#: What ``metrics/headline/<name>.json`` holds: the pipeline's only DVC metrics, so `dvc metrics show` and
#: `dvc metrics diff` print what a reviewer compares, a row per experiment, within 120 columns. Rounded, and no
#: timings: those differ between identical runs.
HEADLINE_METRICS = ("top1", "f1_macro")
HEADLINE_DIGITS = 4


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one evaluation result."""
    return {key: round(float(result[key]), HEADLINE_DIGITS) for key in HEADLINE_METRICS}


def evaluate_experiment(params: Params, name: str, crops_dir: str | Path, models_root: str | Path,
                        metrics_path: str | Path, plots_dir: str | Path, tables_dir: str | Path,
                        headline_path: str | Path, device: Any) -> dict[str, Any]:
    """The evaluate stage for experiment ``name``: predict the test crops, write every output."""
    exp, cfg = experiment(params, name), params.evaluate
    predictor = load_predictor(Path(models_root) / name, device, models_root)
    test = load_split(crops_dir, TEST_SPLIT, mmap=True)
    if len(test.labels) == 0:
        raise UserError(f"{crops_dir}: the test split is empty; nothing to evaluate")
    _check_classes(predictor, crops_dir, name)
    probs, seconds = predict_batches(predictor, test.images, cfg.batch_size, cfg.tta)
    labels = np.asarray(test.labels, dtype=np.int64)
    timing.record(images=int(len(labels)))
    result: dict[str, Any] = {"config": exp.config, "kind": predictor.kind, "num_test": int(len(labels)),
                              "num_classes": len(predictor.class_names), "tta": cfg.tta, "device": str(device)}
    result.update(classification_metrics(probs, labels))
    result.update({"params_count": predictor.num_parameters, "size_mb": predictor.size_bytes / BYTES_PER_MB,
                   "latency_ms": measure_latency_ms(predictor, np.ascontiguousarray(test.images[:1]),
                                                    cfg.latency_warmup, cfg.latency_runs, cfg.latency_budget_s),
                   "images_per_second": len(labels) / max(seconds, 1e-9)})
    write_tables(labels, probs, predictor.class_names, cfg.confused_pairs, tables_dir, test.names)
    write_plots(name, test.images, labels, probs, predictor.class_names, cfg.misclassified, plots_dir)
    write_json(metrics_path, result)
    write_json(headline_path, headline(result))
    return result


def _check_classes(predictor: Predictor, crops_dir: str | Path, name: str) -> None:
    """The model must predict the crop store's classes, in the same order."""
    from ..data.store import load_meta

    stored = list(load_meta(crops_dir).class_names)
    if list(predictor.class_names) != stored:
        raise UserError(f"models/{name} was trained on classes that differ from {crops_dir}/meta.json "
                        f"({len(predictor.class_names)} vs {len(stored)} classes); re-run its training")


def run(params: Params, name: str, crops_dir: str | Path, models_root: str | Path, metrics_path: str | Path,
        plots_dir: str | Path, tables_dir: str | Path, headline_path: str | Path) -> dict[str, Any]:
    """Stage entry point (stages/evaluate.py): seed, pick the device, then :func:`evaluate_experiment`."""
    configure(params.base.seed, params.base.threads)
    return evaluate_experiment(params, name, crops_dir, models_root, metrics_path, plots_dir, tables_dir,
                               headline_path, select_device(params.base.device))
