"""Metric-learning losses (``train.loss``: proxy_anchor | multi_similarity | arcface), from pytorch-metric-learning.

The network trains an embedding (``model.embedding_dim``: a linear projection of the backbone features,
L2-normalised; :class:`carbench.model.carnet.ClassifierHead`) with the library's loss:

* ``proxy_anchor``: :class:`pytorch_metric_learning.losses.ProxyAnchorLoss` (Kim et al., CVPR 2020; margin 0.1,
  alpha 32), one learned proxy per class;
* ``multi_similarity``: :class:`~pytorch_metric_learning.losses.MultiSimilarityLoss` (Wang et al., CVPR 2019;
  alpha 2, beta 50, base 0.5) on the pairs :class:`~pytorch_metric_learning.miners.MultiSimilarityMiner`
  (epsilon 0.1) keeps, as in the paper; it needs positives in every batch (``train.sampler: m_per_class``);
* ``arcface``: :class:`~pytorch_metric_learning.losses.ArcFaceLoss` (Deng et al., CVPR 2019; margin 28.6
  degrees, scale 64), an additive angular margin on learned class centres.

Hyperparameters are the library's defaults, which are the papers'. The loss's own parameters (proxies, class
centres) are optimised as one more group, lr ``train.lr * train.proxy_lr_mult``, without weight decay
(:func:`loss_param_groups`).

The classifier (``head.fc``) still trains, with cross-entropy on the *detached* embedding: a linear probe that
keeps the trainer's top-1, the checkpoint's classifier and evaluate@ meaningful under the standard protocol while
sending no gradient into the embedding, so the embedding is the metric loss's alone.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..model.carnet import CarNet


def build_metric_loss(name: str, num_classes: int, embedding_dim: int) -> tuple[nn.Module, Optional[nn.Module]]:
    """(the pytorch-metric-learning loss, its miner or None) for ``train.loss`` ``name``."""
    from pytorch_metric_learning import losses, miners

    if name == "proxy_anchor":
        return losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embedding_dim), None
    if name == "multi_similarity":
        return losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()
    if name == "arcface":
        return losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embedding_dim), None
    raise ValueError(f"train.loss must be one of proxy_anchor, multi_similarity, arcface, got {name!r}")


class MetricCriterion(nn.Module):
    """The training objective of a metric-learning experiment: ``loss(embedding, labels)`` (pairs from the miner
    when the loss has one) + cross-entropy of the probe's logits, which :class:`EmbeddingForward` computed on the
    detached embedding. Called as ``criterion((embedding, logits), labels)`` -> scalar."""

    def __init__(self, loss: nn.Module, miner: Optional[nn.Module] = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.loss, self.miner, self.label_smoothing = loss, miner, label_smoothing

    def forward(self, output: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        embedding, logits = output
        embedding = embedding.float()   # the losses' exp(alpha * cos) terms overflow in half precision
        pairs = self.miner(embedding, labels) if self.miner is not None else None
        metric = self.loss(embedding, labels, pairs)
        return metric + F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)


class EmbeddingForward(nn.Module):
    """The training forward of a metric-learning experiment: images (or cached backbone features when
    ``head_only``) -> (L2-normalised embedding (N, E), probe logits (N, C) from the detached embedding)."""

    def __init__(self, model: CarNet, head_only: bool = False) -> None:
        super().__init__()
        self.model, self.head_only = model, head_only

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = x if self.head_only else self.model.features(x)
        embedding = self.model.head.penultimate(features)
        return embedding, self.model.head.fc(embedding.detach())


def build_criterion(cfg: TrainConfig, num_classes: int, embedding_dim: int) -> MetricCriterion:
    """The :class:`MetricCriterion` of ``cfg.loss`` for ``num_classes`` classes and ``embedding_dim``."""
    loss, miner = build_metric_loss(cfg.loss, num_classes, embedding_dim)
    return MetricCriterion(loss, miner, cfg.label_smoothing)


def loss_param_groups(criterion: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimizer group of the loss's own parameters (proxies, class centres; none for multi_similarity):
    lr ``train.lr * train.proxy_lr_mult``, no weight decay (they are directions on the sphere)."""
    params = [p for p in criterion.parameters() if p.requires_grad]
    if not params:
        return []
    lr = cfg.effective_lr * cfg.proxy_lr_mult
    return [{"params": params, "lr": lr, "base_lr": lr, "weight_decay": 0.0, "name": "proxies"}]


def freeze_batchnorm(model: nn.Module) -> None:
    """``train.freeze_bn``: every BatchNorm layer in eval mode (its running statistics stay the pretrained ones)
    with its affine parameters frozen; call after ``model.train()`` and the freeze schedule."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
