"""Experiments as a tagged union, and the rules of the ``experiments`` and ``dag`` sections.

An experiment is either a :class:`TrainedExperiment` (``config: transfer | scratch``: a model and how to train it)
or a :class:`RetrievalExperiment` (``config: retrieval``: what embeds, the embedding and the k-NN). What embeds is
named in ``dag``: a trained experiment's best checkpoint (``dag.retrieval``), or pretrained weights used untrained
(``dag.pretrained``: a baseline with no ``train@``). Each has only its own sections, with the section defaults of
``params.yaml`` merged in, so code that receives one needs no check of what it is: an ``isinstance`` (or the
``trained`` tag) tells the two apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..core.errors import ConfigError
from .schema import EmbedConfig, EmbedWithConfig, KnnConfig, ModelConfig, TrainConfig
from .validate import build, build_with_overrides, section

CONFIGURATIONS = ("transfer", "scratch", "retrieval")
TRAINED_CONFIGURATIONS = ("transfer", "scratch")
#: The sections an experiment entry of each kind takes (besides ``config``).
TRAINED_SECTIONS = ("model", "train")
RETRIEVAL_SECTIONS = ("embed", "knn")


@dataclass(frozen=True)
class TrainedExperiment:
    """A transfer or scratch experiment: train@, then evaluate@ on its best checkpoint."""

    name: str
    config: Literal["transfer", "scratch"]
    model: ModelConfig
    train: TrainConfig
    trained: ClassVar[bool] = True


@dataclass(frozen=True)
class RetrievalExperiment:
    """A retrieval experiment: embed@ with the embedder's best checkpoint, knn@, then evaluate@."""

    name: str
    #: the trained experiment whose checkpoint embeds the images (dag.retrieval), or the pretrained weights that
    #: embed them untrained (dag.pretrained)
    embedder: str | EmbedWithConfig
    embed: EmbedConfig
    knn: KnnConfig
    config: ClassVar[str] = "retrieval"
    trained: ClassVar[bool] = False

    @property
    def pretrained(self) -> bool:
        """True for a baseline that embeds with pretrained weights and trains nothing (dag.pretrained)."""
        return isinstance(self.embedder, EmbedWithConfig)

    def embed_job(self) -> EmbedJob:
        return EmbedJob(name=self.name, embedder=self.embedder, embed=self.embed)

    def knn_job(self) -> KnnJob:
        return KnnJob(name=self.name, knn=self.knn)


# A retrieval experiment's two stages each get only their part (and their own resolved file, carbench.config.resolved),
# so a knn knob does not rerun embed@ and an embed knob reaches knn@ only through the embeddings.
@dataclass(frozen=True)
class EmbedJob:
    """What embed@<name> runs on: the retrieval experiment's embedder and ``embed`` section."""

    name: str
    embedder: str | EmbedWithConfig
    embed: EmbedConfig


@dataclass(frozen=True)
class KnnJob:
    """What knn@<name> runs on: the retrieval experiment's ``knn`` section."""

    name: str
    knn: KnnConfig


#: One of the nine experiments.
Experiment = TrainedExperiment | RetrievalExperiment


def check_configuration(name: str, raw: Any) -> str:
    """Return an experiment entry's ``config`` after checking the entry is a mapping naming a known one."""
    where = f"experiments.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    config = raw.get("config")
    if config not in CONFIGURATIONS:
        raise ConfigError(f"{where}.config must be one of {list(CONFIGURATIONS)}, got {config!r}")
    return config


def _check_entry_keys(name: str, raw: dict, config: str) -> None:
    where = f"experiments.{name}"
    sections = RETRIEVAL_SECTIONS if config == "retrieval" else TRAINED_SECTIONS
    for key in raw:
        if key != "config" and key not in sections:
            raise ConfigError(f"unknown key {where}.{key} (a {config} experiment takes: config, {', '.join(sections)})")
    for key in sections:
        # DVC tracks experiments.<name>.<section> as a param, so the key must exist (even as {}).
        if key not in raw:
            raise ConfigError(f"missing key {where}.{key} (write `{key}: {{}}` to keep the defaults)")


def build_trained(name: str, config: str, raw: dict, params: dict) -> TrainedExperiment:
    """A trained experiment: its ``model``/``train`` overrides (``raw``) over the sections of ``params``."""
    where = f"experiments.{name}"
    model = build_with_overrides(ModelConfig, section(params, "model"), raw["model"], f"{where}.model")
    if config == "scratch" and model.weights != "none":
        raise ConfigError(f"{where}.model.weights must be 'none' for a scratch experiment, got {model.weights!r}")
    if config == "transfer" and model.weights == "none":
        raise ConfigError(f"{where}.model.weights must name pretrained weights for a transfer experiment")
    train = build_with_overrides(TrainConfig, section(params, "train"), raw["train"], f"{where}.train")
    if train.metric_loss and not model.embedding_dim:
        raise ConfigError(f"{where}.train.loss {train.loss!r} trains an embedding: set {where}.model.embedding_dim "
                          "(e.g. 512)")
    return TrainedExperiment(name=name, config=config, model=model, train=train)


def build_experiment(name: str, raw: Any, params: dict,
                     embedders: dict[str, str | EmbedWithConfig]) -> Experiment:
    """Experiment ``name`` from its entry ``raw`` and the section defaults of ``params``; ``embedders`` is
    :func:`check_dag`'s map (it names every retrieval experiment's embedder)."""
    config = check_configuration(name, raw)
    _check_entry_keys(name, raw, config)
    if config in TRAINED_CONFIGURATIONS:
        return build_trained(name, config, raw, params)
    where = f"experiments.{name}"
    return RetrievalExperiment(
        name=name, embedder=embedders[name],
        embed=build_with_overrides(EmbedConfig, section(params, "embed"), raw["embed"], f"{where}.embed"),
        knn=build_with_overrides(KnnConfig, section(params, "knn"), raw["knn"], f"{where}.knn"),
    )


def check_dag(params: dict, experiments: dict) -> dict[str, str | EmbedWithConfig]:
    """Check ``dag`` against the experiments; return retrieval name -> embedder (a trained experiment's name, or
    the pretrained weights of ``dag.pretrained``)."""
    dag = section(params, "dag")
    unknown = sorted(set(dag) - {"train", "retrieval", "pretrained"})
    if unknown:
        raise ConfigError(f"unknown key dag.{unknown[0]} (known keys: train, retrieval, pretrained)")
    train = dag.get("train") or []
    retrieval = dag.get("retrieval") or {}
    pretrained = dag.get("pretrained") or {}
    if not isinstance(train, list):
        raise ConfigError("dag.train must be a list of experiment names")
    if not isinstance(retrieval, dict):
        raise ConfigError("dag.retrieval must map each retrieval experiment to its embedder")
    if not isinstance(pretrained, dict):
        raise ConfigError("dag.pretrained must map retrieval experiments to the pretrained weights that embed for "
                          "them, e.g. {arch: mobilenet_v2, weights: IMAGENET1K_V1, image_size: 224}")
    configs = {n: r.get("config") for n, r in experiments.items() if isinstance(r, dict)}
    want_train = {n for n, c in configs.items() if c in TRAINED_CONFIGURATIONS}
    want_retr = {n for n, c in configs.items() if c == "retrieval"}
    for name in pretrained:
        if name not in want_retr:
            raise ConfigError(f"dag.pretrained names {name!r}, which is not a retrieval experiment")
        if name in retrieval:
            raise ConfigError(f"dag.retrieval and dag.pretrained both name {name!r}: one embedder each")
    for name in train:
        if name not in want_train:
            raise ConfigError(f"dag.train names {name!r}, which is not a transfer or scratch experiment")
    for name in sorted(want_train - set(train)):
        raise ConfigError(f"dag.train must list the trained experiment {name!r}")
    for name, embedder in retrieval.items():
        if name not in want_retr:
            raise ConfigError(f"dag.retrieval names {name!r}, which is not a retrieval experiment")
        if embedder not in want_train:
            raise ConfigError(f"dag.retrieval.{name}: embedder {embedder!r} is not a trained experiment "
                              f"(one of: {', '.join(sorted(want_train))})")
    for name in sorted(want_retr - set(retrieval) - set(pretrained)):
        raise ConfigError(f"dag.retrieval must map the retrieval experiment {name!r} to its embedder (or "
                          "dag.pretrained to pretrained weights)")
    embedders: dict[str, str | EmbedWithConfig] = {str(k): str(v) for k, v in retrieval.items()}
    embedders.update({str(k): build(EmbedWithConfig, v, f"dag.pretrained.{k}") for k, v in pretrained.items()})
    return embedders
