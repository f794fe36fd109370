"""The preprocessing contract of an exported model: ``exports/<name>/contract.json`` (this module owns the format).

An exported network takes what carbench's own predictor feeds it: float32 ``(N, 3, H, W)``, RGB, made from a square
uint8 crop of the car by an antialiased bilinear resize to ``H x W``, scaled to 0..1, minus ``mean``, divided by
``std``. The contract writes each of those down, with the crop geometry (box, margin, side, keep_aspect) and the
class names, so a deployment outside carbench can reproduce the inputs; :func:`preprocess` is carbench's own
reading of it (the parity check and ``carbench-predict --model`` use it, never the checkpoint's values).

A retrieval model's network outputs the embedding (``output.kind: embedding``); its contract adds how the embedding
is stored (layer, L2 normalisation, float16) and names the k-NN files beside it (gallery, labels, preprocessing).
``probe.npz`` holds a few fixed inputs and the PyTorch outputs on them: loading an export re-runs them, so a
contract that disagrees with its model file is refused before it predicts anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import UserError
from ..core.io import read_json, write_json

FORMAT = "carbench-export/1"
CONTRACT = "contract.json"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
PROBE_FILE = "probe.npz"
#: The network's input and output names inside the ONNX file.
INPUT_NAME = "input"
OUTPUT_NAMES = {"classifier": "logits", "knn": "embedding"}
#: What each runtime's file is called; ``carbench-predict --model`` picks the runtime by suffix.
RUNTIME_FILES = {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE}
REQUIRED = ("format", "experiment", "kind", "files", "crop", "input", "preprocess", "output", "class_names")


def build_contract(experiment: str, kind: str, crop: dict[str, Any], image_size: int, resize_size: int,
                   mean: Sequence[float], std: Sequence[float], class_names: Sequence[str], output_dim: int,
                   data_source: str, embedding: dict[str, Any] | None = None,
                   knn_files: Sequence[str] = ()) -> dict[str, Any]:
    """The contract of one export. ``crop``: the crop store's margin / size / keep_aspect; ``resize_size``:
    ``train.resize_size`` (0: off); ``embedding`` (retrieval only): layer and l2_normalize of the embed stage;
    ``knn_files``: the k-NN files copied beside the network."""
    contract: dict[str, Any] = {
        "format": FORMAT,
        "experiment": experiment,
        "kind": kind,
        "files": {**RUNTIME_FILES, "probe": PROBE_FILE, **({"knn": list(knn_files)} if knn_files else {})},
        "crop": {"box": "the car's box x1,y1,x2,y2 (1-based, inclusive; default: the whole photo)",
                 "margin": float(crop["margin"]), "size": int(crop["size"]), "keep_aspect": bool(crop["keep_aspect"]),
                 "resample": "bilinear, antialiased when shrinking (carbench.data.crop_geometry.decode_crop)"},
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "channel_order": "RGB",
                  "shape": ["batch", 3, int(image_size), int(image_size)]},
        "preprocess": {"centre_crop": ({"resize_size": int(resize_size), "fraction": image_size / resize_size,
                                        "what": "first the central square of side round(S * fraction) of the "
                                                "crop: torchvision's Resize(resize_size) + CenterCrop(size)"}
                                       if resize_size else None),
                       "resize": {"size": [int(image_size), int(image_size)], "interpolation": "bilinear",
                                  "antialias": True},
                       "scale": "1/255", "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "output": {"name": OUTPUT_NAMES[kind], "kind": "logits" if kind == "classifier" else "embedding",
                   "dim": int(output_dim)},
        "class_names": list(class_names),
        "data_source": data_source,
    }
    if embedding is not None:
        contract["embedding"] = {"layer": embedding["layer"], "l2_normalize": bool(embedding["l2_normalize"]),
                                 "stored_dtype": "float16"}
    return contract


def write_contract(out_dir: str | Path, contract: dict[str, Any]) -> None:
    write_json(Path(out_dir) / CONTRACT, contract)


def read_contract(export_dir: str | Path) -> dict[str, Any]:
    """The contract of ``export_dir``; one clear error when it is missing or not a carbench export."""
    path = Path(export_dir) / CONTRACT
    if not path.is_file():
        raise UserError(f"no {CONTRACT} beside the model in {export_dir} (an export@ stage writes it)")
    contract = read_json(path)
    missing = [key for key in REQUIRED if not isinstance(contract, dict) or key not in contract]
    if missing:
        raise UserError(f"{path} is not a carbench export contract (missing key {missing[0]!r})")
    if contract["format"] != FORMAT:
        raise UserError(f"{path}: unsupported contract format {contract['format']!r} (expected {FORMAT!r})")
    if contract["kind"] not in OUTPUT_NAMES:
        raise UserError(f"{path}: unknown kind {contract['kind']!r} (expected one of {', '.join(OUTPUT_NAMES)})")
    return contract


def input_size(contract: dict[str, Any]) -> tuple[int, int]:
    """(H, W) the network takes, as the contract says."""
    height, width = contract["preprocess"]["resize"]["size"]
    return int(height), int(width)


def preprocess(crops: np.ndarray, contract: dict[str, Any]) -> np.ndarray:
    """uint8 crops ``(N, S, S, 3)`` -> the network's float32 ``(N, 3, H, W)`` input, from the contract's values."""
    import torch

    from ..model.preprocess import eval_preprocess

    height, width = input_size(contract)
    if height != width:
        raise UserError(f"contract resize {height}x{width}: carbench models take square inputs")
    prep = contract["preprocess"]
    x = torch.from_numpy(np.array(crops, dtype=np.uint8, copy=True))
    centre = prep.get("centre_crop") or {}
    return eval_preprocess(x, height, prep["mean"], prep["std"], int(centre.get("resize_size", 0))).numpy()
