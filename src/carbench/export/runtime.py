"""Run an exported model the way a deployment would: ``exports/<name>/model.onnx`` on onnxruntime (CPU) or
``model.ts`` on TorchScript, fed by the contract's preprocessing (:mod:`carbench.export.contract`), never by the
checkpoint. ``load_exported(path)`` is what ``carbench-predict --model PATH`` uses; the export stage's parity
check runs the same code before the files are published.

Loading refuses a contract that disagrees with its model file: an ONNX input shape other than the contract's input
size, or outputs on the probe inputs (``probe.npz``) further than :data:`PROBE_ATOL` from PyTorch's (wrong
mean/std, wrong size, a model file from another export).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..core.errors import UserError
from . import contract as C

#: Largest absolute difference from PyTorch's outputs an export may show, on the probe or on the test crops.
PROBE_ATOL = 1e-3
RUNTIMES = {".onnx": "onnx", ".ts": "torchscript"}


class Network:
    """One exported network file: float32 ``(N, 3, H, W)`` in, its output ``(N, D)`` float32 out."""

    def __init__(self, path: Path, contract: dict[str, Any]) -> None:
        self.path, self.runtime = path, RUNTIMES.get(path.suffix)
        if self.runtime is None:
            raise UserError(f"{path}: not an exported model (expected {' or '.join(RUNTIMES)})")
        if not path.is_file():
            raise UserError(f"exported model not found: {path}")
        if self.runtime == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3   # errors only: its graph-optimisation notes are not the user's business
            options.intra_op_num_threads = torch.get_num_threads()   # base.threads, as torch got it
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._check_onnx_input(contract)
        else:
            with warnings.catch_warnings():   # torch 2.14 deprecates TorchScript; its files still load and run
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def _check_onnx_input(self, contract: dict[str, Any]) -> None:
        (spec,) = self.session.get_inputs()
        want = [3, *C.input_size(contract)]
        if list(spec.shape[1:]) != want:
            raise UserError(f"{self.path} takes inputs of shape {spec.shape[1:]} but its {C.CONTRACT} says "
                            f"{want}: the contract does not belong to this model (re-run its export@ stage)")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            return self.session.run(None, {C.INPUT_NAME: x})[0].astype(np.float32)
        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).float().numpy()


class ExportedModel:
    """An export folder's network + contract (+ the k-NN model of a retrieval export), as a predictor:
    ``predict(crops)`` gives class probabilities, like :class:`carbench.retrieval.predictor.Predictor`."""

    def __init__(self, path: Path, contract: dict[str, Any], knn: Any = None) -> None:
        self.contract, self.knn = contract, knn
        self.kind = contract["kind"]
        self.class_names = list(contract["class_names"])
        self.data_source = str(contract.get("data_source", ""))
        self.device = torch.device("cpu")   # onnxruntime's CPU provider; the k-NN search runs beside it
        self.network = Network(path, contract)

    @property
    def crop(self) -> dict[str, Any]:
        """The crop geometry a photo goes through first (margin, size, keep_aspect)."""
        return self.contract["crop"]

    def outputs(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops ``(N, S, S, 3)`` -> the network's raw output (logits or embedding) ``(N, D)``."""
        return self.network(C.preprocess(crops, self.contract))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Retrieval: the embedding as the embed stage stores it (L2 when it was, float16 rounding)."""
        from ..retrieval.embedding_store import as_stored

        return as_stored(self.outputs(crops), bool(self.contract["embedding"]["l2_normalize"]))

    def kneighbors(self, crops: np.ndarray, k: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        return self.knn.kneighbors(self.embed(crops), k)

    def probabilities(self, outputs: np.ndarray) -> torch.Tensor:
        """The network's raw outputs -> class probabilities ``(N, C)`` float32: softmax of the logits, or the
        neighbours' vote on the embedding as stored."""
        if self.knn is not None:
            from ..retrieval.embedding_store import as_stored

            stored = as_stored(outputs, bool(self.contract["embedding"]["l2_normalize"]))
            return torch.from_numpy(self.knn.predict_proba(stored))
        return torch.softmax(torch.from_numpy(outputs), dim=1)

    def predict(self, crops: np.ndarray) -> torch.Tensor:
        """Class probabilities ``(N, C)`` float32 of uint8 crops ``(N, S, S, 3)``."""
        return self.probabilities(self.outputs(crops))

    def check_probe(self, probe: Path) -> float:
        """Max abs difference from PyTorch on the stored probe inputs; refuses above :data:`PROBE_ATOL`."""
        with np.load(probe, allow_pickle=False) as z:
            images, expected = z["images"], z["outputs"]
        try:
            got = self.outputs(images)
        except Exception as exc:   # onnxruntime/TorchScript reject a mis-shaped input with their own types
            raise UserError(f"{self.network.path} cannot run on inputs made as its {C.CONTRACT} says "
                            f"({str(exc).splitlines()[0]}): the contract does not belong to this model") from None
        diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if not diff <= PROBE_ATOL:
            raise UserError(f"{self.network.path} disagrees with PyTorch by {diff:.3g} (> {PROBE_ATOL:g}) on the "
                            f"probe inputs prepared as {C.CONTRACT} says: the contract (input size, mean/std) "
                            "does not match the model; re-run its export@ stage")
        return diff


def load_exported(path: str | Path, check: bool = True) -> ExportedModel:
    """The exported model ``path`` (``.onnx`` or ``.ts``) with the contract beside it; ``check``: run the probe."""
    path = Path(path)
    contract = C.read_contract(path.parent)
    knn = None
    if contract["kind"] == "knn":
        from ..retrieval.knn import load_knn

        knn = load_knn(path.parent)
    model = ExportedModel(path, contract, knn)
    if check:
        model.check_probe(path.parent / contract["files"]["probe"])
    return model
