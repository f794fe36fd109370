"""The evaluate stage: one code path for all nine experiments (classifier or k-NN predictor).

Outputs (docs/ARCHITECTURE.md §8): ``metrics/eval/<name>.json`` (flat numbers), the tables dir
``metrics/eval/<name>/`` (``per_class.csv``, ``confused_pairs.csv``, ``predictions.csv``: per test image) and the plots dir
``plots/eval/<name>/`` (``confusion.csv`` for DVC's confusion template, ``confusion.png``,
``misclassified.png``).

Under the class-disjoint protocol (a crop store with ``train_classes``, ``split.strategy: disjoint``) the test classes
were never trained, so no classification number is written (:data:`carbench.retrieval.loo.UNDEFINED_LINE` stands
in its place): every experiment is scored by leave-one-out retrieval among the test photos
(:mod:`carbench.retrieval.loo`): a retrieval experiment on its stored embeddings, a trained one on its L2-normalised
backbone features. The tables dir then holds ``retrieval.csv`` (per query image: Recall@K hits, AP@R, the nearest
photo's class), and the plots show the nearest-neighbour confusion and the queries whose nearest photo has another
class.
"""
from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core import metrics as M
from ..core import timing
from . import plots
from ..config import Params, experiment
from ..core.errors import UserError
from ..core.io import atomic_dir, write_json
from ..retrieval import loo
from ..retrieval.embedding_store import as_stored
from ..retrieval.predictor import KnnPredictor, Predictor, load_predictor
from ..data.store import DISJOINT, StoreMeta, load_meta, load_split
from .stats import RETRIEVAL_CSV
from ..core.runtime import configure, select_device

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
                n_misclassified: int, plots_dir: str | Path, nearest: bool = False) -> None:
    """confusion.csv / confusion.png / misclassified.png into ``plots_dir`` (replaced atomically). ``nearest``:
    ``probs`` is one-hot on the class of each query's nearest other photo (leave-one-out retrieval)."""
    preds = probs.argmax(axis=1)
    cm = M.confusion_matrix(labels, preds, len(class_names))
    wrong = misclassified_indices(probs, labels, n_misclassified)
    captions = [f"true: {class_names[labels[i]]}\n" + (f"nearest: {class_names[preds[i]]}" if nearest else
                                                       f"pred: {class_names[preds[i]]} ({probs[i, preds[i]]:.2f})")
                for i in wrong]
    titles = ((f"Nearest-photo confusion (leave-one-out): {name}", f"{name}: {len(wrong)} queries whose nearest "
               "photo has another class") if nearest else
              (f"Confusion matrix: {name}", f"{name}: {len(wrong)} most confident mistakes"))
    with atomic_dir(plots_dir) as tmp:
        write_confusion_csv(labels, preds, class_names, tmp / "confusion.csv")
        plots.plot_confusion(cm, class_names, tmp / "confusion.png", titles[0])
        plots.image_grid(np.asarray(images[wrong]), captions, tmp / "misclassified.png", titles[1])


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
#: The headline under the class-disjoint protocol, where no classification number exists.
DISJOINT_HEADLINE = ("recall_at_1", "map_at_r")
HEADLINE_DIGITS = 4


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one evaluation result."""
    keys = DISJOINT_HEADLINE if result.get("protocol") == DISJOINT else HEADLINE_METRICS
    return {key: round(float(result[key]), HEADLINE_DIGITS) for key in keys}


def test_embeddings(predictor: Predictor, test: Any, batch_size: int) -> tuple[np.ndarray, str, str]:
    """The test photos in a retrieval space, for leave-one-out scoring: (vectors, metric, what they are).

    A k-NN model's gallery is the test split's stored embeddings under this protocol (checked row for row); a
    classifier embeds them now with its backbone features, L2-normalised (the embed stage's defaults), or with its
    embedding when its head has one."""
    if isinstance(predictor, KnnPredictor):
        knn = predictor.knn
        if len(knn.gallery_labels) != len(test.labels) or not np.array_equal(knn.gallery_labels, test.labels):
            raise UserError("the k-NN model's gallery is not the test split of the crop store (it was fitted under "
                            "the classification protocol?); re-run embed and knn (dvc repro)")
        return knn.gallery, knn.config.metric, f"its k-NN space ({knn.info.get('layer')} features)"
    # a head with an embedding (model.embedding_dim, metric-learning losses) is scored on it: what it was trained for
    layer = "penultimate" if getattr(predictor.model, "embedding_dim", 0) else "backbone"
    parts = [as_stored(predictor.embed(np.ascontiguousarray(test.images[i:i + batch_size]), layer), True)
             for i in range(0, len(test.labels), batch_size)]
    space = "its embedding (model.embedding_dim)" if layer == "penultimate" else "backbone features, L2-normalised"
    return np.concatenate(parts), "euclidean", space


def write_retrieval_table(images: list[str], labels: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> None:
    """:data:`carbench.report.stats.RETRIEVAL_CSV`: per query image its class and leave-one-out scores, which
    aggregate bootstraps (carbench.report.stats)."""
    import pandas as pd

    pd.DataFrame({"image": images, "true": labels, **scores}).to_csv(path, index=False)


def evaluate_disjoint(name: str, exp: Any, cfg: Any, predictor: Predictor, test: Any, crops_dir: str | Path,
                      tables_dir: str | Path, plots_dir: str | Path, device: Any) -> dict[str, Any]:
    """The class-disjoint protocol's evaluation: leave-one-out retrieval among the test photos; no classification
    number (the test classes were never trained)."""
    from ..data.store import load_meta

    labels = np.asarray(test.labels, dtype=np.int64)
    start = time.perf_counter()
    vectors, metric, space = test_embeddings(predictor, test, cfg.batch_size)
    seconds = time.perf_counter() - start
    ks = (predictor.knn.config.retrieval_ks if isinstance(predictor, KnnPredictor) else loo.DEFAULT_KS)
    scores = loo.loo_scores(vectors, labels, metric, ks, device=device)
    result: dict[str, Any] = {"config": exp.config, "kind": predictor.kind, "protocol": DISJOINT,
                              "classification": loo.UNDEFINED_LINE, "retrieval_space": space,
                              "num_test": int(len(labels)), "num_classes": int(len(np.unique(labels))),
                              "train_classes": load_meta(crops_dir).train_classes, "device": str(device)}
    result.update(loo.loo_means(scores))
    result.update({"params_count": predictor.num_parameters, "size_mb": predictor.size_bytes / BYTES_PER_MB,
                   "latency_ms": measure_latency_ms(predictor, np.ascontiguousarray(test.images[:1]),
                                                    cfg.latency_warmup, cfg.latency_runs, cfg.latency_budget_s)})
    if not isinstance(predictor, KnnPredictor):     # a k-NN model's stored gallery is read, not embedded
        result["images_per_second"] = len(labels) / max(seconds, 1e-9)
    nearest = scores.pop(loo.NEAREST_COLUMN)
    class_names = list(load_meta(crops_dir).class_names)
    with atomic_dir(tables_dir) as tmp:
        write_retrieval_table(test.names, labels, {**scores, loo.NEAREST_COLUMN: nearest}, tmp / RETRIEVAL_CSV)
    onehot = np.eye(len(class_names), dtype=np.float32)[nearest]
    write_plots(name, test.images, labels, onehot, class_names, cfg.misclassified, plots_dir, nearest=True)
    print(f"evaluate@{name}: {loo.UNDEFINED_LINE}; leave-one-out over {len(labels)} test photos: "
          + ", ".join(f"{k} {v:.4f}" for k, v in loo.loo_means({**scores}).items()))
    return result


def evaluate_experiment(params: Params, name: str, crops_dir: str | Path, models_root: str | Path,
                        metrics_path: str | Path, plots_dir: str | Path, tables_dir: str | Path,
                        headline_path: str | Path, device: Any) -> dict[str, Any]:
    """The evaluate stage for experiment ``name``: predict the test crops, write every output."""
    exp, cfg = experiment(params, name), params.evaluate
    predictor = load_predictor(Path(models_root) / name, device, models_root)
    test = load_split(crops_dir, TEST_SPLIT, mmap=True)
    if len(test.labels) == 0:
        raise UserError(f"{crops_dir}: the test split is empty; nothing to evaluate")
    meta = load_meta(crops_dir)
    _check_classes(predictor, meta, crops_dir, name)
    # What the summary's published anchors are compared on; an untrained embedder (dag.pretrained) records no
    # training data, so the row's photos are those of the crop store it is scored on.
    facts = {**predictor.model_facts,
             "model_data_source": predictor.model_facts.get("model_data_source") or meta.source}
    if meta.disjoint:
        timing.record(images=int(len(test.labels)))
        result = evaluate_disjoint(name, exp, cfg, predictor, test, crops_dir, tables_dir, plots_dir, device)
        result.update(facts)
        write_json(metrics_path, result)
        write_json(headline_path, headline(result))
        return result
    probs, seconds = predict_batches(predictor, test.images, cfg.batch_size, cfg.tta)
    labels = np.asarray(test.labels, dtype=np.int64)
    timing.record(images=int(len(labels)))
    result: dict[str, Any] = {"config": exp.config, "kind": predictor.kind, "num_test": int(len(labels)),
                              "num_classes": len(predictor.class_names), "tta": cfg.tta, "device": str(device),
                              **facts}
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


def _check_classes(predictor: Predictor, meta: StoreMeta, crops_dir: str | Path, name: str) -> None:
    """The model must predict the crop store's classes, in the same order (a classifier under the disjoint
    protocol: the train half's)."""
    stored = list((meta if isinstance(predictor, KnnPredictor) else meta.trained()).class_names)
    if list(predictor.class_names) != stored:
        raise UserError(f"models/{name} was trained on classes that differ from {crops_dir}/meta.json "
                        f"({len(predictor.class_names)} vs {len(stored)} classes); re-run its training")


def run(params: Params, name: str, crops_dir: str | Path, models_root: str | Path, metrics_path: str | Path,
        plots_dir: str | Path, tables_dir: str | Path, headline_path: str | Path) -> dict[str, Any]:
    """Stage entry point (stages/evaluate.py): seed, pick the device, then :func:`evaluate_experiment`."""
    configure(params.base.seed, params.base.threads)
    return evaluate_experiment(params, name, crops_dir, models_root, metrics_path, plots_dir, tables_dir,
                               headline_path, select_device(params.base.device))
