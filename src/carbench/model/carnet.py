"""CarNet: a backbone (torchvision model or the scratch CNN, :mod:`carbench.model.build`) plus a small
classification head, with block-wise freezing over the backbone's blocks (:mod:`carbench.model.blocks`).

Normalisation is not part of the model: ``CarNet.mean``/``CarNet.std`` (RGB, for 0..1 inputs) come from
the weights' preprocessing (ImageNet statistics otherwise) and are applied by :mod:`carbench.model.preprocess`
(and by the training augmenter, :mod:`carbench.train.augment`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .blocks import partition_blocks


class L2Normalize(nn.Module):
    """(N, D) -> rows scaled to unit length (the metric-learning embedding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x.float(), dim=1)


class ClassifierHead(nn.Module):
    """dropout -> optional hidden Linear + ReLU, or an embedding (Linear to ``embedding_dim``, L2-normalised) ->
    Linear to ``num_classes``. (N, D) -> (N, C)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0,
                 embedding_dim: int = 0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        if embedding_dim > 0:
            self.hidden: nn.Module = nn.Sequential(nn.Linear(in_features, embedding_dim), L2Normalize())
        else:
            self.hidden = (nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True))
                           if hidden > 0 else nn.Identity())
        inner = embedding_dim or hidden
        self.fc = nn.Linear(inner if inner > 0 else in_features, num_classes)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) backbone features -> (N, D') input of the final Linear."""
        return self.hidden(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.penultimate(x))


class CarNet(nn.Module):
    """backbone + head, with block-wise freezing.

    ``forward(x)``: (N, 3, H, W) normalised float -> logits (N, C). ``features(x)``: -> (N, D) backbone
    output = head input. ``penultimate(x)``: -> (N, D') after the head's hidden layer (= features when
    the head has none; the L2-normalised embedding with ``embedding_dim``).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, head_hidden: int,
                 head_dropout: float, block_starts: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], embedding_dim: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassifierHead(feature_dim, num_classes, head_hidden, head_dropout, embedding_dim)
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        # A plain list (not registered): the same modules are already registered under backbone.
        self._blocks = partition_blocks(backbone, block_starts)
        self.trainable_blocks = len(self._blocks)

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def block_parameters(self, index: int) -> list[nn.Parameter]:
        """Parameters of backbone block ``index`` (0 = bottom)."""
        return [p for m in self._blocks[index] for p in m.parameters(recurse=False)]

    def set_trainable_blocks(self, count: int) -> None:
        """Make the top ``count`` backbone blocks trainable and freeze the rest (head always trains)."""
        count = max(0, min(count, self.num_blocks))
        self.trainable_blocks = count
        first_trainable = self.num_blocks - count
        for index in range(self.num_blocks):
            for p in self.block_parameters(index):
                p.requires_grad_(index >= first_trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "CarNet":
        """Like nn.Module.train, but frozen blocks stay in eval mode (BatchNorm statistics frozen)."""
        super().train(mode)
        if mode and self.trainable_blocks == 0:
            self.backbone.eval()  # fully frozen: also dropout / stochastic depth inside the backbone
        elif mode:
            for block in self._blocks[: self.num_blocks - self.trainable_blocks]:
                for module in block:
                    module.training = False  # not .eval(): that would recurse into children of other blocks
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        # googlenet/inception return (logits, aux...) tuples in training mode; the first is ours.
        return out[0] if isinstance(out, tuple) else out

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.penultimate(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
