"""The backbone's ordered *blocks* (bottom to top), the units the freeze modes train or freeze.

Split per family: resnet-like (stem+layer1, layer2, layer3, layer4), densenet (denseblock+transition; the stem
joins the first and the final norm the last), regnet (trunk stages), vit (encoder layers), models with a
``features`` Sequential (mobilenet, efficientnet, vgg, convnext, swin: each child of ``features`` that has
parameters, plus a following ``classifier`` holding Linear layers, as in vgg), the scratch CNN (its conv blocks)
and, for anything else, the top-level children that have parameters.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn


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
