"""The backbone registry: one place maps ``model.arch`` to the family that builds it and the width of the features
it hands the head. A new family (timm, DINOv2 ...) is one entry here, its builder module and its tests; the name
check of the resolve stage, the model builder and the cards all ask this registry.

Families are tried in order; the first whose ``archs()`` lists the name builds it. ``archs`` may import lazily
(torchvision's list costs an import), so nothing is listed until a name is looked up.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from torch import nn

from ..config import SCRATCH_ARCH, ModelConfig
from .scratch import build_scratch_backbone
from .torchvision_backbone import build_torchvision_backbone, classification_archs
from .weights import WeightsSpec

#: (model config or None for an embedder of ``dag.pretrained``, arch, resolved weights or None, offline) ->
#: (backbone whose output feeds the head, its feature width)
Builder = Callable[[Optional[ModelConfig], str, Optional[WeightsSpec], bool], tuple[nn.Module, int]]


@dataclass(frozen=True)
class BackboneFamily:
    """How one family of backbones is named and built."""
    name: str
    archs: Callable[[], Sequence[str]]
    build: Builder
    named_weights: bool   # whether ``model.weights`` may name published weights (else only none or a file)


def _scratch(cfg: Optional[ModelConfig], arch: str, spec: Optional[WeightsSpec], offline: bool) -> tuple[nn.Module, int]:
    if cfg is None:
        raise ValueError(f"{SCRATCH_ARCH!r} is built from a model config")
    return build_scratch_backbone(cfg, spec), cfg.cnn_widths[-1]


def _torchvision(cfg: Optional[ModelConfig], arch: str, spec: Optional[WeightsSpec],
                 offline: bool) -> tuple[nn.Module, int]:
    return build_torchvision_backbone(arch, spec or WeightsSpec(arch), offline)


FAMILIES: tuple[BackboneFamily, ...] = (
    BackboneFamily("scratch", lambda: (SCRATCH_ARCH,), _scratch, named_weights=False),
    BackboneFamily("torchvision", classification_archs, _torchvision, named_weights=True),
)


def family_of(arch: str) -> Optional[BackboneFamily]:
    """The family that builds ``arch``, or None."""
    return next((family for family in FAMILIES if arch in family.archs()), None)


def known_archs() -> list[str]:
    """Every ``model.arch`` a family builds, in registry order."""
    return [arch for family in FAMILIES for arch in family.archs()]


def unknown_arch_hint(arch: str) -> str:
    """What to say about an ``arch`` no family builds: the closest known name, or where the names are listed."""
    close = difflib.get_close_matches(arch, known_archs(), n=1)
    return f"did you mean {close[0]!r}?" if close else \
        "torchvision.models.list_models(module=torchvision.models) lists them"


def build_backbone(cfg: Optional[ModelConfig], arch: str, spec: Optional[WeightsSpec],
                   offline: bool = False) -> tuple[nn.Module, int]:
    """The backbone of ``arch`` (weights per ``spec``; None: random init) and its feature width."""
    family = family_of(arch)
    if family is None:
        from ..core.errors import UserError

        raise UserError(f"model.arch: {arch!r} is built by no backbone family ({unknown_arch_hint(arch)})")
    return family.build(cfg, arch, spec, offline)
