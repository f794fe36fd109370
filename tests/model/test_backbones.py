"""The backbone registry: each family builds its names with the feature width the head gets, an unknown name is
refused with the closest known one, and a new family is one entry that the builder and the name check both see."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from support.models import NUM_CLASSES, SIZE, cfg
from torch import nn

from carbench.config import SCRATCH_ARCH, ConfigError
from carbench.core.errors import UserError
from carbench.model import backbones
from carbench.model.build import build_model
from carbench.model.names import check_model_names

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_name_finds_its_family():
    assert backbones.family_of(SCRATCH_ARCH).name == "scratch"
    assert backbones.family_of("mobilenet_v2").name == "torchvision"
    assert backbones.family_of("resnet5O") is None
    assert backbones.known_archs()[0] == SCRATCH_ARCH and "resnet50" in backbones.known_archs()


@pytest.mark.parametrize("arch, model, width", [(SCRATCH_ARCH, {"cnn_widths": (8, 12)}, 12),
                                                ("mobilenet_v2", {}, 1280)])
def test_a_backbone_is_built_with_the_width_its_head_gets(arch, model, width):
    backbone, dim = backbones.build_backbone(cfg(arch=arch, weights="none", **model), arch, None)
    assert dim == width
    assert backbone(torch.zeros(2, 3, SIZE, SIZE)).flatten(1).shape == (2, width)


def test_an_unknown_name_is_refused_with_the_closest_known_one():
    with pytest.raises(UserError, match="did you mean 'resnet50'"):
        backbones.build_backbone(None, "resnet5O", None)
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        check_model_names({"model": cfg(arch="resnet5O", weights="none")})


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_a_new_family_is_one_registry_entry(monkeypatch):
    """Registered once, a family's names pass the resolve stage's check and build a CarNet of the right width."""
    tiny = backbones.BackboneFamily("tiny", lambda: ("tiny_net",), lambda c, arch, spec, offline: (_Tiny(), 5),
                                    named_weights=False)
    with pytest.raises(ConfigError):
        check_model_names({"model": cfg(arch="tiny_net", weights="none")})
    monkeypatch.setattr(backbones, "FAMILIES", (*backbones.FAMILIES, tiny))
    check_model_names({"model": cfg(arch="tiny_net", weights="none")})
    model = build_model(dataclasses.replace(cfg(), arch="tiny_net", weights="none"), NUM_CLASSES, pretrained=False)
    assert model(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, NUM_CLASSES)
