"""CarNet: a backbone (torchvision model or the scratch CNN) plus a small classification head.

* ``build_model(model_cfg, num_classes, pretrained, offline=False)`` builds it; ``pretrained=False`` gives
  the same architecture with random weights (used when a checkpoint's state_dict is loaded next). Only
  ``pretrained=True`` may download torchvision weights, and not when ``offline`` (``base.offline``) or the
  environment forbids it (:mod:`carbench.train.weights`).
* The backbone is a torchvision classification model with its final ``nn.Linear`` replaced by
  ``nn.Identity`` (so its output is the head input), or :class:`ScratchCNN` for ``model.arch: cnn``.
* The backbone is split into ordered *blocks* (bottom to top) for the freeze modes: resnet-like
  (stem+layer1, layer2, layer3, layer4), densenet (denseblock+transition; the stem joins the first and
  the final norm the last), regnet (trunk stages), vit (encoder layers), models with a ``features``
  Sequential (mobilenet, efficientnet, vgg, convnext, swin: each child of ``features`` that has
  parameters, plus a following ``classifier`` holding Linear layers, as in vgg), the scratch CNN (its
  conv blocks) and, for anything else, the top-level children that have parameters.
* Freeze modes (:func:`trainable_blocks_for_epoch`): ``frozen`` = head only, ``partial`` = the top
  ``model.trainable_blocks`` blocks, ``progressive`` = one more block (top-down) every
  ``model.unfreeze_every`` epochs, ``full`` = everything. Frozen blocks also keep their BatchNorm
  statistics (their modules stay in eval mode even under ``model.train()``). ``model.head_warmup_epochs``
  freezes the whole backbone for its first N epochs (head warm-up) before the mode's schedule starts.

Normalisation is not part of the model: ``CarNet.mean``/``CarNet.std`` (RGB, for 0..1 inputs) come from
the weights' preprocessing (ImageNet statistics otherwise) and are applied by :mod:`carbench.train.augment`.

Length (~370 lines): the block split of every torchvision family the freeze modes support lives here, next to
the CarNet that uses it; the scratch CNN is the other third.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError, WeightsError
from .weights import (WEIGHTS_NONE, WeightsSpec, ensure_weights_file, load_state_file, normalization,
                      resolve_weights, ENUM_NAME, weights_enum)

SCRATCH_ARCH = "cnn"
#: torchvision builds its classifiers for ImageNet-1k when no weights say otherwise.
IMAGENET_CLASSES = 1000
CONV_KERNEL = 3
POOL_STRIDE = 2


# ----------------------------------------------------------------------------- head and CarNet
class ClassifierHead(nn.Module):
    """dropout -> optional hidden Linear + ReLU -> Linear to ``num_classes``. (N, D) -> (N, C)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.hidden: nn.Module = (nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True))
                                  if hidden > 0 else nn.Identity())
        self.fc = nn.Linear(hidden if hidden > 0 else in_features, num_classes)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) backbone features -> (N, D') input of the final Linear."""
        return self.hidden(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.penultimate(x))


class CarNet(nn.Module):
    """backbone + head, with block-wise freezing.

    ``forward(x)``: (N, 3, H, W) normalised float -> logits (N, C). ``features(x)``: -> (N, D) backbone
    output = head input. ``penultimate(x)``: -> (N, D') after the head's hidden layer (= features when
    the head has none).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, head_hidden: int,
                 head_dropout: float, block_starts: Sequence[str],
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassifierHead(feature_dim, num_classes, head_hidden, head_dropout)
        self.feature_dim = feature_dim
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


def _owns_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def partition_blocks(backbone: nn.Module, starts: Sequence[str]) -> list[list[nn.Module]]:
    """Split the modules owning parameters/buffers into ordered blocks.

    ``starts`` are module names (registration = forward order) where blocks 1.. begin; everything
    before ``starts[1]`` (including ``starts[0]``, usually the root ``""``) is block 0.
    """
    index = {name: i for i, name in enumerate(starts)}
    found: set[str] = set()
    blocks: list[list[nn.Module]] = [[] for _ in starts]
    current = 0
    for name, module in backbone.named_modules():
        if name in index:
            current = index[name]
            found.add(name)
        if _owns_state(module):
            blocks[current].append(module)
    missing = [s for s in starts if s not in found]
    if missing:
        raise RuntimeError(f"backbone has no module named {missing[0]!r} (block boundaries {list(starts)})")
    return [b for b in blocks if b] or [[]]


def _children_with_params(module: nn.Module, prefix: str = "") -> list[str]:
    return [f"{prefix}{n}" for n, c in module.named_children() if any(True for _ in c.parameters())]


def block_starts(backbone: nn.Module) -> list[str]:
    """Block boundaries of a backbone by family (see the module docstring); block 0 starts at ``""``."""
    kids = dict(backbone.named_children())
    if all(f"layer{i}" in kids for i in range(1, 5)):  # resnet, resnext, wide_resnet
        return ["", "layer2", "layer3", "layer4"]
    if "trunk_output" in kids:  # regnet
        return ["", *_children_with_params(kids["trunk_output"], "trunk_output.")[1:]]
    if "encoder" in kids and hasattr(kids["encoder"], "layers"):  # vit
        return ["", *_children_with_params(kids["encoder"].layers, "encoder.layers.")[1:]]
    features = kids.get("features")
    if isinstance(features, nn.Sequential):
        names = [n for n, _ in features.named_children()]
        if any(n.startswith("denseblock") for n in names):  # densenet: stem + denseblock + transition
            return ["", *[f"features.{n}" for n in names if n.startswith("denseblock")][1:]]
        starts = ["", *_children_with_params(features, "features.")[1:]]
        after = list(kids)[list(kids).index("features") + 1:]
        # A classifier with Linear layers left after removing the last one (vgg) is a block of its own.
        starts += [n for n in after if any(isinstance(m, nn.Linear) for m in kids[n].modules())]
        return starts
    return ["", *_children_with_params(backbone)[1:]]


# ----------------------------------------------------------------------------- scratch CNN
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


def init_he(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) weights and zero biases for every Conv/Linear; BN to (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- torchvision backbones
def classification_archs() -> list[str]:
    """torchvision classification model names accepted by ``model.arch`` (plus ``cnn``)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def strip_classifier(model: nn.Module, arch: str, expected_out: int) -> tuple[str, int]:
    """Replace the model's final nn.Linear by Identity; return (its name, its in_features)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1][1].out_features != expected_out:
        raise UserError(f"model.arch: {arch!r} has no final nn.Linear classifier with {expected_out} outputs, "
                        "so CarNet cannot replace its head; choose another torchvision classification model")
    name, linear = linears[-1]
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, nn.Identity())
    return name, linear.in_features


def build_torchvision_backbone(arch: str, spec: WeightsSpec, offline: bool = False) -> tuple[nn.Module, int]:
    """torchvision ``arch`` (weights per ``spec``) without its last Linear; returns (backbone, D).

    ``offline`` (``base.offline``) forbids downloading a weights file missing from the cache."""
    from torchvision.models import get_model

    if arch not in classification_archs():
        raise UserError(f"model.arch: {arch!r} is neither 'cnn' nor a torchvision classification model "
                        "(see torchvision.models.list_models(module=torchvision.models))")
    if spec.enum is not None:
        ensure_weights_file(spec.enum, offline=offline)  # raises with instructions; then torchvision finds the cache
        model = get_model(arch, weights=spec.enum)
        expected = len(spec.enum.meta.get("categories") or range(IMAGENET_CLASSES))
    else:
        model = get_model(arch, weights=None)
        expected = IMAGENET_CLASSES
    linear_name, dim = strip_classifier(model, arch, expected)
    if spec.path is not None:
        load_backbone_state(model, load_state_file(spec.path), linear_name, spec)
    return model, dim


def load_backbone_state(model: nn.Module, state: dict, linear_name: str, spec: WeightsSpec) -> None:
    """Load a user state_dict into the stripped model, ignoring the removed classifier's tensors."""
    state = {k: v for k, v in state.items() if not k.startswith(linear_name + ".")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise WeightsError(f"model.weights: state_dict file {spec.path} does not fit {spec.arch!r}: "
                           f"{str(exc).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys[:3], result.unexpected_keys[:3]
        raise WeightsError(f"model.weights: state_dict file {spec.path} does not fit {spec.arch!r}: "
                           f"missing keys {missing}, unexpected keys {unexpected}")


# ----------------------------------------------------------------------------- build + freeze
def _normalization_of(cfg: ModelConfig, spec: Optional[WeightsSpec]) -> tuple[tuple, tuple]:
    """Normalisation for ``cfg`` without loading weights (enum names are looked up, files are not read)."""
    if spec is None and cfg.arch != SCRATCH_ARCH and ENUM_NAME.match(cfg.weights):
        try:
            spec = WeightsSpec(cfg.arch, enum=weights_enum(cfg.arch, cfg.weights))
        except WeightsError:  # no weights are loaded here; a checkpoint restores its own mean/std
            spec = None
    return normalization(spec or WeightsSpec(cfg.arch))


def build_model(model_cfg: ModelConfig, num_classes: int, pretrained: bool, offline: bool = False) -> CarNet:
    """CarNet for ``model_cfg``; ``pretrained`` loads ``model.weights`` (else random init, same shapes).

    ``offline`` (``base.offline``): a torchvision weights file missing from the cache is not downloaded.

    All blocks start trainable; training applies the freeze mode with :func:`apply_freeze`.
    """
    spec = resolve_weights(model_cfg.arch, model_cfg.weights) if pretrained else None
    if model_cfg.arch == SCRATCH_ARCH:
        backbone: nn.Module = build_scratch_backbone(model_cfg, spec)
        dim = model_cfg.cnn_widths[-1]
    else:
        backbone, dim = build_torchvision_backbone(model_cfg.arch, spec or WeightsSpec(model_cfg.arch), offline)
    mean, std = _normalization_of(model_cfg, spec)
    model = CarNet(backbone, dim, num_classes, model_cfg.head_hidden, model_cfg.head_dropout,
                   block_starts(backbone), mean, std)
    if model_cfg.init == "he":
        # Pretrained backbones keep their weights; only freshly initialised parts get Kaiming init.
        init_he(model.head if spec is not None and spec.pretrained else model)
    return model


def trainable_blocks_for_epoch(cfg: ModelConfig, epoch: int, num_blocks: int) -> int:
    """How many top backbone blocks train in (0-based) ``epoch`` under ``model.freeze``.

    The first ``model.head_warmup_epochs`` epochs train the head only; the freeze mode's schedule starts after.
    """
    if cfg.freeze == "frozen" or epoch < cfg.head_warmup_epochs:
        return 0
    epoch -= cfg.head_warmup_epochs
    if cfg.freeze == "partial":
        return min(cfg.trainable_blocks, num_blocks)
    if cfg.freeze == "progressive":
        return min(num_blocks, epoch // cfg.unfreeze_every)
    return num_blocks


def apply_freeze(model: CarNet, cfg: ModelConfig, epoch: int) -> int:
    """Set requires_grad / eval flags for ``epoch``; return the number of trainable blocks."""
    count = trainable_blocks_for_epoch(cfg, epoch, model.num_blocks)
    model.set_trainable_blocks(count)
    return count


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["CarNet", "ClassifierHead", "ScratchCNN", "ConvBlock", "build_model", "apply_freeze",
           "trainable_blocks_for_epoch", "block_starts", "partition_blocks", "strip_classifier",
           "count_parameters", "init_he", "WEIGHTS_NONE"]
