"""carbench.config.experiments: per-experiment overrides over section defaults, trained and retrieval experiments
as a tagged union, each with only its own sections; the retrieval embedder default."""
from __future__ import annotations

import copy

import pytest
from support.params import repo_params, with_dotted

from carbench.config import ConfigError, parse_params


def test_experiment_overrides_merge_over_section_defaults(raw):
    params = parse_params(with_dotted(raw, "train.lr", 0.123))
    frozen = params.experiments["tl_resnet50_frozen"]   # overrides lr
    assert frozen.train.lr == 0.003
    # an experiment that does not override a key gets the section default
    assert frozen.train.batch_size == raw["train"]["batch_size"]
    knn = params.experiments["knn_resnet50_k3"]
    assert knn.knn.k == 3 and knn.embedder == "tl_resnet50_finetune"
    assert knn.embed.layer == raw["embed"]["layer"]


def test_retrieval_entry_without_knn_section_is_rejected(raw):
    broken = copy.deepcopy(raw)
    del broken["experiments"]["knn_resnet50_k3"]["knn"]
    with pytest.raises(ConfigError, match=r"missing key experiments\.knn_resnet50_k3\.knn"):
        parse_params(broken)


def test_experiments_are_a_tagged_union_each_with_only_its_own_sections(raw):
    from carbench import config

    params = parse_params(raw)
    trained, retrieval = params.experiments["cnn_basic"], params.experiments["knn_resnet50_k3"]
    assert isinstance(trained, config.TrainedExperiment) and isinstance(retrieval, config.RetrievalExperiment)
    assert trained.trained and not retrieval.trained
    assert (trained.config, retrieval.config) == ("scratch", "retrieval")
    # a trained experiment has nothing of retrieval, a retrieval one no model and no training
    assert not any(hasattr(trained, key) for key in ("knn", "embed", "embedder"))
    assert not any(hasattr(retrieval, key) for key in ("model", "train"))
    assert retrieval.knn_job() == config.KnnJob(name="knn_resnet50_k3", knn=retrieval.knn)
    assert retrieval.embed_job().embedder == "tl_resnet50_finetune"
    assert params.trained == [n for n, e in params.experiments.items() if isinstance(e, config.TrainedExperiment)]


def test_looking_up_an_experiment_of_the_wrong_kind_names_it(raw):
    from carbench.config import retrieval_experiment, trained_experiment
    from carbench.core.errors import UserError

    params = parse_params(raw)
    assert trained_experiment(params, "cnn_basic").model.arch == "cnn"
    assert retrieval_experiment(params, "knn_resnet50_k3").knn.k == 3
    with pytest.raises(UserError, match="'cnn_basic' is a scratch experiment, not a retrieval one"):
        retrieval_experiment(params, "cnn_basic")
    with pytest.raises(UserError, match="'knn_resnet50_k3' is a retrieval experiment, not a transfer or scratch"):
        trained_experiment(params, "knn_resnet50_k3")


def test_retrieval_embeds_with_the_fine_tuned_model_by_default():
    params = parse_params(repo_params())
    assert params.experiments["knn_resnet50_k3"].embedder == "tl_resnet50_finetune"
    assert params.experiments["knn_resnet50_k10"].embedder == "tl_resnet50_finetune"
    assert params.experiments["knn_densenet121_cosine"].embedder == "tl_densenet121_progressive"
