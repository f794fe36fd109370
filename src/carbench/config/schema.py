"""The schema of ``params.yaml``: one frozen dataclass per section, one field per key.

Field metadata carries each key's doc string (``doc``, from which ``python -m carbench.workshop.reference`` writes
docs/params.md) and its constraints: ``choices``, ``min``/``max`` (inclusive) and ``gt``/``lt`` (exclusive), which
:func:`carbench.config.validate.build` applies. A section's ``check(where)`` holds the rules that span keys.
``read_when=(key, values)``: the code reads the field only while the sibling ``key`` has one of ``values``
(:mod:`carbench.config.reach` refuses a ``-S`` that sets it otherwise: it would change nothing).
Names that need torchvision (``model.arch``, ``model.weights``) are checked by the resolve stage instead
(:mod:`carbench.model.names`): this module must load without torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..core.errors import ConfigError


def _f(default: Any = dataclasses.MISSING, *, doc: str, factory: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A dataclass field with its doc string (required: docs/params.md is generated from it, carbench.workshop.reference)
    and metadata: validation (choices, min, max, gt, lt) and ``read_when``; ``factory`` for a mutable default."""
    if not doc.strip():
        raise TypeError("every schema field needs a doc string")
    return field(default=default, default_factory=factory, metadata={"doc": doc, **meta})


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class BaseConfig:
    """Settings every stage shares."""

    seed: int = _f(min=0, doc="one seed for every stage (split, synthetic data, init, augmentation, k-NN ties)")
    device: str = _f(choices=("auto", "cuda", "cuda:auto", "cpu"),
                     doc="auto = cuda when available; cuda:auto = claim a GPU no other carbench process holds "
                         "(e.g. one per `dvc queue start -j N` worker; carbench.core.runtime.claim_gpu)")
    threads: int = _f(min=0, doc="CPU threads for torch; 0 = all cores")
    offline: bool = _f(doc="true: never download (data or weights); HF_HUB_OFFLINE=1 / CARBENCH_OFFLINE=1 do "
                           "the same (carbench.core.runtime.is_offline)")
    gpus: int = _f(1, min=1, doc="train@: N > 1 runs N DDP processes under torchrun (one per GPU; on CPU: N gloo "
                                 "processes); train.batch_size is the global batch and must be divisible by N")
    nodes: int = _f(1, min=1, doc="train@: M > 1 runs base.gpus processes on each of M nodes (torchrun, c10d "
                                  "rendezvous); the launcher must start the stage once per node (e.g. srun); "
                                  "train.batch_size must be divisible by gpus x nodes (docs/cluster.md)")
    rdzv_endpoint: Optional[str] = _f(None, doc="train@ with nodes > 1: host:port where the nodes meet; under srun "
                                                "the node srun ran on is used instead (its port is kept if given)")
    launcher: str = _f("python", doc="train@'s command in dvc.yaml starts with it: python, or e.g. `srun "
                                     "--ntasks-per-node=1 python` for base.nodes > 1 on SLURM (docs/cluster.md)")


@dataclass(frozen=True)
class SyntheticConfig:
    """The generated dataset of `data.source: synthetic` (carbench.download.synthetic)."""

    num_classes: int = _f(min=2, max=196, doc="classes generated")
    train_per_class: int = _f(min=2, doc="train images per class")
    test_per_class: int = _f(min=1, doc="test images per class")
    min_size: int = _f(min=32, doc="photo side lengths are drawn from [min_size, max_size] pixels")
    max_size: int = _f(min=32, doc="largest photo side (pixels); >= min_size")
    grayscale_fraction: float = _f(min=0.0, max=1.0, doc="share of photos made grayscale (colour alone must not "
                                                         "tell the class)")

    def check(self, where: str) -> None:
        if self.max_size < self.min_size:
            raise ConfigError(f"{where}.max_size ({self.max_size}) must be >= {where}.min_size ({self.min_size})")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from. The routes `auto` tries and the fingerprint they must match are the code's
    data, in src/carbench/resources/sources.yaml (carbench.download.sources): add a route there."""

    source: str = _f(choices=("auto", "local", "synthetic"),
                     doc="auto: try the routes of src/carbench/resources/sources.yaml in order | local: data.path "
                         "| synthetic: the generated dataset")
    path: Optional[str] = _f(doc="local source: torchvision stanford_cars dir, car_ims/ + cars_annos.mat, "
                                 "archives, parquet, class folders", read_when=("source", ("local",)))
    cache_dir: str = _f(doc="where URL downloads land (resumable, outside DVC outputs); kagglehub/HF keep their "
                            "own caches")
    skip_bad_images: bool = _f(doc="true: drop unreadable/invalid images and list them in metrics/data.json")
    timeout_s: float = _f(gt=0.0, doc="network timeout per request (seconds)", read_when=("source", ("auto",)))
    synthetic: SyntheticConfig = _f(doc="the generated dataset", read_when=("source", ("synthetic",)))
    extra: Optional[str] = _f(None, doc="a folder of <class name>/*.jpg (+ optional boxes.csv): new classes after "
                                        "the official ones (carbench.download.extra)")

    def check(self, where: str) -> None:
        if self.source == "local" and not self.path:
            raise ConfigError(f"{where}.path must name a directory when {where}.source is 'local'")


#: The splits every image is assigned to (split stage) and the crop store holds (store), in this order.
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """How the labelled images become train / val / test (carbench.data.split)."""

    strategy: str = _f(choices=("official", "pooled", "kfold", "disjoint"),
                       doc="official: official test set, val from official train | pooled: pool all, "
                           "test_fraction then val | kfold: pool all, per class `folds` seeded folds; fold `fold` "
                           "is test, val from the rest | disjoint: the retrieval papers' class-disjoint protocol, "
                           "classes 1..disjoint_at (all their photos) train and val, every photo of the later "
                           "classes test (docs/retrieval_eval.md)")
    val_fraction: float = _f(gt=0.0, lt=1.0, doc="per class, this share of the non-test images becomes val")
    test_fraction: float = _f(gt=0.0, lt=1.0, doc="pooled only: per class, this share of the images becomes test",
                              read_when=("strategy", ("pooled",)))
    allow_missing_classes: bool = _f(doc="true: a class too small to reach every split only warns (small subsets)")
    folds: int = _f(5, min=2, doc="kfold only: number of folds (per class, seeded by base.seed)",
                    read_when=("strategy", ("kfold",)))
    fold: int = _f(0, min=0, doc="kfold only: which fold is the test set (0..folds-1); sweep it with "
                                 "`dvc exp run --queue`", read_when=("strategy", ("kfold",)))
    disjoint_at: int = _f(98, min=1, doc="disjoint only: the last official class number of the train half "
                                         "(98: classes 1-98 train, 99-196 test, as published)",
                          read_when=("strategy", ("disjoint",)))
    disjoint_val: str = _f("photos", choices=("photos", "classes"),
                           doc="disjoint only: photos: val is val_fraction of each train-half class's photos | "
                               "classes: val is round(val_fraction x disjoint_at) whole train-half classes (seeded), "
                               "never trained, so model selection scores retrieval on unseen classes as the test "
                               "does (train.select)", read_when=("strategy", ("disjoint",)))

    def check(self, where: str) -> None:
        if self.fold >= self.folds:
            raise ConfigError(f"{where}.fold must be < {where}.folds ({self.folds}), got {self.fold}")


@dataclass(frozen=True)
class CropConfig:
    """The crop store: every image cut to its box once, as square uint8 crops (carbench.data.crop)."""

    margin: float = _f(min=0.0, max=2.0, doc="fraction of box width/height added on each side, clamped to the "
                                             "image")
    size: int = _f(min=16, max=2048, doc="side of the stored square crops (pixels)")
    keep_aspect: bool = _f(doc="true: pad the box to a square before resizing instead of stretching")
    workers: int = _f(min=0, doc="processes; 0 = all cores")
    preview: int = _f(min=0, doc="crops in plots/crops_preview.png")


#: ``model.arch`` of the configurable scratch CNN (carbench.model.scratch); every other name is a registered
#: backbone family's (carbench.model.backbones).
SCRATCH_ARCH = "cnn"
#: The keys of the scratch CNN: read only for ``arch: cnn``.
_CNN = ("arch", (SCRATCH_ARCH,))


@dataclass(frozen=True)
class ModelConfig:
    """Defaults for every trained experiment; an experiment's `model:` overrides keys."""

    arch: str = _f(doc="torchvision classification model name, or `cnn` (the configurable scratch CNN)")
    weights: str = _f(doc="torchvision weights name (IMAGENET1K_V1 ...), `none`, or a path to a state_dict file")
    freeze: str = _f(choices=("frozen", "partial", "progressive", "full"),
                     doc="frozen: head only | partial: the last trainable_blocks backbone blocks too | "
                         "progressive: one more block every unfreeze_every epochs | full: everything")
    trainable_blocks: int = _f(min=0, doc="partial: last N backbone blocks trainable",
                               read_when=("freeze", ("partial",)))
    unfreeze_every: int = _f(min=1, doc="progressive: unfreeze one more block (top-down) every N epochs",
                             read_when=("freeze", ("progressive",)))
    backbone_lr_mult: float = _f(min=0.0, doc="backbone lr = train.lr * this")
    head_dropout: float = _f(min=0.0, lt=1.0, doc="dropout on the backbone features, before the head")
    head_hidden: int = _f(min=0, doc="0 = linear head; >0 = hidden layer of this width (ReLU)")
    cnn_widths: tuple[int, ...] = _f(doc="cnn: channels per block (number of blocks = length)", read_when=_CNN)
    cnn_convs_per_block: int = _f(min=1, doc="cnn: 3x3 convolutions per block", read_when=_CNN)
    cnn_batch_norm: bool = _f(doc="cnn: batch norm after each convolution", read_when=_CNN)
    cnn_dropout: float = _f(min=0.0, lt=1.0, doc="cnn: dropout after each block", read_when=_CNN)
    cnn_residual: bool = _f(doc="cnn: each block adds a (1x1-projected) shortcut", read_when=_CNN)
    init: str = _f(choices=("default", "he"), doc="he: Kaiming normal for conv/linear of scratch models")
    # The defaults of these two are "off" so that older params files keep their meaning.
    layer_decay: float = _f(1.0, gt=0.0, max=1.0, doc="layer-wise lr decay: backbone block i of n gets "
                                                      "lr * backbone_lr_mult * this**(n-i); 1 = off")
    head_warmup_epochs: int = _f(0, min=0, doc="head only (backbone frozen) for the first N epochs, then the freeze "
                                               "mode applies (with a metric-learning train.loss: the proxies' "
                                               "warm-up of Proxy-Anchor, head and proxies alone)")
    embedding_dim: int = _f(0, min=0, doc="0 = off | N: the head projects the backbone features linearly to N and "
                                          "L2-normalises them (the embedding: embed.layer penultimate reads it); the "
                                          "classifier sits on it. A metric-learning train.loss needs it")

    def check(self, where: str) -> None:
        if self.embedding_dim and self.head_hidden:
            raise ConfigError(f"{where}.embedding_dim and {where}.head_hidden are both the head's inner layer: set "
                              "one of them to 0")
        if self.arch == SCRATCH_ARCH and not self.cnn_widths:
            raise ConfigError(f"{where}.cnn_widths must list at least one block width for arch 'cnn'")
        if any(w < 1 for w in self.cnn_widths):
            raise ConfigError(f"{where}.cnn_widths must be positive, got {list(self.cnn_widths)}")


#: The batch size at which ``train.lr_scaling: linear`` uses ``train.lr`` as it is.
LR_SCALING_BATCH = 256
#: ``train.loss`` values that train an embedding with a pytorch-metric-learning loss (carbench.train.metric_losses).
METRIC_LOSSES = ("proxy_anchor", "multi_similarity", "arcface")
#: ``train.loss`` values whose loss holds a learned vector per class (proxies, ArcFace's class centres).
PROXY_LOSSES = ("proxy_anchor", "arcface")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults for every trained experiment; an experiment's `train:` overrides keys."""

    epochs: int = _f(min=0, doc="training epochs")
    batch_size: int = _f(min=1, doc="training batch (global: split across base.gpus processes)")
    lr: float = _f(gt=0.0, doc="learning rate of the head (the backbone's: times model.backbone_lr_mult)")
    optimizer: str = _f(choices=("sgd", "adam", "adamw", "rmsprop"), doc="the torch optimizer")
    momentum: float = _f(min=0.0, lt=1.0, doc="sgd and rmsprop momentum", read_when=("optimizer", ("sgd", "rmsprop")))
    weight_decay: float = _f(min=0.0, doc="weight decay (not on norm and bias parameters)")
    scheduler: str = _f(choices=("none", "step", "cosine", "plateau"),
                        doc="lr schedule after warm-up (carbench.train.optim); plateau: times gamma after 2 epochs "
                            "without a better val top-1")
    step_size: int = _f(min=1, doc="step: epochs between decays", read_when=("scheduler", ("step",)))
    gamma: float = _f(gt=0.0, max=1.0, doc="step / plateau decay factor", read_when=("scheduler", ("step", "plateau")))
    warmup_epochs: int = _f(min=0, doc="linear lr warm-up over this many epochs (per step)")
    label_smoothing: float = _f(min=0.0, lt=1.0, doc="cross-entropy label smoothing")
    focal_gamma: float = _f(min=0.0, doc=">0: focal loss with this gamma")
    image_size: int = _f(min=16, max=2048, doc="side of the square model input (pixels), for training and "
                                               "inference")
    augment: str = _f(choices=("none", "light", "standard", "strong"),
                      doc="augmentation preset (src/carbench/train/augment.py)")
    randaugment: bool = _f(doc="true: add RandAugment to the preset")
    patience: int = _f(min=0, doc="early stopping on val top-1 after N epochs without improvement; 0 = off")
    amp: bool = _f(doc="bf16/fp16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = _f(doc="channels-last memory for model and batches (CPU and CUDA: faster convolutions)")
    compile: bool = _f(doc="torch.compile the model (CUDA)")
    eval_batch_size: int = _f(min=1, doc="batch size of the validation passes during training")
    feature_cache: bool = _f(doc="frozen backbone + no augmentation: train the head on cached features")
    # The defaults of the keys below are "off" so that older params files keep their meaning.
    refit: bool = _f(False, doc="true: then retrain a fresh model on train+val for the best epoch count (the "
                                "final model)")
    ema_decay: float = _f(0.0, min=0.0, lt=1.0, doc=">0: exponential moving average of the weights, validated "
                                                    "and saved instead; 0 = off")
    crop_scale: Optional[tuple[float, ...]] = _f(None, doc="[lo, hi] random-resized-crop area fraction; null = "
                                                           "the augment preset's")
    crop_ratio: Optional[tuple[float, ...]] = _f(None, doc="[lo, hi] crop aspect ratio (w/h); null = the augment "
                                                           "preset's")
    mixup_alpha: float = _f(0.0, min=0.0, doc=">0: mixup with Beta(alpha, alpha), soft-target loss; 0 = off")
    cutmix_alpha: float = _f(0.0, min=0.0, doc=">0: cutmix (with mixup too: one of the two per batch, 50/50); "
                                               "0 = off")
    cudnn_benchmark: bool = _f(True, doc="CUDA: cuDNN autotunes the full-size training batch (one shape); the "
                                         "last partial batch, validation and inference use cuDNN's heuristics")
    resize_size: int = _f(0, min=0, max=4096, doc="0: images are resized to image_size | N > image_size: resized "
                                                  "to N, then cropped to image_size (training: a random crop, "
                                                  "replacing the augment preset's random-resized crop; evaluation: "
                                                  "the centre crop), as torchvision's Resize(N) + RandomCrop / "
                                                  "CenterCrop")
    lr_scaling: str = _f("none", choices=("none", "linear"), doc="linear: the lr used is lr x batch_size / 256 "
                                                                 "(Goyal et al. 2017, batch_size global)")
    loss: str = _f("cross_entropy", choices=("cross_entropy",) + METRIC_LOSSES,
                   doc="cross_entropy (label smoothing, focal) | a metric-learning loss of pytorch-metric-learning on "
                       "the L2-normalised embedding (model.embedding_dim): proxy_anchor (Kim et al. 2020), "
                       "multi_similarity (Wang et al. 2019, with its pair miner), arcface (Deng et al. 2019); the "
                       "classifier then trains on the detached embedding, a probe that leaves the embedding alone "
                       "(carbench.train.metric_losses)")
    sampler: str = _f("random", choices=("random", "m_per_class"),
                      doc="random: a seeded permutation per epoch | m_per_class: every batch holds batch_size / "
                          "m_per_class classes with m_per_class photos each (pytorch-metric-learning's "
                          "MPerClassSampler; pair-based losses need positives in the batch)")
    m_per_class: int = _f(4, min=1, doc="m_per_class sampler: photos per class in a batch (divides batch_size)",
                          read_when=("sampler", ("m_per_class",)))
    proxy_lr_mult: float = _f(1.0, gt=0.0, doc="lr of the loss's proxies (proxy_anchor) or class centres (arcface) "
                                               "= train.lr x this (Proxy-Anchor trains them 100x faster)",
                              read_when=("loss", PROXY_LOSSES))
    freeze_bn: bool = _f(False, doc="true: BatchNorm layers keep their pretrained statistics and affine parameters "
                                    "while training (the metric-learning papers' frozen BatchNorm)")
    select: str = _f("auto", choices=("auto", "top1", "recall_at_1", "map_at_r"),
                     doc="the val score that picks the best epoch (and drives patience and plateau): top1 | "
                         "recall_at_1 / map_at_r: leave-one-out retrieval among the val photos on the embedding "
                         "(carbench.train.selection) | auto: top1, or map_at_r when val holds only untrained classes "
                         "(split.disjoint_val: classes)")

    def check(self, where: str) -> None:
        for key, hi in (("crop_scale", 1.0), ("crop_ratio", None)):
            value = getattr(self, key)
            if value is None:
                continue
            if len(value) != 2 or not 0 < value[0] <= value[1] or (hi is not None and value[1] > hi):
                bound = f"0 < lo <= hi <= {hi}" if hi is not None else "0 < lo <= hi"
                raise ConfigError(f"{where}.{key} must be [lo, hi] with {bound}, got {list(value)}")
        if self.resize_size and self.resize_size <= self.image_size:
            raise ConfigError(f"{where}.resize_size must be 0 or larger than image_size ({self.image_size}), "
                              f"got {self.resize_size}")
        if self.refit and self.scheduler == "plateau":
            raise ConfigError(f"{where}.refit cannot use scheduler 'plateau' (the refit has no validation split)")
        if self.focal_gamma > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            raise ConfigError(f"{where}.focal_gamma cannot be combined with mixup_alpha / cutmix_alpha (soft targets)")
        if self.metric_loss and (self.mixing or self.focal_gamma > 0):
            raise ConfigError(f"{where}.loss {self.loss!r} takes hard labels: set mixup_alpha, cutmix_alpha and "
                              "focal_gamma to 0")
        if self.sampler == "m_per_class" and self.batch_size % self.m_per_class:
            raise ConfigError(f"{where}.m_per_class ({self.m_per_class}) must divide {where}.batch_size "
                              f"({self.batch_size})")

    @property
    def metric_loss(self) -> bool:
        """``loss`` is a metric-learning loss (an embedding is trained, the classifier is a probe on it)."""
        return self.loss in METRIC_LOSSES

    @property
    def effective_lr(self) -> float:
        """The head's lr the optimizer starts from: ``lr``, times batch_size / 256 under ``lr_scaling: linear``."""
        return self.lr * self.batch_size / LR_SCALING_BATCH if self.lr_scaling == "linear" else self.lr

    @property
    def crop_fraction(self) -> Optional[float]:
        """Side of the crop as a fraction of the image under ``resize_size`` (image_size / resize_size), else None."""
        return self.image_size / self.resize_size if self.resize_size else None

    @property
    def mixing(self) -> bool:
        """Mixup or cutmix is on (training targets become soft)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass(frozen=True)
class EmbedConfig:
    """Defaults for retrieval experiments; an experiment's `embed:` overrides keys."""

    layer: str = _f(choices=("backbone", "penultimate"),
                    doc="backbone: the input of the head | penultimate: after the head's hidden layer")
    l2_normalize: bool = _f(doc="L2-normalise every embedding before it is stored")
    gallery: str = _f(choices=("train", "train+val"), doc="the splits that form the k-NN gallery; the test set "
                                                          "is the query")
    batch_size: int = _f(min=1, doc="images per forward pass")


@dataclass(frozen=True)
class EmbedWithConfig:
    """An entry of `dag.pretrained`: the pretrained weights that embed for a retrieval experiment as they are, with
    no training (a baseline beside the fine-tuned embedders of `dag.retrieval`; no train@ runs for it)."""

    arch: str = _f(doc="torchvision classification model name")
    weights: str = _f(doc="its torchvision weights name (IMAGENET1K_V1 ...) or a path to a state_dict file")
    image_size: int = _f(min=16, max=2048, doc="side of the square model input (pixels)")

    def check(self, where: str) -> None:
        if self.weights == "none":
            raise ConfigError(f"{where}.weights must name pretrained weights (an untrained embedder is random)")
        if self.arch == SCRATCH_ARCH:
            raise ConfigError(f"{where}.arch must be a torchvision model: {SCRATCH_ARCH!r} has no pretrained weights")


@dataclass(frozen=True)
class KnnConfig:
    """Defaults for retrieval experiments; an experiment's `knn:` overrides keys."""

    k: int = _f(min=1, doc="neighbours that vote")
    metric: str = _f(choices=("euclidean", "cosine"), doc="distance between embeddings")
    weighting: str = _f(choices=("uniform", "distance"), doc="uniform: one vote each | distance: weight 1/d")
    standardize: bool = _f(doc="StandardScaler fitted on the gallery only")
    pca_components: int = _f(min=0, doc="0 = off; PCA fitted on the gallery only")
    backend: str = _f(choices=("auto", "torch", "faiss"),
                      doc="auto = torch; faiss when installed and gallery > faiss_min_gallery")
    faiss_min_gallery: int = _f(min=0, doc="auto: the gallery size above which faiss is used",
                                read_when=("backend", ("auto",)))
    retrieval_ks: tuple[int, ...] = _f(doc="the k of the recall@k metrics")
    classical: str = _f(choices=("none", "logreg", "random_forest"),
                        doc="also fit a classical classifier on the same processed gallery embeddings and score it "
                            "on the queries (its own summary row, with CIs): logreg | random_forest (seeded from "
                            "base.seed)")
    whiten: bool = _f(False, doc="true: PCA-whitening (needs pca_components > 0; fitted on the gallery only)")
    forest_trees: int = _f(100, min=1, doc="random_forest: trees of scikit-learn's RandomForestClassifier",
                           read_when=("classical", ("random_forest",)))

    def check(self, where: str) -> None:
        if not self.retrieval_ks or any(k < 1 for k in self.retrieval_ks):
            raise ConfigError(f"{where}.retrieval_ks must be a non-empty list of positive ints")
        if self.whiten and not self.pca_components:
            raise ConfigError(f"{where}.whiten needs {where}.pca_components > 0 (the components to whiten)")


@dataclass(frozen=True)
class AggregateConfig:
    """Uncertainty in the summary (carbench.report.stats): bootstrap over test images, paired test vs the best.
    Changes no training or evaluation."""

    bootstrap: int = _f(1000, min=0, doc="resamples of the test images for the confidence intervals; 0 = none")
    confidence: float = _f(0.95, gt=0.0, lt=1.0, doc="interval level")
    seed: int = _f(0, min=0, doc="the bootstrap's own seed (not base.seed: no retraining)")


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate@ stages: test-set metrics, latency, tables and plots (carbench.report.evaluate)."""

    batch_size: int = _f(min=1, doc="images per forward pass")
    tta: bool = _f(doc="average with the horizontally flipped crop")
    latency_warmup: int = _f(min=0, doc="untimed one-image predictions before the latency runs")
    latency_runs: int = _f(min=1, doc="timed one-image predictions (the median is reported)")
    misclassified: int = _f(min=0, doc="crops in the misclassified grid")
    confused_pairs: int = _f(min=0, doc="rows of the most-confused class pairs table")
    latency_budget_s: float = _f(5.0, gt=0.0, doc="warm-up + runs stop once this many seconds are spent (at "
                                                  "least one timed run)")


#: The params.yaml sections that are one dataclass each (the experiments and dag sections are not).
SECTION_SCHEMAS: dict[str, type] = {
    "base": BaseConfig, "data": DataConfig, "split": SplitConfig, "crop": CropConfig, "model": ModelConfig,
    "train": TrainConfig, "embed": EmbedConfig, "knn": KnnConfig, "evaluate": EvaluateConfig,
    "aggregate": AggregateConfig,
}


#: Every top-level section of params.yaml, in the file's order.
SECTIONS = ("base", "data", "split", "crop", "model", "train", "embed", "knn", "evaluate", "aggregate",
            "experiments", "dag")


#: Keys that left params.yaml: where they went (a params file from before says so instead of "unknown key").
MOVED_DATA_KEYS = {
    "routes": "the download routes are in src/carbench/resources/sources.yaml (add yours there)",
    "expected": "the dataset fingerprint is in src/carbench/resources/sources.yaml",
}

