"""``model.arch`` and ``model.weights`` checked by name against torchvision, before any stage trains.

The schema (:mod:`carbench.config`) cannot check them: every stage loads it, and importing torchvision takes
seconds, so the resolve stage calls :func:`check_model_names` instead; a typo then fails there, naming the dotted
key, rather than when ``train@`` builds the model. Weights names are resolved the way training resolves them
(:func:`carbench.model.weights.resolve_weights`: none, a torchvision weights name of the arch, or an existing
file); nothing is downloaded or loaded.
"""
from __future__ import annotations

from ..config import SCRATCH_ARCH, ConfigError, ModelConfig
from ..core.errors import WeightsError


def check_model_names(models: dict[str, ModelConfig]) -> None:
    """Check each ``model`` config of ``models`` (dotted key of the section -> config); ConfigError on the first
    bad name."""
    # Imported here: torchvision costs seconds, and carbench.preflight is imported by tests that never check names.
    from .backbones import family_of, unknown_arch_hint
    from .weights import resolve_weights

    for where, model in models.items():
        if family_of(model.arch) is None:
            raise ConfigError(f"{where}.arch must be {SCRATCH_ARCH!r} or a torchvision classification model name, "
                              f"got {model.arch!r} ({unknown_arch_hint(model.arch)})")
        try:
            resolve_weights(model.arch, model.weights, where)
        except WeightsError as exc:
            raise ConfigError(str(exc)) from None
