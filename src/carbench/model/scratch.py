"""The scratch CNN (``model.arch: cnn``): conv blocks (optionally with BatchNorm, residual shortcuts and
Dropout2d) separated by max pooling, then global average pooling; its blocks are the freeze blocks."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from ..config import ModelConfig
from .torchvision_backbone import load_backbone_state
from .weights import WeightsSpec, load_state_file

CONV_KERNEL = 3
POOL_STRIDE = 2


class ConvBlock(nn.Module):
    """``convs`` 3x3 convs (+BN) with ReLU; residual: added to a (1x1 projection) shortcut; Dropout2d.

    (N, C_in, H, W) -> (N, C_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, convs: int, batch_norm: bool, residual: bool,
                 dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, CONV_KERNEL, padding=CONV_KERNEL // 2,
                                    bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            if i < convs - 1 or not residual:  # a residual block applies its last ReLU after the sum
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.residual = residual
        self.shortcut: nn.Module = nn.Identity()
        if residual and c_in != c_out:
            proj: list[nn.Module] = [nn.Conv2d(c_in, c_out, 1, bias=not batch_norm)]
            if batch_norm:
                proj.append(nn.BatchNorm2d(c_out))
            self.shortcut = nn.Sequential(*proj)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.residual:
            y = self.act(y + self.shortcut(x))
        return self.dropout(y)


class ScratchCNN(nn.Sequential):
    """block1, pool1, block2, ..., blockN, global average pool, flatten: (N, 3, H, W) -> (N, widths[-1])."""

    def __init__(self, cfg: ModelConfig) -> None:
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        c_in = 3
        for i, width in enumerate(cfg.cnn_widths, start=1):
            if i > 1:
                layers[f"pool{i - 1}"] = nn.MaxPool2d(POOL_STRIDE)
            layers[f"block{i}"] = ConvBlock(c_in, width, cfg.cnn_convs_per_block, cfg.cnn_batch_norm,
                                            cfg.cnn_residual, cfg.cnn_dropout)
            c_in = width
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten(1)
        super().__init__(layers)


def build_scratch_backbone(cfg: ModelConfig, spec: Optional[WeightsSpec]) -> ScratchCNN:
    """The scratch CNN; ``model.weights`` may only be ``none`` or a state_dict file of this CNN."""
    backbone = ScratchCNN(cfg)  # resolve_weights already rejected weights names for 'cnn'
    if spec is not None and spec.path is not None:
        state = {k.removeprefix("backbone."): v for k, v in load_state_file(spec.path).items()
                 if not k.startswith("head.")}
        load_backbone_state(backbone, state, "head", spec)
    return backbone
