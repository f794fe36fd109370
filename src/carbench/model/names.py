"""``model.arch`` and ``model.weights`` checked by name against torchvision, before any stage trains.

The schema (:mod:`carbench.config`) cannot check them: every stage loads it, and importing torchvision takes
seconds, so the resolve stage calls :func:`check_model_names` instead; a typo then fails there, naming the dotted
key, rather than when ``train@`` builds the model. Weights names are resolved the way training resolves them
(:func:`carbench.model.weights.resolve_weights`: none, a torchvision weights name of the arch, or an existing
file); nothing is downloaded or loaded.
"""
from __future__ import annotations

import difflib

from ..config import ConfigError, ModelConfig
from ..errors import WeightsError

#: ``model.arch`` of the configurable scratch CNN (carbench.model.scratch); every other value is torchvision's.
SCRATCH_ARCH = "cnn"


def check_model_names(models: dict[str, ModelConfig]) -> None:
    """Check each ``model`` config of ``models`` (dotted key of the section -> config); ConfigError on the first
    bad name."""
    # Imported here: torchvision costs seconds, and carbench.resolve is imported by tests that never check names.
    from .torchvision_backbone import classification_archs
    from .weights import resolve_weights

    archs = classification_archs()
    for where, model in models.items():
        if model.arch != SCRATCH_ARCH and model.arch not in archs:
            close = difflib.get_close_matches(model.arch, [SCRATCH_ARCH, *archs], n=1)
            hint = f"did you mean {close[0]!r}?" if close else \
                "torchvision.models.list_models(module=torchvision.models) lists them"
            raise ConfigError(f"{where}.arch must be 'cnn' or a torchvision classification model name, got "
                              f"{model.arch!r} ({hint})")
        try:
            resolve_weights(model.arch, model.weights, where)
        except WeightsError as exc:
            raise ConfigError(str(exc)) from None
