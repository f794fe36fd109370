"""The resolved config files, ``data/resolved/<kind>/<name>.yaml``: their content, writer and readers.

The resolve stage (:mod:`carbench.preflight`) writes one file per ``train@``/``embed@``/``knn@`` instance from
``params.yaml``; each of those stages reads only its own file. What a file holds besides ``experiment``, ``config``
and ``base`` is :data:`RESOLVED_SECTIONS`; it is read back with every check ``params.yaml`` gets, into the type the
stage runs on: a :class:`~carbench.config.TrainedExperiment`, an :class:`~carbench.config.EmbedJob` or a
:class:`~carbench.config.KnnJob`. A retrieval experiment is split between two files so that a ``knn`` knob does
not rerun ``embed@``.

Apart from :mod:`carbench.preflight`, which also checks names against torchvision (carbench.model.names): the stages
that read these files then do not depend on that check's code in dvc.yaml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml

from ..core.io import atomic_dir
from . import (TRAINED_CONFIGURATIONS, BaseConfig, ConfigError, EmbedConfig, EmbedJob, EmbedWithConfig, KnnConfig,
               KnnJob, Params, TrainedExperiment, build, build_trained, check_configuration, experiment, load_params,
               read_yaml, retrieval_experiment, to_dict, trained_experiment)

#: Per stage kind, the experiment sections a resolved config file holds (besides ``base``): each stage
#: instance depends on exactly its own file, so a knob reruns only the experiments whose value it changes.
RESOLVED_SECTIONS = {"train": ("model", "train"), "embed": ("embedder", "embed"), "knn": ("knn",)}
_RESOLVED_HEAD = ("experiment", "config", "base")
T = TypeVar("T")


#: What a resolved file is read into, by kind.
Resolved = TrainedExperiment | EmbedJob | KnnJob


def resolved_config(params: Params, name: str, kind: str) -> dict:
    """The effective config one ``<kind>@<name>`` stage uses, as plain data (the resolve stage writes it)."""
    exp = experiment(params, name)
    if (kind == "train") != isinstance(exp, TrainedExperiment):
        raise ConfigError(f"experiment {name!r} is a {exp.config} experiment: it has no {kind} stage")
    out = {"experiment": name, "config": exp.config, "base": to_dict(params.base)}
    out.update({key: to_dict(getattr(exp, key)) for key in RESOLVED_SECTIONS[kind]})
    return out


HEADER = "# Effective config of {kind}@{name}, written by the resolve stage from params.yaml: do not edit.\n"


def resolved_files(params: Params) -> dict[str, dict]:
    """Relative path (``<kind>/<name>.yaml``) -> content, for every stage instance of the DAG."""
    out = {}
    for kind in RESOLVED_SECTIONS:
        names = params.trained if kind == "train" else params.retrieval
        for name in names:
            out[f"{kind}/{name}.yaml"] = resolved_config(params, name, kind)
    return out


def dump(kind: str, name: str, config: dict) -> str:
    """The text of one resolved file: a header comment, then the mapping (keys sorted, stable)."""
    return HEADER.format(kind=kind, name=name) + yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


def write_resolved(params: Params, out_dir: str | Path) -> list[str]:
    """Every resolved file of ``params`` into ``out_dir`` (replaced atomically); returns their relative paths."""
    files = resolved_files(params)
    with atomic_dir(out_dir) as tmp:
        for rel, config in files.items():
            kind, name = rel.split("/")[0], config["experiment"]
            (tmp / kind).mkdir(exist_ok=True)
            (tmp / rel).write_text(dump(kind, name, config))
    return sorted(files)


def parse_resolved(raw: Any, where: str) -> tuple[BaseConfig, Resolved]:
    """Validate a resolved config (see :func:`resolved_config`) with the same checks as ``params.yaml``.

    Its sections are complete, so they are built as the section defaults of an experiment that
    overrides nothing: every type, range and configuration check of :func:`carbench.config.parse_params` applies.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a mapping")
    kinds = [k for k, sections in RESOLVED_SECTIONS.items() if set(raw) == {*_RESOLVED_HEAD, *sections}]
    if not kinds:
        known = "; ".join(", ".join((*_RESOLVED_HEAD, *s)) for s in RESOLVED_SECTIONS.values())
        raise ConfigError(f"{where}: keys {sorted(raw)} match no resolved config (one of: {known})")
    name = str(raw["experiment"])
    config = check_configuration(name, {"config": raw["config"]})
    base = build(BaseConfig, raw["base"], "base")
    kind = kinds[0]
    if (kind == "train") != (config in TRAINED_CONFIGURATIONS):
        raise ConfigError(f"{where}: a {kind} config cannot hold a {config} experiment")
    if kind == "train":
        overrides = {"model": {}, "train": {}}
        return base, build_trained(name, config, overrides, {"model": raw["model"], "train": raw["train"]})
    if kind == "embed":
        embedder = raw["embedder"]
        if isinstance(embedder, dict):   # dag.pretrained: pretrained weights, untrained
            embedder = build(EmbedWithConfig, embedder, f"dag.pretrained.{name}")
        elif not isinstance(embedder, str) or not embedder:
            raise ConfigError(f"experiments.{name}.embedder must name a trained experiment, got {embedder!r}")
        return base, EmbedJob(name=name, embedder=embedder,
                              embed=build(EmbedConfig, raw["embed"], f"experiments.{name}.embed"))
    return base, KnnJob(name=name, knn=build(KnnConfig, raw["knn"], f"experiments.{name}.knn"))


def load_resolved(path: str | Path) -> tuple[BaseConfig, Resolved]:
    """Read and validate a resolved config file; errors name the file and the key."""
    try:
        return parse_resolved(read_yaml(path), str(path))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def _load_for_stage(path: str | Path, name: str, kind: str, cls: type[T]) -> tuple[BaseConfig, T]:
    base, resolved = load_resolved(path)
    if resolved.name != name:
        raise ConfigError(f"{path} resolves experiment {resolved.name!r}, not {name!r}")
    if not isinstance(resolved, cls):
        raise ConfigError(f"{path} is not the resolved config of a {kind}@ stage (its keys are another stage's)")
    return base, resolved


# What each stage reads: its resolved file (``--resolved``, as in dvc.yaml), else ``params.yaml`` directly.
def train_stage(params_path: str | Path, resolved_path: Optional[str | Path],
                name: str) -> tuple[BaseConfig, TrainedExperiment]:
    """What ``train@<name>`` runs on."""
    if resolved_path is None:
        params = load_params(params_path)
        return params.base, trained_experiment(params, name)
    return _load_for_stage(resolved_path, name, "train", TrainedExperiment)


def embed_stage(params_path: str | Path, resolved_path: Optional[str | Path],
                name: str) -> tuple[BaseConfig, EmbedJob]:
    """What ``embed@<name>`` runs on."""
    if resolved_path is None:
        params = load_params(params_path)
        return params.base, retrieval_experiment(params, name).embed_job()
    return _load_for_stage(resolved_path, name, "embed", EmbedJob)


def knn_stage(params_path: str | Path, resolved_path: Optional[str | Path],
              name: str) -> tuple[BaseConfig, KnnJob]:
    """What ``knn@<name>`` runs on."""
    if resolved_path is None:
        params = load_params(params_path)
        return params.base, retrieval_experiment(params, name).knn_job()
    return _load_for_stage(resolved_path, name, "knn", KnnJob)
