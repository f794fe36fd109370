"""carbench.config.validate: values typed and checked, a bad or missing key named by its dotted path."""
from __future__ import annotations

import copy

import pytest
from support.params import params_with, repo_params, with_dotted

from carbench.config import ConfigError, parse_params


def test_numeric_string_lr_from_cli_is_accepted(raw):
    # YAML 1.1 reads 3e-4 (no dot) as a string; `dvc exp run -S train.lr=3e-4` must still work.
    params = parse_params(with_dotted(raw, "train.lr", "3e-4"))
    assert params.experiments["cnn_bn_dropout"].train.lr == 0.05   # overridden by the experiment
    assert params.experiments["tl_resnet50_finetune"].train.lr == 0.02   # overridden by the experiment
    assert params.experiments["tl_densenet121_progressive"].train.lr == pytest.approx(3e-4)   # takes the knob


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        ("train.lrr", 0.1, "unknown key train.lrr"),
        ("train.lr", -0.1, "train.lr must be > 0"),
        ("train.lr", "fast", "train.lr must be a number"),
        ("train.epochs", 2.5, "train.epochs must be an integer"),
        ("train.optimizer", "lion", "train.optimizer must be one of"),
        ("train.amp", "yes", "train.amp must be true or false"),
        ("split.val_fraction", 1.0, "split.val_fraction must be < 1"),
        ("split.val_fraction", 0.0, "split.val_fraction must be > 0"),
        ("crop.margin", -0.1, "crop.margin must be >= 0"),
        ("knn.k", 0, "knn.k must be >= 1"),
        ("base.device", "tpu", "base.device must be one of"),
        ("base.gpus", 0, "base.gpus must be >= 1"),
        ("base.gpus", 1.5, "base.gpus must be an integer"),
        ("base.gpu", 2, "unknown key base.gpu"),
        ("base.device", "cuda:0", "base.device must be one of"),
        ("data.source", "ftp", "data.source must be one of"),
        ("experiments.cnn_basic.train", {"lrate": 1}, "unknown key experiments.cnn_basic.train.lrate"),
        ("experiments.cnn_basic.config", "bagging", "experiments.cnn_basic.config must be one of"),
        ("experiments.cnn_basic.model", {"weights": "IMAGENET1K_V1"}, "must be 'none' for a scratch"),
        ("experiments.knn_resnet50_k3.knn", {"metric": "manhattan"}, "experiments.knn_resnet50_k3.knn.metric"),
        ("dag.retrieval", {"knn_resnet50_k3": "nope", "knn_resnet50_k10": "tl_resnet50_finetune",
                           "knn_densenet121_cosine": "tl_densenet121_progressive"}, "embedder 'nope'"),
        ("dag.train", ["cnn_basic"], "dag.train must list the trained experiment"),
        ("dag.pretrained", {}, "dag.retrieval must map the retrieval experiment 'knn_imagenet_baseline'"),
        ("dag.pretrained", {"cnn_basic": {"arch": "resnet50", "weights": "IMAGENET1K_V2", "image_size": 64},
                            "knn_imagenet_baseline": {"arch": "resnet50", "weights": "x.pth", "image_size": 64}},
         "dag.pretrained names 'cnn_basic', which is not a retrieval experiment"),
        ("dag.pretrained.knn_imagenet_baseline", {"arch": "cnn", "weights": "IMAGENET1K_V1", "image_size": 64},
         "dag.pretrained.knn_imagenet_baseline.arch must be a torchvision model"),
        ("dag.pretrained.knn_imagenet_baseline", {"arch": "resnet50", "weights": "IMAGENET1K_V2"},
         "missing key dag.pretrained.knn_imagenet_baseline.image_size"),
        ("split.strategy", "classwise", "'official', 'pooled', 'kfold', 'disjoint'"),
        ("split.disjoint_at", 0, "split.disjoint_at must be >= 1"),
        ("extra", {}, "unknown section 'extra'"),
    ],
)
def test_bad_values_name_their_key(raw, dotted, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_params(with_dotted(raw, dotted, value))


def test_gpus_and_cuda_auto_are_accepted(raw):
    params = parse_params(with_dotted(with_dotted(raw, "base.gpus", 4), "base.device", "cuda:auto"))
    assert (params.base.gpus, params.base.device) == (4, "cuda:auto")
    assert parse_params(raw).base.gpus == 1  # the committed default: one process


def test_missing_key_is_named(raw):
    broken = copy.deepcopy(raw)
    del broken["crop"]["size"]
    with pytest.raises(ConfigError, match=r"missing key crop\.size"):
        parse_params(broken)


@pytest.mark.parametrize("section,values,message", [
    ("train", {"crop_scale": [0.5]}, "train.crop_scale must be [lo, hi]"),
    ("train", {"crop_scale": [0.8, 0.5]}, "train.crop_scale must be [lo, hi]"),
    ("train", {"crop_scale": [0.5, 1.5]}, "train.crop_scale must be [lo, hi]"),
    ("train", {"crop_ratio": [0.0, 1.0]}, "train.crop_ratio must be [lo, hi]"),
    ("train", {"ema_decay": 1.0}, "train.ema_decay must be < 1"),
    ("train", {"mixup_alpha": -0.1}, "train.mixup_alpha must be >= 0"),
    ("train", {"refit": True, "scheduler": "plateau"}, "train.refit cannot use scheduler 'plateau'"),
    ("train", {"focal_gamma": 2.0, "cutmix_alpha": 1.0}, "train.focal_gamma cannot be combined"),
    ("model", {"layer_decay": 0.0}, "model.layer_decay must be > 0"),
    ("model", {"layer_decay": 1.2}, "model.layer_decay must be <= 1"),
    ("model", {"head_warmup_epochs": -1}, "model.head_warmup_epochs must be >= 0"),
    ("knn", {"whiten": True, "pca_components": 0}, "knn.whiten needs knn.pca_components > 0"),
])
def test_bad_recipe_values_are_rejected(section, values, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        params_with(section, **values)


def test_aggregate_section_is_validated():
    with pytest.raises(ConfigError, match=r"aggregate\.confidence must be < 1"):
        parse_params(repo_params({"aggregate": {"confidence": 1.0}}))
    assert parse_params(repo_params()).aggregate.bootstrap >= 100
