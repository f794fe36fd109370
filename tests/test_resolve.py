"""carbench.resolve + config.load_resolved: one effective config per stage, read back through the same checks."""
from __future__ import annotations

import dataclasses
import runpy
import sys

import pytest
import yaml

from carbench.config import ConfigError, load_resolved, parse_params, stage_experiment
from carbench.resolve import resolved_files, run_resolve
from conftest import deep_merge, repo_params

TRAINED = {"tl_resnet50_frozen", "tl_resnet50_finetune", "tl_densenet121_progressive",
           "cnn_basic", "cnn_bn_dropout", "cnn_residual"}
RETRIEVAL = {"knn_resnet50_k3", "knn_resnet50_k10", "knn_densenet121_cosine"}


def _texts(raw: dict, out) -> dict[str, str]:
    run_resolve(parse_params(raw), out)
    return {p.relative_to(out).as_posix(): p.read_text() for p in sorted(out.rglob("*.yaml"))}


def test_one_file_per_stage_instance():
    files = resolved_files(parse_params(repo_params()))
    assert set(files) == ({f"train/{n}.yaml" for n in TRAINED} | {f"embed/{n}.yaml" for n in RETRIEVAL}
                          | {f"knn/{n}.yaml" for n in RETRIEVAL})


def test_written_files_load_back_to_the_same_experiments(tmp_path):
    params = parse_params(repo_params())
    run_resolve(params, tmp_path / "resolved")
    for name in TRAINED:
        base, exp = load_resolved(tmp_path / "resolved" / "train" / f"{name}.yaml")
        assert base == params.base
        assert exp == params.experiments[name]
    for name in RETRIEVAL:
        full = params.experiments[name]
        _, embed = load_resolved(tmp_path / "resolved" / "embed" / f"{name}.yaml")
        _, knn = load_resolved(tmp_path / "resolved" / "knn" / f"{name}.yaml")
        assert embed == dataclasses.replace(full, knn=None)
        assert knn == dataclasses.replace(full, embed=None, embedder=None)


def test_a_section_knob_changes_only_the_files_of_experiments_that_take_it(tmp_path):
    before = _texts(repo_params(), tmp_path / "a")
    after = _texts(repo_params({"train": {"lr": "3e-4"}}), tmp_path / "b")
    changed = {rel for rel in before if before[rel] != after[rel]}
    # only the trained experiment that does not set its own lr
    assert changed == {"train/tl_densenet121_progressive.yaml"}
    again = _texts(repo_params(), tmp_path / "c")
    assert again == before, "resolving the same params twice must give byte-identical files"


def test_knn_and_embed_knobs_reach_only_their_stage(tmp_path):
    before = _texts(repo_params(), tmp_path / "a")
    raw = deep_merge(repo_params(), {"experiments": {"knn_resnet50_k3": {"knn": {"k": 2}}}, "embed": {"batch_size": 7}})
    after = _texts(raw, tmp_path / "b")
    changed = {rel for rel in before if before[rel] != after[rel]}
    assert changed == {"knn/knn_resnet50_k3.yaml"} | {f"embed/{n}.yaml" for n in RETRIEVAL}


def test_a_bad_value_in_a_resolved_file_names_the_file_and_key(tmp_path):
    run_resolve(parse_params(repo_params()), tmp_path)
    path = tmp_path / "train" / "cnn_basic.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["train"]["lr"] = -1
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"{path}: experiments\.cnn_basic\.train\.lr must be > 0"):
        load_resolved(path)
    raw["train"]["lr"], raw["model"]["weights"] = 0.1, "IMAGENET1K_V1"   # the scratch/transfer check applies too
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="must be 'none' for a scratch"):
        load_resolved(path)
    knn = tmp_path / "knn" / "knn_resnet50_k3.yaml"
    raw = yaml.safe_load(knn.read_text())
    raw["knn"]["kk"] = 1
    knn.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"unknown key experiments\.knn_resnet50_k3\.knn\.kk"):
        load_resolved(knn)
    del raw["knn"]
    knn.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="match no resolved config"):
        load_resolved(knn)


def test_stage_experiment_prefers_the_resolved_file_and_checks_its_name(tmp_path, params_path):
    run_resolve(parse_params(repo_params({"train": {"lr": 0.5}})), tmp_path)
    _, exp = stage_experiment(params_path, tmp_path / "train" / "tl_densenet121_progressive.yaml",
                              "tl_densenet121_progressive")
    assert exp.train.lr == 0.5                      # from the resolved file, not from params_path
    _, exp = stage_experiment(params_path, None, "tl_densenet121_progressive")
    assert exp.train.lr == repo_params()["train"]["lr"]
    with pytest.raises(ConfigError, match="resolves experiment 'cnn_basic', not 'cnn_residual'"):
        stage_experiment(params_path, tmp_path / "train" / "cnn_basic.yaml", "cnn_residual")


def test_resolve_stage_script(tmp_path, params_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["resolve.py", "--params", str(params_path), "--out", str(tmp_path / "r")])
    from conftest import ROOT

    runpy.run_path(str(ROOT / "stages" / "resolve.py"), run_name="__main__")
    assert len(list((tmp_path / "r").rglob("*.yaml"))) == len(TRAINED) + 2 * len(RETRIEVAL)
