"""Typed, validated configuration read from ``params.yaml``.

Every section becomes a frozen dataclass; unknown keys, missing keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the dotted key, before any stage does work. The package's parts:

* :mod:`.schema`: the section dataclasses, one field per key with its doc string and constraints (docs/params.md
  is generated from them: ``python -m carbench.workshop.reference``);
* :mod:`.validate`: the one validator that builds them from YAML (:func:`build`), and back (:func:`to_dict`);
* :mod:`.experiments`: experiments as a tagged union (:class:`TrainedExperiment` | :class:`RetrievalExperiment`,
  whose stages get :class:`EmbedJob` and :class:`KnnJob`) and the rules of ``experiments`` and ``dag``;
* :mod:`.params`: a whole params file (:func:`load_params`) and look-ups by name;
* :mod:`.reach`: whether a key reaches a stage under the params in force (imported by name, not re-exported here:
  the stages that never ask do not depend on it in dvc.yaml).

The files the resolve stage writes from it (``data/resolved/``) are :mod:`carbench.config.resolved`'s. Names that need
torchvision (``model.arch``, ``model.weights``) are checked by that stage (:mod:`carbench.model.names`): loading
params stays free of torch, which aggregate and the data stages never import.
"""
from __future__ import annotations

from ..core.errors import ConfigError
from .experiments import (CONFIGURATIONS, TRAINED_CONFIGURATIONS, EmbedJob, Experiment, KnnJob, RetrievalExperiment,
                          TrainedExperiment, build_experiment, build_trained, check_configuration, check_dag)
from .params import Params, experiment, load_params, parse_params, retrieval_experiment, trained_experiment
from .schema import (MOVED_DATA_KEYS, SCRATCH_ARCH, SECTION_SCHEMAS, SECTIONS, SPLITS, AggregateConfig, BaseConfig,
                     CropConfig, DataConfig, EmbedConfig, EmbedWithConfig, EvaluateConfig, KnnConfig, ModelConfig, SplitConfig,
                     SyntheticConfig, TrainConfig)
from .validate import build, build_with_overrides, read_yaml, section, to_dict

__all__ = [
    "SCRATCH_ARCH",
    "CONFIGURATIONS", "MOVED_DATA_KEYS", "SECTIONS", "SECTION_SCHEMAS", "SPLITS", "TRAINED_CONFIGURATIONS",
    "AggregateConfig", "BaseConfig", "ConfigError", "CropConfig", "DataConfig", "EmbedConfig", "EmbedJob",
    "EmbedWithConfig",
    "EvaluateConfig", "Experiment", "KnnConfig", "KnnJob", "ModelConfig", "Params", "RetrievalExperiment",
    "SplitConfig", "SyntheticConfig", "TrainConfig", "TrainedExperiment", "build", "build_experiment",
    "build_trained", "build_with_overrides", "check_configuration", "check_dag", "experiment", "load_params",
    "parse_params", "read_yaml", "retrieval_experiment", "section", "to_dict", "trained_experiment",
]
