"""torchvision backbones: a torchvision classification model with its final ``nn.Linear`` replaced by
``nn.Identity`` (so its output is the head input), and user state_dict files loaded into it (or into the scratch
CNN). Only an enum weights name may download a file, through :func:`carbench.model.weights.ensure_weights_file`."""
from __future__ import annotations

from torch import nn

from ..core.errors import UserError, WeightsError
from .weights import WeightsSpec, ensure_weights_file, load_state_file

#: torchvision builds its classifiers for ImageNet-1k when no weights say otherwise.
IMAGENET_CLASSES = 1000


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
