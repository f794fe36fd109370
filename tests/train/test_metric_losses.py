"""carbench.train.metric_losses: each pytorch-metric-learning loss trains an embedding on generated data, the
probe classifier leaves the embedding alone, the proxies get their own lr, frozen BatchNorm stays frozen."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from support.models import cfg
from support.params import repo_params

from carbench.config import parse_params
from carbench.config.schema import METRIC_LOSSES
from carbench.model.build import build_model
from carbench.train.metric_losses import EmbeddingForward, build_criterion, freeze_batchnorm, loss_param_groups

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES, PER_CLASS, DIM = 5, 8, 8


def train_cfg(**overrides):
    base = parse_params(repo_params()).experiments["cnn_basic"].train
    return dataclasses.replace(base, **overrides)


def clusters(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone-like features: one Gaussian cluster per class, overlapping enough that a random projection mixes
    them up."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    centres = torch.randn(CLASSES, 32, generator=g)
    return centres[labels] + 0.8 * torch.randn(len(labels), 32, generator=g), labels


@pytest.mark.parametrize("loss", METRIC_LOSSES)
def test_each_metric_loss_lowers_its_loss_on_generated_data(loss):
    torch.manual_seed(0)
    model = build_model(cfg(embedding_dim=DIM, cnn_widths=(32,)), CLASSES, pretrained=False)
    forward = EmbeddingForward(model, head_only=True)   # the head on given features, as with a feature cache
    t = train_cfg(loss=loss, lr=0.05, optimizer="adam", proxy_lr_mult=10.0, weight_decay=0.0)
    criterion = build_criterion(t, CLASSES, DIM)
    groups = [{"params": list(model.head.parameters()), "lr": t.lr}] + loss_param_groups(criterion, t)
    optimizer = torch.optim.Adam(groups)
    x, y = clusters()

    def metric_term() -> float:
        with torch.no_grad():
            embedding, _ = forward(x)
            return float(criterion.loss(embedding, y, criterion.miner(embedding, y) if criterion.miner else None))

    before, projection = metric_term(), model.head.hidden[0].weight.detach().clone()
    for _ in range(60):
        optimizer.zero_grad()
        criterion(forward(x), y).backward()
        optimizer.step()
    assert metric_term() < 0.5 * before, (loss, before, metric_term())
    # the model learnt it, not the loss's proxies alone: the projection moved
    assert (model.head.hidden[0].weight - projection).norm() > 0.1 * projection.norm()


@pytest.mark.parametrize("loss", METRIC_LOSSES)
def test_the_metric_loss_trains_the_embedding_and_the_probe_does_not(loss):
    model = build_model(cfg(embedding_dim=DIM, cnn_widths=(32,)), CLASSES, pretrained=False)
    criterion = build_criterion(train_cfg(loss=loss), CLASSES, DIM)
    x, y = clusters()
    embedding, logits = EmbeddingForward(model, head_only=True)(x)
    torch.nn.functional.cross_entropy(logits, y).backward(retain_graph=True)   # the probe's part alone
    projection = model.head.hidden[0].weight
    assert projection.grad is None or not projection.grad.any()
    assert model.head.fc.weight.grad.abs().sum() > 0
    criterion.loss(embedding, y, criterion.miner(embedding, y) if criterion.miner else None).backward()
    assert projection.grad.abs().sum() > 0


def test_proxies_get_their_own_group_and_lr():
    t = train_cfg(loss="proxy_anchor", lr=0.01, proxy_lr_mult=100.0)
    groups = loss_param_groups(build_criterion(t, CLASSES, DIM), t)
    assert [g["name"] for g in groups] == ["proxies"]
    assert groups[0]["lr"] == pytest.approx(1.0) and groups[0]["weight_decay"] == 0.0
    assert groups[0]["params"][0].shape == (CLASSES, DIM)
    ms = train_cfg(loss="multi_similarity")
    assert loss_param_groups(build_criterion(ms, CLASSES, DIM), ms) == []   # no proxies


def test_frozen_batchnorm_keeps_statistics_and_affine_parameters():
    model = build_model(cfg(cnn_batch_norm=True, embedding_dim=DIM), CLASSES, pretrained=False)
    model.train()
    freeze_batchnorm(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    before = [m.running_mean.clone() for m in norms]
    model(torch.rand(4, 3, 16, 16) * 5)
    for m, mean in zip(norms, before):
        assert not m.training and torch.equal(m.running_mean, mean)
        assert not m.weight.requires_grad and not m.bias.requires_grad


def test_multi_similarity_learns_from_the_pairs_its_miner_keeps():
    from pytorch_metric_learning.miners import MultiSimilarityMiner

    criterion = build_criterion(train_cfg(loss="multi_similarity"), CLASSES, DIM)
    assert isinstance(criterion.miner, MultiSimilarityMiner)
    torch.manual_seed(0)
    embedding = torch.nn.functional.normalize(torch.randn(CLASSES * PER_CLASS, DIM), dim=1)
    y = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    logits = torch.zeros(len(y), CLASSES)
    metric = criterion((embedding, logits), y) - torch.nn.functional.cross_entropy(logits, y)
    mined = criterion.loss(embedding, y, criterion.miner(embedding, y))
    assert metric == pytest.approx(float(mined), abs=1e-5)
    assert abs(float(mined) - float(criterion.loss(embedding, y))) > 1e-4   # the miner dropped pairs
