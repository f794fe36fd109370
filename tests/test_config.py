"""carbench.config: every section typed, unknown keys and bad values rejected with the key's name."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from carbench.config import ConfigError, load_params, parse_params
from conftest import repo_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw() -> dict:
    return repo_params()


def _with(raw: dict, dotted: str, value) -> dict:
    """A deep copy of ``raw`` with ``dotted`` set to ``value``."""
    out = copy.deepcopy(raw)
    node = out
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return out


def test_repository_params_are_valid(params_path):
    params = load_params(params_path)
    assert len(params.experiments) == 9
    configs = [e.config for e in params.experiments.values()]
    assert configs.count("transfer") == configs.count("scratch") == configs.count("retrieval") == 3


def test_offline_overrides_are_valid(raw):
    offline = yaml.safe_load((ROOT / "configs" / "overrides" / "offline.yaml").read_text())

    def merge(base: dict, over: dict) -> dict:
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    params = parse_params(merge(raw, offline))
    assert params.data.source == "synthetic"
    assert params.experiments["tl_resnet50_frozen"].model.arch == "mobilenet_v2"


def test_experiment_overrides_merge_over_section_defaults(raw):
    params = parse_params(_with(raw, "train.lr", 0.123))
    frozen = params.experiments["tl_resnet50_frozen"]   # overrides lr
    assert frozen.train.lr == 0.003
    # an experiment that does not override a key gets the section default
    assert frozen.train.batch_size == raw["train"]["batch_size"]
    knn = params.experiments["knn_resnet50_k3"]
    assert knn.knn.k == 3 and knn.embedder == "tl_resnet50_finetune"
    assert knn.embed.layer == raw["embed"]["layer"]


def test_numeric_string_lr_from_cli_is_accepted(raw):
    # YAML 1.1 reads 3e-4 (no dot) as a string; `dvc exp run -S train.lr=3e-4` must still work.
    params = parse_params(_with(raw, "train.lr", "3e-4"))
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
        ("extra", {}, "unknown section 'extra'"),
    ],
)
def test_bad_values_name_their_key(raw, dotted, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_params(_with(raw, dotted, value))


def test_gpus_and_cuda_auto_are_accepted(raw):
    params = parse_params(_with(_with(raw, "base.gpus", 4), "base.device", "cuda:auto"))
    assert (params.base.gpus, params.base.device) == (4, "cuda:auto")
    assert parse_params(raw).base.gpus == 1  # the committed default: one process


def test_missing_key_is_named(raw):
    broken = copy.deepcopy(raw)
    del broken["crop"]["size"]
    with pytest.raises(ConfigError, match=r"missing key crop\.size"):
        parse_params(broken)


def test_retrieval_entry_without_knn_section_is_rejected(raw):
    broken = copy.deepcopy(raw)
    del broken["experiments"]["knn_resnet50_k3"]["knn"]
    with pytest.raises(ConfigError, match=r"missing key experiments\.knn_resnet50_k3\.knn"):
        parse_params(broken)


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


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
    from carbench.errors import UserError

    params = parse_params(raw)
    assert trained_experiment(params, "cnn_basic").model.arch == "cnn"
    assert retrieval_experiment(params, "knn_resnet50_k3").knn.k == 3
    with pytest.raises(UserError, match="'cnn_basic' is a scratch experiment, not a retrieval one"):
        retrieval_experiment(params, "cnn_basic")
    with pytest.raises(UserError, match="'knn_resnet50_k3' is a retrieval experiment, not a transfer or scratch"):
        trained_experiment(params, "knn_resnet50_k3")


def test_loading_params_does_not_import_torch(params_path):
    """Every stage loads params; arch and weights names are checked by the resolve stage instead (torchvision)."""
    import subprocess
    import sys

    code = ("import sys; from carbench.config import load_params; load_params(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(params_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
