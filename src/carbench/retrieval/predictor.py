"""Predictors: one interface for every experiment (docs/ARCHITECTURE.md §7).

``load_predictor(models/<name>, device, models_root)`` returns a :class:`ClassifierPredictor`
(``best.pt``) or a :class:`KnnPredictor` (``knn.{npz,json}`` + the embedder checkpoint it names,
checked by md5). Both take uint8 crops ``(N, S, S, 3)`` as stored in the crop store, apply the
model's own eval preprocessing (:func:`carbench.model.preprocess.eval_preprocess`: resize to the
checkpoint's ``image_size`` + its mean/std) and return probabilities ``(N, C)`` float32 on the CPU.
The network runs channels-last (faster on CPU too) and, on CUDA, under bf16 autocast (fp16 where bf16 is missing)
when it trained with ``train.amp``, as in training.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..config import EmbedWithConfig, build
from ..core.errors import UserError
from .embedding_store import as_stored
from ..core.io import file_md5
from .knn import KNN_ARRAYS, KNN_META, KnnModel, load_knn

CHECKPOINT = "best.pt"


def as_tensor(images: Any) -> torch.Tensor:
    """uint8 crops as a torch tensor (NumPy arrays, including read-only memory maps, are copied)."""
    if isinstance(images, torch.Tensor):
        return images
    return torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))


class Predictor(ABC):
    """Common interface: ``predict``, ``logits``, ``class_names``, ``num_parameters``, ``size_bytes``,
    ``data_source`` (what the model was trained on, from its checkpoint; "" when it does not say)."""

    kind: str = ""
    data_source: str = ""

    def __init__(self, class_names: Sequence[str], num_parameters: int, size_bytes: int, device: Any) -> None:
        self.class_names = list(class_names)
        self.num_parameters = int(num_parameters)
        self.size_bytes = int(size_bytes)
        self.device = torch.device(device)

    @abstractmethod
    def predict(self, images: Any) -> torch.Tensor:
        """uint8 crops ``(N, S, S, 3)`` -> class probabilities ``(N, C)`` float32 (CPU)."""

    def logits(self, images: Any) -> Optional[torch.Tensor]:
        """Raw scores ``(N, C)`` float32 (CPU), or None when the model has none (k-NN)."""
        return None


class ClassifierPredictor(Predictor):
    """A trained CarNet: softmax of its logits; also the embedder of the retrieval experiments."""

    kind = "classifier"

    def __init__(self, model: torch.nn.Module, ckpt: dict, device: Any, size_bytes: int) -> None:
        from ..model.carnet import count_parameters

        super().__init__(ckpt["class_names"], count_parameters(model), size_bytes, device)
        self.model = model.eval()
        self.data_source = str(ckpt.get("data_source", ""))
        self.image_size = int(ckpt["image_size"])
        self.resize_size = int(ckpt.get("train", {}).get("resize_size", 0))   # train.resize_size: centre crop
        model_cfg = ckpt.get("model", {})
        #: What a published figure is compared on (carbench.report.anchors), as evaluate records it.
        self.model_facts = {"model_arch": model_cfg.get("arch"), "model_freeze": model_cfg.get("freeze", "frozen"),
                            "model_image_size": self.image_size, "model_resize_size": self.resize_size,
                            "model_data_source": self.data_source}
        self.mean, self.std = tuple(ckpt["mean"]), tuple(ckpt["std"])
        self.model.to(memory_format=torch.channels_last)
        self.amp = None   # autocast on CUDA when the model trained with it (``train.amp`` in the checkpoint)
        if self.device.type == "cuda" and ckpt.get("train", {}).get("amp", True):
            self.amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _run(self, fn: Any, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` as float32 on a channels-last input, under autocast on CUDA."""
        x = x.contiguous(memory_format=torch.channels_last)
        if self.amp is None:
            return fn(x).float()
        with torch.autocast("cuda", dtype=self.amp):
            return fn(x).float()

    def _inputs(self, images: Any) -> torch.Tensor:
        """uint8 ``(N, S, S, 3)`` -> normalised float32 ``(N, 3, image_size, image_size)`` on the device."""
        from ..model.preprocess import eval_preprocess

        x = as_tensor(images).to(self.device, non_blocking=True)
        return eval_preprocess(x, self.image_size, self.mean, self.std, self.resize_size)

    @torch.inference_mode()
    def logits(self, images: Any) -> torch.Tensor:
        return self._run(self.model, self._inputs(images)).cpu()

    def predict(self, images: Any) -> torch.Tensor:
        return torch.softmax(self.logits(images), dim=1)

    @torch.inference_mode()
    def embed(self, images: Any, layer: str) -> np.ndarray:
        """Embeddings ``(N, D)`` float32: ``backbone`` = head input, ``penultimate`` = after the hidden layer."""
        fn = self.model.features if layer == "backbone" else self.model.penultimate
        return self._run(fn, self._inputs(images)).cpu().numpy()


class KnnPredictor(Predictor):
    """Embedder + fitted k-NN: the probabilities are the neighbours' vote distribution."""

    kind = "knn"

    def __init__(self, embedder: ClassifierPredictor, knn: KnnModel, size_bytes: int) -> None:
        super().__init__(knn.class_names, embedder.num_parameters + knn.prep.num_parameters, size_bytes,
                         embedder.device)
        self.embedder, self.knn = embedder, knn
        self.model_facts = embedder.model_facts
        self.data_source = embedder.data_source   # the gallery comes from the same crop store

    def embed(self, images: Any) -> np.ndarray:
        """Raw embeddings ``(N, D)`` exactly as the embed stage stores them (layer, L2, float16)."""
        return as_stored(self.embedder.embed(images, self.knn.info["layer"]), bool(self.knn.info["l2_normalize"]))

    def kneighbors(self, images: Any, k: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """Distances and gallery indices ``(N, k)`` of the nearest gallery crops (default k = knn.k)."""
        return self.knn.kneighbors(self.embed(images), k, self.device)

    def predict(self, images: Any) -> torch.Tensor:
        return torch.from_numpy(self.knn.predict_proba(self.embed(images), self.device))


# ----------------------------------------------------------------------------- loading
def load_classifier_predictor(path: str | Path, device: Any) -> ClassifierPredictor:
    """A :class:`ClassifierPredictor` for checkpoint ``path`` (error naming it when missing)."""
    from ..model.checkpoint import load_classifier

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (run the train stage of that experiment first)")
    model, ckpt = load_classifier(path, device)
    return ClassifierPredictor(model, ckpt, device, path.stat().st_size)


def load_pretrained_embedder(spec: EmbedWithConfig, device: Any,
                             offline: bool = False) -> tuple[ClassifierPredictor, Path]:
    """The embedder of a ``dag.pretrained`` experiment (pretrained weights, untrained) and its weights file
    (fetched into the cache as for training, :mod:`carbench.model.weights`)."""
    from ..model.build import build_pretrained
    from ..model.weights import resolve_weights, weights_path

    model = build_pretrained(spec.arch, spec.weights, offline).to(device)
    path = weights_path(resolve_weights(spec.arch, spec.weights, "dag.pretrained"))
    info = {"class_names": [], "image_size": spec.image_size, "mean": list(model.mean), "std": list(model.std),
            "model": {"arch": spec.arch, "freeze": "frozen"}}      # untrained: its model_facts say so
    return ClassifierPredictor(model, info, device, path.stat().st_size), path


def load_knn_predictor(model_dir: Path, device: Any, models_root: Path) -> KnnPredictor:
    """A :class:`KnnPredictor`; its embedder (checkpoint, or pretrained weights file) must still have the md5 it
    was fitted with."""
    knn = load_knn(model_dir)
    embedder = knn.info.get("embedder")
    if isinstance(embedder, dict):     # dag.pretrained: pretrained weights used untrained
        predictor, ckpt_path = load_pretrained_embedder(build(EmbedWithConfig, embedder, f"{model_dir / KNN_META}:"
                                                              "embedder"), device)
    else:
        ckpt_path = models_root / str(embedder) / CHECKPOINT
        if not ckpt_path.is_file():
            raise UserError(f"{model_dir / KNN_META} needs the embedder checkpoint {ckpt_path}, which does not exist")
        predictor = None
    actual, expected = file_md5(ckpt_path), knn.info.get("checkpoint_md5")
    if actual != expected:
        raise UserError(f"{model_dir} is stale: it was fitted on embeddings of {ckpt_path} with md5 {expected}, "
                        f"but that file now has md5 {actual}; re-run embed and knn (dvc repro)")
    size = sum((model_dir / f).stat().st_size for f in (KNN_ARRAYS, KNN_META)) + ckpt_path.stat().st_size
    return KnnPredictor(predictor or load_classifier_predictor(ckpt_path, device), knn, size)


def load_predictor(model_dir: str | Path, device: Any, models_root: str | Path) -> Predictor:
    """The predictor of ``model_dir``: a classifier (``best.pt``) or a k-NN model (``knn.json``)."""
    model_dir, models_root = Path(model_dir), Path(models_root)
    if not model_dir.is_dir():
        raise UserError(f"model directory not found: {model_dir} (train or fit that experiment first)")
    if (model_dir / CHECKPOINT).is_file():
        return load_classifier_predictor(model_dir / CHECKPOINT, device)
    if (model_dir / KNN_META).is_file():
        return load_knn_predictor(model_dir, device, models_root)
    raise UserError(f"{model_dir} holds neither {CHECKPOINT} (classifier) nor {KNN_META} (k-NN model)")
