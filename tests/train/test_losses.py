"""carbench.train.losses: cross-entropy with label smoothing, focal loss, and the soft-target loss of mixed batches."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from support.params import repo_params

from carbench.config import parse_params
from carbench.train.losses import FocalLoss, build_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_soft_target_loss_equals_the_mixed_hard_losses():
    cfg = parse_params(repo_params()).experiments["tl_resnet50_finetune"].train  # label smoothing 0.1
    loss = build_loss(cfg)
    logits, a, b = torch.randn(6, 5), torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,))
    soft = 0.3 * torch.nn.functional.one_hot(a, 5).float() + 0.7 * torch.nn.functional.one_hot(b, 5).float()
    assert torch.allclose(loss(logits, soft), 0.3 * loss(logits, a) + 0.7 * loss(logits, b), atol=1e-6)


def test_losses():
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    base = parse_params(repo_params()).experiments["cnn_basic"].train
    t = dataclasses.replace(base, label_smoothing=0.1)
    assert torch.allclose(build_loss(t)(logits, target), F.cross_entropy(logits, target, label_smoothing=0.1))
    assert torch.allclose(FocalLoss(0.0)(logits, target), F.cross_entropy(logits, target))
    assert FocalLoss(2.0)(logits, target) < F.cross_entropy(logits, target)
    focal = dataclasses.replace(base, focal_gamma=2.0)
    assert isinstance(build_loss(focal), FocalLoss)
