"""The export stage on a tiny world: ONNX + TorchScript files, their contract, parity with PyTorch, a refusal."""
from __future__ import annotations

import json

import numpy as np
import pytest
from support.exports import EXPORTED, RETRIEVAL, export_world
from support.retrieval import CLASS_NAMES, IMAGE_SIZE, PER_CLASS

from carbench.core.errors import UserError
from carbench.export import contract as C
from carbench.export import export as E
from carbench.export.runtime import load_exported
from carbench.retrieval.predictor import load_predictor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return export_world(tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("name", EXPORTED)
def test_both_files_match_pytorch_on_every_test_crop(world, name):
    metrics = json.loads(world.parity[name].read_text())
    assert metrics["passed"] is True
    for runtime in C.RUNTIME_FILES:
        assert metrics[runtime]["images"] == PER_CLASS["test"] * len(CLASS_NAMES)
        assert metrics[runtime]["top1_agreement"] == 1.0
        assert metrics[runtime]["max_abs_diff"] <= 1e-4
    assert metrics["output"] == ("logits" if name == "cnn_basic" else "embedding")


@pytest.mark.parametrize("name", EXPORTED)
@pytest.mark.parametrize("file", [C.ONNX_FILE, C.TORCHSCRIPT_FILE])
def test_exported_predictions_equal_the_pipelines(world, name, file):
    from carbench.data.store import load_split

    test = load_split(world.crops, "test").images
    mine = load_exported(world.exports[name] / file).predict(test).numpy()
    theirs = load_predictor(world.models / name, "cpu", world.models).predict(test).numpy()
    np.testing.assert_allclose(mine, theirs, atol=1e-4)


def test_the_contract_says_how_to_prepare_the_input(world):
    contract = C.read_contract(world.exports["cnn_basic"])
    assert contract["input"]["shape"] == ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]
    assert contract["class_names"] == CLASS_NAMES
    assert contract["crop"]["size"] == 20 and len(contract["preprocess"]["mean"]) == 3
    knn = C.read_contract(world.exports[RETRIEVAL])
    assert knn["kind"] == "knn" and knn["embedding"]["layer"] == "backbone"
    assert set(knn["files"]["knn"]) <= {p.name for p in world.exports[RETRIEVAL].iterdir()}


def test_parity_refuses_an_export_that_differs(world, tmp_path, monkeypatch):
    """Exported outputs 0.01 away from PyTorch's: the stage fails, publishes nothing, and the metrics say why."""
    original = E.reference_outputs
    monkeypatch.setattr(E, "reference_outputs", lambda p, crops: original(p, crops) + 0.01)
    out, metrics = tmp_path / "exports" / "cnn_basic", tmp_path / "m.json"
    with pytest.raises(UserError, match="refused"):
        E.export_experiment("cnn_basic", world.crops, world.models, out, metrics)
    assert not out.exists()
    recorded = json.loads(metrics.read_text())
    assert recorded["passed"] is False and recorded["onnx"]["max_abs_diff"] > 1e-3
