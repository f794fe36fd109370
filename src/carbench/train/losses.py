"""Training losses: cross-entropy with label smoothing (hard or soft targets), or focal loss when
``train.focal_gamma > 0`` (hard targets only)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): ``(1 - p_true) ** gamma * CE``, mean over the batch.

    The cross-entropy term uses ``label_smoothing`` like :class:`torch.nn.CrossEntropyLoss`; the
    focusing weight uses the unsmoothed probability of the true class. logits (N, C), target (N,) ->
    scalar.
    """

    def __init__(self, gamma: float, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # the (1 - p) ** gamma weight is unstable in half precision
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        p_true = torch.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        weight = (1.0 - p_true).clamp(min=0.0) ** self.gamma
        return (weight * ce).mean()


class SoftCrossEntropy(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` (label smoothing included) that also takes soft targets ``(N, C)`` (mixup /
    cutmix: ``-sum(target * log_softmax)``, smoothed towards uniform), computed in float32 for those."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.is_floating_point():
            return super().forward(logits.float(), target.float())
        return super().forward(logits, target)


def build_loss(cfg: TrainConfig) -> nn.Module:
    """The training criterion for ``cfg`` (logits (N, C), target (N,) or soft (N, C) -> mean loss)."""
    if cfg.focal_gamma > 0:
        return FocalLoss(cfg.focal_gamma, cfg.label_smoothing)
    return SoftCrossEntropy(label_smoothing=cfg.label_smoothing)
