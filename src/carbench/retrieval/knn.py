"""The knn stage: exact k-nearest-neighbour retrieval and classification on stored embeddings.

Reads the embedding store (:mod:`carbench.retrieval.embedding_store`, docs/ARCHITECTURE.md §5) and writes the fitted
k-NN model ``models/<name>/knn.{npz,json}`` (§6) and its retrieval metrics.

Processing chain, fitted on the gallery ONLY: stored embedding (float16) -> float32 ->
StandardScaler (``knn.standardize``) -> PCA (``knn.pca_components``; ``knn.whiten`` scales each kept
component to unit variance, sklearn's ``PCA(whiten=True)``, folded into the stored projection) -> L2
normalisation (cosine metric) -> exact search (:mod:`carbench.retrieval.index`: torch chunked matrix products, or
faiss flat index) -> neighbour vote.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..core import metrics as M
from ..config import BaseConfig, KnnConfig, KnnJob, build, to_dict
from .embedding_store import Embeddings, l2_normalize, load_embeddings, read_checked_meta
from ..core.errors import UserError
from . import loo
from .index import ExactIndex, faiss_available, resolve_backend
from ..core.io import atomic_dir, write_json
from ..core.runtime import configure, select_device

KNN_FORMAT = "carbench-knn/1"
KNN_ARRAYS = "knn.npz"
KNN_META = "knn.json"

#: Uniform voting: neighbour j of k gets weight 1 + TIE_BREAK * (k - j) / k, so a tied vote goes
#: to the class with the nearer neighbours instead of the lower class id; probabilities move < 1e-6.
TIE_BREAK = 1e-6
#: Iteration cap for the optional logistic-regression baseline (lbfgs converges well before).
LOGREG_MAX_ITER = 1000
#: The classical classifier's per-query predictions (``knn.classical``) in the stage's tables dir
#: (``metrics/knn/<name>/``), in the columns of evaluate's ``predictions.csv`` (carbench.report.stats) with
#: ``image`` = the query's row in the test split: aggregate gives the classifier its own row and bootstrap CIs.
CLASSICAL_CSV = "classical_predictions.csv"


# ----------------------------------------------------------------------------- preprocessing
def _empty() -> np.ndarray:
    return np.zeros((0,), dtype=np.float32)


@dataclass
class Preprocessing:
    """Standardise -> PCA -> L2-normalise, with parameters fitted on the gallery only.

    Empty arrays mean "step off". ``pca_components`` is ``(P, D)``; ``apply`` maps ``(N, D)`` to
    ``(N, P)`` (or ``(N, D)`` without PCA).
    """

    scaler_mean: np.ndarray = field(default_factory=_empty)
    scaler_scale: np.ndarray = field(default_factory=_empty)
    pca_mean: np.ndarray = field(default_factory=_empty)
    pca_components: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    normalize: bool = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform raw embeddings ``(N, D)`` into the search space, float32."""
        x = np.asarray(x, dtype=np.float32)
        if self.scaler_mean.size:
            x = (x - self.scaler_mean) / self.scaler_scale
        if self.pca_components.size:
            x = (x - self.pca_mean) @ self.pca_components.T
        if self.normalize:
            x = l2_normalize(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    @property
    def num_parameters(self) -> int:
        """Fitted numbers (scaler and PCA), for the model's parameter count."""
        return int(sum(a.size for a in (self.scaler_mean, self.scaler_scale, self.pca_mean, self.pca_components)))


#: Smallest component variance whitening divides by (a zero-variance direction would blow up).
WHITEN_EPS = 1e-12


def fit_preprocessing(gallery: np.ndarray, cfg: KnnConfig, seed: int) -> Preprocessing:
    """Fit the scaler / PCA of ``cfg`` on ``gallery`` ``(Ng, D)`` only (never on queries)."""
    prep = Preprocessing(normalize=cfg.metric == "cosine")
    x = np.asarray(gallery, dtype=np.float32)
    # scikit-learn is imported only when a step needs it: the import costs 1-2 s, most of a default knn@ run
    if cfg.standardize:
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x)
        prep.scaler_mean, prep.scaler_scale = scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)
        x = (x - prep.scaler_mean) / prep.scaler_scale
    if cfg.pca_components:
        if cfg.pca_components > min(x.shape):
            raise UserError(f"knn.pca_components ({cfg.pca_components}) exceeds min(gallery size, embedding "
                            f"dim) = {min(x.shape)}")
        from sklearn.decomposition import PCA

        # covariance_eigh is exact and fast when there are more samples than dimensions.
        solver = "covariance_eigh" if x.shape[0] >= x.shape[1] else "full"
        pca = PCA(n_components=cfg.pca_components, whiten=cfg.whiten, svd_solver=solver, random_state=seed).fit(x)
        components = pca.components_
        if cfg.whiten:  # sklearn's whitened transform, folded into the projection: one matrix product stays
            components = components / np.sqrt(np.maximum(pca.explained_variance_, WHITEN_EPS))[:, None]
        prep.pca_mean, prep.pca_components = pca.mean_.astype(np.float32), components.astype(np.float32)
    return prep


# ----------------------------------------------------------------------------- voting
def vote(neighbour_labels: np.ndarray, distances: np.ndarray, num_classes: int, weighting: str) -> np.ndarray:
    """Class distribution ``(Nq, C)`` float32 of the neighbours' votes (rows sum to 1).

    uniform: each neighbour counts 1 (plus the tiny TIE_BREAK towards nearer neighbours);
    distance: weight 1/d, and a neighbour at distance 0 takes the whole vote (as scikit-learn).
    """
    n, k = neighbour_labels.shape
    if weighting == "uniform":
        weights = np.broadcast_to(1.0 + TIE_BREAK * (k - np.arange(k)) / k, (n, k))
    else:
        zero = distances <= 0
        with np.errstate(divide="ignore"):
            inverse = 1.0 / distances.astype(np.float64)
        weights = np.where(zero.any(axis=1, keepdims=True), zero.astype(np.float64), inverse)
    probs = np.zeros((n, num_classes), dtype=np.float64)
    np.add.at(probs, (np.repeat(np.arange(n), k), neighbour_labels.reshape(-1)), weights.reshape(-1))
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- the k-NN model (§6)
@dataclass
class KnnModel:
    """A fitted k-NN classifier: processed gallery ``(Ng, D')`` + labels, preprocessing, config.

    ``info`` records where the embeddings came from (embedder, its checkpoint md5, layer, ...).
    """

    gallery: np.ndarray
    gallery_labels: np.ndarray
    gallery_split: np.ndarray
    gallery_row: np.ndarray
    prep: Preprocessing
    config: KnnConfig
    class_names: list[str]
    backend: str
    info: dict = field(default_factory=dict)
    # One search index per device, built on first use: a predictor called image by image must not
    # copy the gallery to the GPU (or rebuild a faiss index) on every call.
    _indexes: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def index(self, device: Any = "cpu") -> ExactIndex:
        """The (cached) :class:`ExactIndex` of the gallery for ``device``."""
        key = str(device)
        if key not in self._indexes:
            self._indexes[key] = ExactIndex(self.gallery, self.config.metric, self.backend, device)
        return self._indexes[key]

    def kneighbors(self, raw: np.ndarray, k: Optional[int] = None, device: Any = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """Distances and gallery indices ``(N, k)`` for raw embeddings ``(N, D)`` (default k = knn.k)."""
        return self.index(device).search(self.prep.apply(raw), k or self.config.k)

    def predict_proba(self, raw: np.ndarray, device: Any = "cpu") -> np.ndarray:
        """Vote distribution ``(N, C)`` float32 for raw embeddings ``(N, D)``."""
        dist, idx = self.kneighbors(raw, device=device)
        return vote(self.gallery_labels[idx], dist, self.num_classes, self.config.weighting)


def fit_knn(emb: Embeddings, cfg: KnnConfig, seed: int) -> KnnModel:
    """Fit preprocessing on the gallery only and build the k-NN model (no query is looked at)."""
    if cfg.k > len(emb.gallery):
        # Checked here, not in params: the gallery size is known only once the data is.
        raise UserError(f"knn.k ({cfg.k}) is larger than the gallery ({len(emb.gallery)} embeddings); "
                        f"lower knn.k or use embed.gallery: train+val")
    prep = fit_preprocessing(emb.gallery, cfg, seed)
    class_names = list(emb.meta.get("class_names") or [])
    if not class_names:
        raise UserError("embedding store meta.json has no class_names (re-run the embed stage)")
    info = {key: emb.meta.get(key) for key in ("experiment", "embedder", "checkpoint", "checkpoint_md5",
                                               "layer", "l2_normalize", "gallery", "image_size", "crop_size")}
    return KnnModel(gallery=prep.apply(emb.gallery), gallery_labels=emb.gallery_labels.astype(np.int64),
                    gallery_split=emb.gallery_split, gallery_row=emb.gallery_row.astype(np.int64), prep=prep,
                    config=cfg, class_names=class_names,
                    backend=resolve_backend(cfg.backend, len(emb.gallery), cfg.faiss_min_gallery), info=info)


def save_knn(model: KnnModel, out_dir: str | Path) -> None:
    """Write ``knn.npz`` (arrays) and ``knn.json`` (config, class names, provenance) into ``out_dir``."""
    out_dir = Path(out_dir)
    p = model.prep
    np.savez(out_dir / KNN_ARRAYS, gallery=model.gallery, gallery_labels=model.gallery_labels,
             gallery_split=model.gallery_split.astype(str), gallery_row=model.gallery_row,
             scaler_mean=p.scaler_mean, scaler_scale=p.scaler_scale, pca_mean=p.pca_mean,
             pca_components=p.pca_components)
    write_json(out_dir / KNN_META, {"format": KNN_FORMAT, "kind": "knn", "config": to_dict(model.config),
                                    "normalize": p.normalize, "backend": model.backend,
                                    "class_names": model.class_names, "num_classes": model.num_classes,
                                    "dim": int(model.gallery.shape[1]), **model.info})


def load_knn(model_dir: str | Path) -> KnnModel:
    """Read a k-NN model written by :func:`save_knn` (error naming the missing/foreign file).

    The stored config is validated like params (:func:`carbench.config.build`): an invalid or unknown
    key raises :class:`carbench.config.ConfigError` naming ``<knn.json>:config.<key>``.
    """
    model_dir = Path(model_dir)
    arrays_path = model_dir / KNN_ARRAYS
    meta_path = model_dir / KNN_META
    meta = read_checked_meta(meta_path, KNN_FORMAT, (meta_path, arrays_path), "k-NN model", "knn")
    cfg = build(KnnConfig, meta["config"], f"{meta_path}:config")
    with np.load(arrays_path, allow_pickle=False) as z:
        prep = Preprocessing(z["scaler_mean"], z["scaler_scale"], z["pca_mean"], z["pca_components"],
                             bool(meta["normalize"]))
        info_keys = ("experiment", "embedder", "checkpoint", "checkpoint_md5", "layer", "l2_normalize",
                     "gallery", "image_size", "crop_size")
        return KnnModel(gallery=z["gallery"], gallery_labels=z["gallery_labels"], gallery_split=z["gallery_split"],
                        gallery_row=z["gallery_row"], prep=prep, config=cfg,
                        class_names=list(meta["class_names"]),
                        # Both backends give the same neighbours, so a model fitted with faiss still
                        # loads where faiss is not installed.
                        backend=meta["backend"] if faiss_available() else "torch",
                        info={k: meta.get(k) for k in info_keys})


# ----------------------------------------------------------------------------- metrics + stage
def retrieval_metrics(model: KnnModel, query: np.ndarray, query_labels: np.ndarray, device: Any = "cpu") -> dict:
    """Retrieval and vote metrics of ``model`` on raw query embeddings ``(Nq, D)``.

    ``query_ms_per_image`` times the model's own query path (preprocess + k-search + vote) over
    all queries at once, divided by Nq; building the index is not timed. A second, deeper search supplies the neighbours for
    recall@K and MAP@R (R = the query class's gallery count).
    """
    cfg = model.config
    model.index(device)   # build the index (gallery upload / faiss add) outside the timed query
    start = time.perf_counter()
    dist, idx = model.kneighbors(query, device=device)
    probs = vote(model.gallery_labels[idx], dist, model.num_classes, cfg.weighting)
    elapsed = time.perf_counter() - start
    class_counts = np.bincount(model.gallery_labels, minlength=model.num_classes)
    depth = max(cfg.k, max(cfg.retrieval_ks), int(class_counts[query_labels].max(initial=0)))
    _, deep_idx = model.kneighbors(query, k=depth, device=device)
    nb_labels = model.gallery_labels[deep_idx]
    out = {"k": cfg.k, "precision_at_k": M.precision_at_k(nb_labels, query_labels, min(cfg.k, depth)),
           "map_at_r": M.map_at_r(nb_labels, query_labels, class_counts),
           "mean_neighbor_distance": float(dist.mean()) if dist.size else float("nan"),
           "query_ms_per_image": 1000.0 * elapsed / max(1, len(query)),
           "top1": M.topk_accuracy(probs, query_labels, 1), "top5": M.topk_accuracy(probs, query_labels, 5),
           "gallery_size": int(len(model.gallery)), "query_size": int(len(query)),
           "dim": int(model.gallery.shape[1]), "backend": model.backend}
    for k in cfg.retrieval_ks:
        out[f"recall_at_{k}"] = M.recall_at_k(nb_labels, query_labels, min(k, depth))
    return out


def classical_predictions(model: KnnModel, query: np.ndarray, seed: int, jobs: int = 1) -> np.ndarray:
    """Class ids ``(Nq,)`` predicted for raw query embeddings by ``knn.classical`` (scikit-learn's
    LogisticRegression or RandomForestClassifier, seeded), fitted on the same processed gallery embeddings as the
    k-NN; ``jobs``: the forest's processes (-1 = all cores)."""
    cfg = model.config
    if cfg.classical == "logreg":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(max_iter=LOGREG_MAX_ITER, random_state=seed)
    elif cfg.classical == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        clf = RandomForestClassifier(n_estimators=cfg.forest_trees, random_state=seed, n_jobs=jobs)
    else:
        raise ValueError(f"knn.classical {cfg.classical!r} names no classifier")
    clf.fit(model.gallery, model.gallery_labels)
    return clf.predict(model.prep.apply(query)).astype(np.int64)


def write_classical(labels: np.ndarray, preds: np.ndarray, path: Path) -> None:
    """:data:`CLASSICAL_CSV`: one row per query (``image`` = its row in the test split)."""
    rows = [f"{i},{int(t)},{int(p)},{int(t == p)}" for i, (t, p) in enumerate(zip(labels, preds))]
    path.write_text("\n".join(["image,true,predicted,correct", *rows]) + "\n")


def fit_and_save(cfg: KnnConfig, embeddings_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
                 seed: int, device: Any = "cpu", tables_dir: Optional[str | Path] = None, jobs: int = 1) -> dict:
    """The knn stage's work: fit on the gallery, score the queries, write ``out_dir`` (§6), the retrieval
    metrics JSON and (``tables_dir``) the classical classifier's predictions; returns the metrics."""
    emb = load_embeddings(embeddings_dir)
    model = fit_knn(emb, cfg, seed)
    disjoint = emb.meta.get("protocol") == "disjoint"   # the test photos alone, scored leave-one-out
    result = loo.knn_loo_metrics(model, device) if disjoint else retrieval_metrics(model, emb.query, emb.query_labels,
                                                                                     device)
    classical = None
    if cfg.classical != "none" and not disjoint:   # a classifier fitted on the queries themselves means nothing
        classical = classical_predictions(model, emb.query, seed, jobs)
        result[f"{cfg.classical}_top1"] = float((classical == emb.query_labels).mean())
        result["classical"] = cfg.classical      # aggregate: the classifier's own summary row
    if tables_dir is not None:
        with atomic_dir(tables_dir) as tmp:   # empty without knn.classical
            if classical is not None:
                write_classical(emb.query_labels, classical, tmp / CLASSICAL_CSV)
    # JSON has no NaN (e.g. MAP@R when no query class occurs in the gallery): write null instead.
    result = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in result.items()}
    with atomic_dir(out_dir) as tmp:
        save_knn(model, tmp)
    write_json(metrics_path, result)
    return result


def run(base: BaseConfig, exp: KnnJob, embeddings_dir: str | Path, out_dir: str | Path,
        metrics_path: str | Path, tables_dir: Optional[str | Path] = None) -> dict:
    """Stage entry point (stages/knn.py): seed, pick the device, then :func:`fit_and_save` with retrieval
    experiment ``exp``'s ``knn`` section."""
    configure(base.seed, base.threads)
    return fit_and_save(exp.knn, embeddings_dir, out_dir, metrics_path, base.seed, select_device(base.device),
                        tables_dir, base.threads or -1)
