"""carbench.model: every family builds, heads and features have the right shapes, blocks split by family
(the freeze schedule over those blocks: tests/train/test_freeze.py)."""
from __future__ import annotations

import pytest
import torch
from support.models import NUM_CLASSES, SIZE, cfg
from torch import nn

from carbench.core.errors import UserError
from carbench.model.build import build_model
from carbench.model.carnet import count_parameters

BATCH = 2


# Tiny models: one thread is faster and immune to other processes competing for the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "densenet121", "vgg11", "efficientnet_b0"])
def test_torchvision_families_build_and_give_logits(arch):
    model = build_model(cfg(arch=arch, weights="none", head_hidden=16), NUM_CLASSES, pretrained=False)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (BATCH, NUM_CLASSES)
        assert model.features(x).shape == (BATCH, model.feature_dim)
        assert model.penultimate(x).shape == (BATCH, 16)
    assert model.num_blocks >= 4
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in model.modules())


@pytest.mark.parametrize("overrides, blocks", [
    ({}, 3),
    ({"cnn_widths": (8, 16, 32, 64), "cnn_batch_norm": True, "cnn_dropout": 0.2, "head_dropout": 0.5}, 4),
    ({"cnn_widths": (8, 16), "cnn_batch_norm": True, "cnn_residual": True, "init": "he"}, 2),
    ({"cnn_widths": (8, 8), "cnn_convs_per_block": 1, "cnn_residual": True}, 2),
])
def test_scratch_cnn_variants(overrides, blocks):
    model = build_model(cfg(**overrides), NUM_CLASSES, pretrained=True)
    model.train()
    assert model(torch.randn(BATCH, 3, SIZE, SIZE)).shape == (BATCH, NUM_CLASSES)
    assert model.num_blocks == blocks
    assert model.features(torch.randn(BATCH, 3, SIZE, SIZE)).shape == (BATCH, model.feature_dim)


def test_penultimate_equals_features_without_hidden_layer():
    model = build_model(cfg(), NUM_CLASSES, pretrained=False).eval()
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    assert torch.equal(model.penultimate(x), model.features(x))


def test_he_init_changes_scratch_weights():
    torch.manual_seed(0)
    default = build_model(cfg(init="default"), NUM_CLASSES, pretrained=False)
    torch.manual_seed(0)
    he = build_model(cfg(init="he"), NUM_CLASSES, pretrained=False)
    conv_d, conv_h = default.backbone.block1.body[0], he.backbone.block1.body[0]
    assert not torch.equal(conv_d.weight, conv_h.weight) and torch.all(conv_h.bias == 0)


def test_resnet_blocks_are_stem_plus_layer1_then_stages():
    model = build_model(cfg(arch="resnet18", weights="none"), NUM_CLASSES, pretrained=False)
    bb = model.backbone
    assert model.num_blocks == 4
    block0 = {id(p) for p in model.block_parameters(0)}
    assert id(bb.conv1.weight) in block0 and id(bb.layer1[0].conv1.weight) in block0
    assert {id(p) for p in bb.layer4.parameters()} == {id(p) for p in model.block_parameters(3)}
    in_blocks = sum(p.numel() for i in range(4) for p in model.block_parameters(i))
    assert count_parameters(model) == in_blocks + count_parameters(model.head)  # every parameter in a block


def test_model_without_final_linear_is_rejected():
    with pytest.raises(UserError, match=r"'squeezenet1_0' has no final nn\.Linear"):
        build_model(cfg(arch="squeezenet1_0", weights="none"), NUM_CLASSES, pretrained=False)


def test_unknown_arch_names_the_key():
    with pytest.raises(UserError, match=r"model\.arch: 'resnet5' is built by no backbone family \(did you mean"):
        build_model(cfg(arch="resnet5", weights="none"), NUM_CLASSES, pretrained=False)


def test_an_embedding_head_projects_and_l2_normalises_before_the_classifier():
    model = build_model(cfg(embedding_dim=6), NUM_CLASSES, pretrained=False).eval()
    x = torch.rand(4, 3, SIZE, SIZE)
    embedding = model.penultimate(x)
    assert embedding.shape == (4, 6) and model.embedding_dim == 6
    assert torch.allclose(embedding.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(model(x), model.head.fc(embedding), atol=1e-6)
    plain = build_model(cfg(), NUM_CLASSES, pretrained=False)
    assert plain.embedding_dim == 0 and isinstance(plain.head.hidden, nn.Identity)
