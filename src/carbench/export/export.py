"""The export stage: one experiment's model as ONNX and TorchScript files, their contract, and a parity check.

``exports/<name>/`` gets ``model.onnx``, ``model.ts``, ``contract.json`` (:mod:`carbench.export.contract`) and
``probe.npz``; a retrieval experiment's folder also gets its fitted k-NN model (``knn.npz``: processed gallery
embeddings, their labels and the scaler/PCA; ``knn.json``: k, metric, class names), so the folder alone predicts.

Parity: every crop of the test split goes through carbench's PyTorch predictor and through each exported file
(prepared as the contract says, on CPU); ``metrics/export/<name>.json`` records the largest absolute difference of
the logits (retrieval: of the embeddings) and the share of test crops whose top-1 class agrees. An export whose
difference exceeds :data:`~carbench.export.runtime.PROBE_ATOL` or whose top-1 agreement is below 100% is refused
(the stage fails and publishes no files), so only files that match leave the pipeline.
"""
from __future__ import annotations

import copy
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import UserError
from ..core.io import atomic_dir, write_json
from ..retrieval.knn import KNN_ARRAYS, KNN_META
from ..retrieval.predictor import ClassifierPredictor, KnnPredictor, Predictor, load_predictor
from ..core.runtime import configure
from . import contract as C
from .runtime import PROBE_ATOL, ExportedModel, load_exported

#: ONNX opset: 17 has every operator the torchvision backbones and the scratch CNN need.
OPSET = 17
#: Seed of the noise probe crop (the probe holds no dataset image: none leaves with the model).
PROBE_SEED = 0
#: Test crops per forward pass during the parity check.
PARITY_BATCH = 64
#: Significant digits of the recorded differences (far below the limit; the same on every run of one model).
DIFF_DIGITS = 2
TEST_SPLIT = "test"


class Embedder(nn.Module):
    """A CarNet's embedding as a module: ``features`` (``embed.layer: backbone``) or ``penultimate``."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x) if self.layer == "backbone" else self.model.penultimate(x)


def network_of(predictor: Predictor) -> tuple[nn.Module, ClassifierPredictor]:
    """The module to export (the classifier, or a retrieval model's embedder) and the classifier predictor it is in."""
    if isinstance(predictor, KnnPredictor):
        return Embedder(predictor.embedder.model, predictor.knn.info["layer"]).eval(), predictor.embedder
    assert isinstance(predictor, ClassifierPredictor)
    return predictor.model, predictor


def reference_outputs(predictor: Predictor, crops: np.ndarray) -> np.ndarray:
    """PyTorch's raw outputs on uint8 crops: the logits, or a retrieval model's embedding before L2/float16."""
    if isinstance(predictor, KnnPredictor):
        return predictor.embedder.embed(crops, predictor.knn.info["layer"])
    return predictor.logits(crops).numpy()


def write_networks(module: nn.Module, image_size: int, output_name: str, out_dir: Path) -> None:
    """``model.onnx`` (batch dimension dynamic, spatial size fixed: the contract's) and ``model.ts``."""
    # A copy: the predictor's own module stays channels-last for the reference outputs.
    module = copy.deepcopy(module).to(memory_format=torch.contiguous_format).float().eval()
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.14 deprecates both the TorchScript-based ONNX exporter and TorchScript itself. That exporter
        # needs no onnxscript and runs in seconds where torch.export's takes far longer on CPU; TorchScript because
        # deployments ask for it. The parity check below proves both files right.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), str(out_dir / C.ONNX_FILE), dynamo=False, opset_version=OPSET,
                          input_names=[C.INPUT_NAME], output_names=[output_name],
                          dynamic_axes={C.INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}})
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(out_dir / C.TORCHSCRIPT_FILE))
    import onnx

    onnx.checker.check_model(str(out_dir / C.ONNX_FILE))


def probe_inputs(size: int) -> np.ndarray:
    """uint8 crops ``(4, size, size, 3)``: black, white, a colour gradient and seeded noise. Far-apart inputs, so
    even an untrained network's outputs move when the contract's size or mean/std is wrong."""
    ramp = np.linspace(0, 255, size)
    gradient = np.stack([np.broadcast_to(ramp, (size, size)), np.broadcast_to(ramp[:, None], (size, size)),
                         np.full((size, size), 128.0)], axis=-1)
    noise = np.random.default_rng(PROBE_SEED).integers(0, 256, (size, size, 3))
    return np.stack([np.zeros((size, size, 3)), np.full((size, size, 3), 255.0), gradient, noise]).astype(np.uint8)


def parity(predictor: Predictor, exported: dict[str, ExportedModel], crops: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per runtime: max abs difference of the raw outputs and top-1 agreement of exported vs PyTorch on ``crops``
    (PyTorch runs once per batch; its top-1 is the pipeline predictor's own prediction)."""
    diff, agree = dict.fromkeys(exported, 0.0), dict.fromkeys(exported, 0)
    for i in range(0, len(crops), PARITY_BATCH):
        batch = np.ascontiguousarray(crops[i:i + PARITY_BATCH])
        ref, ref_top1 = reference_outputs(predictor, batch), predictor.predict(batch).numpy().argmax(1)
        for runtime, model in exported.items():
            got = model.outputs(batch)
            diff[runtime] = max(diff[runtime], float(np.abs(got - ref).max()))
            agree[runtime] += int((model.probabilities(got).numpy().argmax(1) == ref_top1).sum())
    return {runtime: {"max_abs_diff": float(f"{diff[runtime]:.{DIFF_DIGITS}g}"),
                      "top1_agreement": agree[runtime] / max(1, len(crops)), "images": int(len(crops))}
            for runtime in exported}


def export_experiment(name: str, crops_dir: str | Path, models_root: str | Path, out_dir: str | Path,
                      metrics_path: str | Path) -> dict[str, Any]:
    """Export experiment ``name`` into ``out_dir``, check parity on the test crops, write the metrics."""
    from ..data.store import load_meta, load_split

    models_root = Path(models_root)
    predictor = load_predictor(models_root / name, "cpu", models_root)
    module, classifier = network_of(predictor)
    meta = load_meta(crops_dir)
    test = load_split(crops_dir, TEST_SPLIT, mmap=True)
    if len(test.labels) == 0:
        raise UserError(f"{crops_dir}: the test split is empty; the parity check needs test crops")
    kind = predictor.kind
    embedding = dict(predictor.knn.info) if isinstance(predictor, KnnPredictor) else None
    probe = probe_inputs(meta.size)
    probe_out = reference_outputs(predictor, probe)
    crop = {"margin": meta.margin, "size": meta.size, "keep_aspect": meta.keep_aspect}
    contract = C.build_contract(name, kind, crop, classifier.image_size, getattr(classifier, "resize_size", 0),
                                classifier.mean, classifier.std, predictor.class_names, probe_out.shape[1],
                                predictor.data_source, embedding, (KNN_ARRAYS, KNN_META) if embedding else ())
    result: dict[str, Any] = {"experiment": name, "kind": kind, "output": contract["output"]["kind"],
                              "opset": OPSET, "limits": {"max_abs_diff": PROBE_ATOL, "top1_agreement": 1.0}}
    with atomic_dir(out_dir) as tmp:
        write_networks(module, classifier.image_size, contract["output"]["name"], tmp)
        np.savez(tmp / C.PROBE_FILE, images=probe, outputs=probe_out)
        for file in contract["files"].get("knn", ()):
            shutil.copy2(models_root / name / file, tmp / file)
        C.write_contract(tmp, contract)
        # no probe check here: the test crops check more than the probe does
        result.update(parity(predictor, {runtime: load_exported(tmp / file, check=False)
                                         for runtime, file in C.RUNTIME_FILES.items()}, test.images))
        failed = [r for r in C.RUNTIME_FILES if not (result[r]["max_abs_diff"] <= PROBE_ATOL
                                                     and result[r]["top1_agreement"] == 1.0)]
        result["passed"] = not failed
        write_json(metrics_path, result)
        if failed:
            raise UserError(f"export of {name} refused: {', '.join(failed)} differs from PyTorch on the test crops "
                            f"({metrics_path}); no files were published")
    return result


def run(seed: int, threads: int, name: str, crops_dir: str | Path, models_root: str | Path, out_dir: str | Path,
        metrics_path: str | Path) -> dict[str, Any]:
    """Stage entry point (stages/export.py): seed and threads (``base``), then :func:`export_experiment` on CPU."""
    configure(seed, threads)
    result = export_experiment(name, crops_dir, models_root, out_dir, metrics_path)
    print(f"export@{name}: " + ", ".join(f"{r} max |diff| {result[r]['max_abs_diff']:.1e}, top-1 agreement "
                                          f"{100 * result[r]['top1_agreement']:.1f}%" for r in C.RUNTIME_FILES))
    return result
