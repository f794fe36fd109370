"""carbench.train.freeze: frozen, partial and progressive schedules over CarNet's blocks (BatchNorm stats too)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from support.models import NUM_CLASSES, SIZE, cfg
from support.params import repo_params

from carbench.config import parse_params
from carbench.model.build import build_model
from carbench.model.carnet import CarNet
from carbench.train.freeze import apply_freeze, trainable_blocks_for_epoch

# Tiny models: one thread is faster and immune to other processes competing for the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def trainable(model: CarNet, block: int) -> list[bool]:
    return [p.requires_grad for p in model.block_parameters(block)]


def test_frozen_trains_only_the_head_and_freezes_batchnorm_stats():
    model = build_model(cfg(cnn_batch_norm=True, freeze="frozen"), NUM_CLASSES, pretrained=False)
    assert apply_freeze(model, cfg(freeze="frozen"), 0) == 0
    model.train()
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not any(m.training for m in model.backbone.modules()) and model.head.training
    bn = model.backbone.block1.body[1]
    before = bn.running_mean.clone()
    model(torch.randn(4, 3, SIZE, SIZE) + 3)
    assert torch.equal(bn.running_mean, before)


def test_partial_trains_the_last_blocks_only():
    c = cfg(cnn_batch_norm=True, freeze="partial", trainable_blocks=1)
    model = build_model(c, NUM_CLASSES, pretrained=False)
    apply_freeze(model, c, 0)
    model.train()
    assert not any(trainable(model, 0)) and not any(trainable(model, 1)) and all(trainable(model, 2))
    assert not model.backbone.block1.body[1].training and model.backbone.block3.body[1].training


def test_progressive_unfreezes_top_down_on_schedule():
    c = cfg(freeze="progressive", unfreeze_every=2)
    model = build_model(c, NUM_CLASSES, pretrained=False)
    expected = {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 6: 3, 10: 3}
    for epoch, count in expected.items():
        assert apply_freeze(model, c, epoch) == count
        flags = [all(trainable(model, b)) for b in range(3)]
        assert flags == [b >= 3 - count for b in range(3)], epoch
        assert not any(any(trainable(model, b)) for b in range(3 - count))


@pytest.mark.parametrize("freeze, expected", [("frozen", 0), ("partial", 2), ("full", 3)])
def test_trainable_blocks_for_epoch(freeze, expected):
    assert trainable_blocks_for_epoch(cfg(freeze=freeze, trainable_blocks=2), 5, 3) == expected


@pytest.mark.parametrize("freeze,expected", [("full", [0, 0, 4, 4, 4]), ("progressive", [0, 0, 0, 1, 2]),
                                             ("partial", [0, 0, 2, 2, 2]), ("frozen", [0, 0, 0, 0, 0])])
def test_head_warmup_freezes_the_backbone_first(freeze, expected):
    cfg = dataclasses.replace(parse_params(repo_params()).experiments["tl_resnet50_finetune"].model, freeze=freeze,
                              head_warmup_epochs=2, unfreeze_every=1, trainable_blocks=2)
    assert [trainable_blocks_for_epoch(cfg, epoch, 4) for epoch in range(5)] == expected
