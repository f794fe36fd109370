"""``build_model(model_cfg, num_classes, pretrained, offline=False)``: the CarNet of a ``model`` config.

``pretrained=False`` gives the same architecture with random weights (used when a checkpoint's state_dict is
loaded next). Only ``pretrained=True`` may download torchvision weights, and not when ``offline``
(``base.offline``) or the environment forbids it (:mod:`carbench.model.weights`). The backbone is the scratch CNN
the registered family's build of ``model.arch`` (:mod:`carbench.model.backbones`: the scratch CNN, a torchvision
model).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..config import ModelConfig
from ..core.errors import WeightsError
from .backbones import build_backbone, family_of
from .blocks import block_starts
from .carnet import CarNet
from .weights import ENUM_NAME, WeightsSpec, normalization, resolve_weights, weights_enum


def init_he(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) weights and zero biases for every Conv/Linear; BN to (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _normalization_of(cfg: ModelConfig, spec: Optional[WeightsSpec]) -> tuple[tuple, tuple]:
    """Normalisation for ``cfg`` without loading weights (enum names are looked up, files are not read)."""
    family = family_of(cfg.arch)
    if spec is None and family is not None and family.named_weights and ENUM_NAME.match(cfg.weights):
        try:
            spec = WeightsSpec(cfg.arch, enum=weights_enum(cfg.arch, cfg.weights))
        except WeightsError:  # no weights are loaded here; a checkpoint restores its own mean/std
            spec = None
    return normalization(spec or WeightsSpec(cfg.arch))


def build_model(model_cfg: ModelConfig, num_classes: int, pretrained: bool, offline: bool = False,
                spec: Optional[WeightsSpec] = None) -> CarNet:
    """CarNet for ``model_cfg``; ``pretrained`` loads ``model.weights`` (else random init, same shapes).

    ``offline`` (``base.offline``): a torchvision weights file missing from the cache is not downloaded.
    ``spec``: ``model.weights`` already resolved (training's run plan), so it is not resolved again.

    All blocks start trainable; training applies the freeze mode with
    :func:`carbench.train.freeze.apply_freeze`.
    """
    if pretrained and spec is None:
        spec = resolve_weights(model_cfg.arch, model_cfg.weights)
    elif not pretrained:
        spec = None
    backbone, dim = build_backbone(model_cfg, model_cfg.arch, spec, offline)
    mean, std = _normalization_of(model_cfg, spec)
    model = CarNet(backbone, dim, num_classes, model_cfg.head_hidden, model_cfg.head_dropout,
                   block_starts(backbone), mean, std, model_cfg.embedding_dim)
    if model_cfg.init == "he":
        # Pretrained backbones keep their weights; only freshly initialised parts get Kaiming init.
        init_he(model.head if spec is not None and spec.pretrained else model)
    return model


def build_pretrained(arch: str, weights: str, offline: bool = False) -> CarNet:
    """The torchvision ``arch`` with pretrained ``weights`` as they are, for embedding only (a retrieval
    experiment of ``dag.pretrained``: nothing is trained); its head is a one-output placeholder that nothing reads."""
    spec = resolve_weights(arch, weights, "dag.pretrained")
    backbone, dim = build_backbone(None, arch, spec, offline)
    mean, std = normalization(spec)
    return CarNet(backbone, dim, 1, 0, 0.0, block_starts(backbone), mean, std).eval()
