"""A whole ``params.yaml``, read and validated into :class:`Params`; experiments looked up by name and kind."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError, UserError
from .experiments import Experiment, RetrievalExperiment, TrainedExperiment, build_experiment, check_configuration, \
    check_dag
from .schema import (MOVED_DATA_KEYS, SECTIONS, AggregateConfig, BaseConfig, CropConfig, DataConfig, EmbedConfig,
                     EvaluateConfig, KnnConfig, ModelConfig, SplitConfig, TrainConfig)
from .validate import build, read_yaml, section


@dataclass(frozen=True)
class Params:
    base: BaseConfig
    data: DataConfig
    split: SplitConfig
    crop: CropConfig
    evaluate: EvaluateConfig
    experiments: dict[str, Experiment]
    #: The ``model`` section as written: the resolve stage checks its names too (carbench.model.names), so a typo
    #: there fails although every experiment overrides the key. Runs use ``experiments[name].model``.
    model_defaults: ModelConfig
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)

    @property
    def trained(self) -> list[str]:
        return [n for n, e in self.experiments.items() if isinstance(e, TrainedExperiment)]

    @property
    def retrieval(self) -> list[str]:
        return [n for n, e in self.experiments.items() if isinstance(e, RetrievalExperiment)]


def parse_params(raw: dict) -> Params:
    """Validate a whole params mapping (every section, every experiment) and type it."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} in params (known: {', '.join(SECTIONS)})")
    experiments_raw = section(raw, "experiments")
    for name, entry in experiments_raw.items():
        check_configuration(str(name), entry)
    embedders = check_dag(raw, experiments_raw)
    # Sections without an experiment are still validated, so a typo never hides until later.
    model_defaults = build(ModelConfig, section(raw, "model"), "model")
    build(TrainConfig, section(raw, "train"), "train")
    build(EmbedConfig, section(raw, "embed"), "embed")
    build(KnnConfig, section(raw, "knn"), "knn")
    experiments = {str(name): build_experiment(str(name), entry, raw, embedders)
                   for name, entry in experiments_raw.items()}
    for key in MOVED_DATA_KEYS:
        if key in section(raw, "data"):
            raise ConfigError(f"data.{key} is no longer a param: {MOVED_DATA_KEYS[key]}; remove it from params")
    return Params(
        base=build(BaseConfig, section(raw, "base"), "base"),
        data=build(DataConfig, section(raw, "data"), "data"),
        split=build(SplitConfig, section(raw, "split"), "split"),
        crop=build(CropConfig, section(raw, "crop"), "crop"),
        evaluate=build(EvaluateConfig, section(raw, "evaluate"), "evaluate"),
        experiments=experiments,
        model_defaults=model_defaults,
        aggregate=build(AggregateConfig, raw.get("aggregate") or {}, "aggregate"),
    )


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``path``; raise ConfigError naming the first bad key."""
    return parse_params(read_yaml(path))


def experiment(params: Params, name: str) -> Experiment:
    """Look up one experiment by name, with a clear error for a typo."""
    if name not in params.experiments:
        raise ConfigError(f"unknown experiment {name!r} (known: {', '.join(params.experiments)})")
    return params.experiments[name]


def trained_experiment(params: Params, name: str) -> TrainedExperiment:
    """Experiment ``name``, which must be a transfer or scratch one (a stage that trains was asked for it)."""
    exp = experiment(params, name)
    if not isinstance(exp, TrainedExperiment):
        raise UserError(f"experiment {name!r} is a {exp.config} experiment, not a transfer or scratch one: "
                        "it trains nothing")
    return exp


def retrieval_experiment(params: Params, name: str) -> RetrievalExperiment:
    """Experiment ``name``, which must be a retrieval one (embed@ or knn@ was asked for it)."""
    exp = experiment(params, name)
    if not isinstance(exp, RetrievalExperiment):
        raise UserError(f"experiment {name!r} is a {exp.config} experiment, not a retrieval one: it has no "
                        "embed or knn stage")
    return exp
