"""carbench.preflight + carbench.config.resolved: one effective config per stage, read back through the same checks; names
only torchvision knows (model.arch, model.weights) fail there, before any train@."""
from __future__ import annotations

import runpy
import subprocess
import sys

import pytest
import yaml
from support.params import deep_merge, repo_params

from carbench import preflight
from carbench.config import (
    ConfigError,
    EmbedJob,
    EmbedWithConfig,
    KnnJob,
    TrainedExperiment,
    parse_params,
)
from carbench.core.errors import UserError
from carbench.config.resolved import resolved_files
from carbench.config.resolved import embed_stage, knn_stage, load_resolved, train_stage

TRAINED = {"tl_resnet50_frozen", "tl_resnet50_finetune", "tl_densenet121_progressive",
           "cnn_basic", "cnn_bn_dropout", "cnn_residual"}
RETRIEVAL = {"knn_resnet50_k3", "knn_resnet50_k10", "knn_densenet121_cosine", "knn_imagenet_baseline"}


def _texts(raw: dict, out) -> dict[str, str]:
    preflight.run(parse_params(raw), out)
    return {p.relative_to(out).as_posix(): p.read_text() for p in sorted(out.rglob("*.yaml"))}


def test_one_file_per_stage_instance():
    files = resolved_files(parse_params(repo_params()))
    assert set(files) == ({f"train/{n}.yaml" for n in TRAINED} | {f"embed/{n}.yaml" for n in RETRIEVAL}
                          | {f"knn/{n}.yaml" for n in RETRIEVAL})


def test_written_files_load_back_to_the_same_experiments(tmp_path):
    params = parse_params(repo_params())
    preflight.run(params, tmp_path / "resolved")
    for name in TRAINED:
        base, exp = load_resolved(tmp_path / "resolved" / "train" / f"{name}.yaml")
        assert base == params.base
        assert exp == params.experiments[name]
    for name in RETRIEVAL:
        full = params.experiments[name]
        _, embed = load_resolved(tmp_path / "resolved" / "embed" / f"{name}.yaml")
        _, knn = load_resolved(tmp_path / "resolved" / "knn" / f"{name}.yaml")
        # each file holds its stage's part of the retrieval experiment, and only that
        assert embed == EmbedJob(name=name, embedder=full.embedder, embed=full.embed)
        assert knn == KnnJob(name=name, knn=full.knn)


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
    preflight.run(parse_params(repo_params()), tmp_path)
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


def test_stage_readers_prefer_the_resolved_file_and_check_its_name(tmp_path, params_path):
    preflight.run(parse_params(repo_params({"train": {"lr": 0.5}})), tmp_path)
    _, exp = train_stage(params_path, tmp_path / "train" / "tl_densenet121_progressive.yaml",
                         "tl_densenet121_progressive")
    assert exp.train.lr == 0.5                      # from the resolved file, not from params_path
    _, exp = train_stage(params_path, None, "tl_densenet121_progressive")
    assert exp.train.lr == repo_params()["train"]["lr"]
    with pytest.raises(ConfigError, match="resolves experiment 'cnn_basic', not 'cnn_residual'"):
        train_stage(params_path, tmp_path / "train" / "cnn_basic.yaml", "cnn_residual")


def test_each_stage_reader_returns_its_own_type_or_refuses(tmp_path, params_path):
    preflight.run(parse_params(repo_params()), tmp_path)
    name = "knn_resnet50_k3"
    assert isinstance(train_stage(params_path, None, "cnn_basic")[1], TrainedExperiment)
    for reader, kind, cls in ((embed_stage, "embed", EmbedJob), (knn_stage, "knn", KnnJob)):
        assert isinstance(reader(params_path, tmp_path / kind / f"{name}.yaml", name)[1], cls)
        assert reader(params_path, None, name) == reader(params_path, tmp_path / kind / f"{name}.yaml", name)
    # a file of another stage, or an experiment of the other kind, stops before any work
    with pytest.raises(ConfigError, match="not the resolved config of a knn@ stage"):
        knn_stage(params_path, tmp_path / "embed" / f"{name}.yaml", name)
    with pytest.raises(UserError, match="'cnn_basic' is a scratch experiment, not a retrieval one"):
        embed_stage(params_path, None, "cnn_basic")
    with pytest.raises(UserError, match=f"'{name}' is a retrieval experiment, not a transfer or scratch one"):
        train_stage(params_path, None, name)


def test_a_pretrained_baseline_resolves_its_weights_and_a_dag_pretrained_knob_reaches_only_its_embed(tmp_path):
    """dag.pretrained's entry is the baseline's embedder: written into its embed file (read back typed), and a change
    there reruns embed@ of the baseline alone (its knn@ and every other file stay byte for byte)."""
    before = _texts(repo_params(), tmp_path / "a")
    raw = deep_merge(repo_params(), {"dag": {"pretrained": {"knn_imagenet_baseline": {"image_size": 224}}}})
    after = _texts(raw, tmp_path / "b")
    assert {rel for rel in before if before[rel] != after[rel]} == {"embed/knn_imagenet_baseline.yaml"}
    _, job = load_resolved(tmp_path / "b" / "embed" / "knn_imagenet_baseline.yaml")
    assert job.embedder == EmbedWithConfig(arch="resnet50", weights="IMAGENET1K_V2", image_size=224)
    with pytest.raises(ConfigError, match=r"dag.pretrained.knn_imagenet_baseline.weights must name pretrained"):
        parse_params(deep_merge(repo_params(), {"dag": {"pretrained": {"knn_imagenet_baseline": {"weights": "none"}}}}))


def test_resolve_stage_script(tmp_path, params_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["resolve.py", "--params", str(params_path), "--out", str(tmp_path / "r")])
    from support.params import ROOT

    runpy.run_path(str(ROOT / "stages" / "resolve.py"), run_name="__main__")
    assert len(list((tmp_path / "r").rglob("*.yaml"))) == len(TRAINED) + 2 * len(RETRIEVAL)


# ----------------------------------------------------------------------------- names only torchvision knows
@pytest.mark.parametrize("overrides, message", [
    ({"experiments": {"tl_resnet50_frozen": {"model": {"arch": "resnet5O"}}}},
     "experiments.tl_resnet50_frozen.model.arch must be 'cnn' or a torchvision classification model name, got "
     "'resnet5O' (did you mean 'resnet50'?)"),
    ({"experiments": {"tl_resnet50_frozen": {"model": {"weights": "IMAGENET1K_V9"}}}},
     "experiments.tl_resnet50_frozen.model.weights: 'IMAGENET1K_V9' is not a weights name of 'resnet50' (known: "),
    ({"experiments": {"tl_densenet121_progressive": {"model": {"weights": "no/such/weights.pth"}}}},
     "experiments.tl_densenet121_progressive.model.weights: file not found: no/such/weights.pth"),
    ({"experiments": {"cnn_basic": {"model": {"arch": "cnnn"}}}}, "got 'cnnn' (did you mean 'cnn'?)"),
    # the section default is checked too, though every experiment of the committed params overrides it
    ({"model": {"arch": "resnet5O"}}, "model.arch must be 'cnn' or a torchvision classification model name"),
])
def test_a_bad_arch_or_weights_name_fails_in_resolve_before_anything_is_written(tmp_path, overrides, message):
    params = parse_params(repo_params(overrides))     # loading params stays torch-free and lets it through
    with pytest.raises(ConfigError) as caught:
        preflight.run(params, tmp_path / "resolved")
    assert message in str(caught.value)
    assert not (tmp_path / "resolved").exists()


def test_the_resolve_stage_prints_one_error_line_naming_the_key(tmp_path):
    from support.params import ROOT, committed_params_text

    params = tmp_path / "params.yaml"
    params.write_text(committed_params_text().replace("arch: resnet50     #", "arch: resnet5O     #", 1))
    assert "arch: resnet5O" in params.read_text()
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "resolve.py"), "--params", str(params),
                           "--out", str(tmp_path / "resolved")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: model.arch must be 'cnn' or a torchvision classification model "
                                        "name, got 'resnet5O' (did you mean 'resnet50'?)"]
    assert not (tmp_path / "resolved").exists()


def test_an_aggregate_knob_changes_no_resolved_config_and_only_aggregate_tracks_it(tmp_path):
    import yaml
    from support.params import ROOT

    from carbench.config.resolved import resolved_files

    before = resolved_files(parse_params(repo_params()))
    after = resolved_files(parse_params(repo_params({"aggregate": {"bootstrap": 10, "seed": 3}})))
    assert before == after                                   # no train@/embed@/knn@ reruns
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tracking = {name for name, stage in stages.items()
                if any(p in ("aggregate", "aggregate.bootstrap", "aggregate.seed")
                       for p in (stage.get("do", stage).get("params") or []))}
    assert tracking == {"aggregate"}


def test_a_changed_key_that_reaches_no_stage_is_one_warning_line_under_a_plain_dvc_run(tmp_path, capsys, monkeypatch):
    """`dvc exp run -S train.epochs=3` is not refused (DVC runs no check of ours first): resolve says so instead."""
    from carbench.core.signals import STOP_FILE_ENV

    monkeypatch.delenv(STOP_FILE_ENV, raising=False)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(repo_params(), sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    assert preflight.warn_unread(params) == []
    params.write_text(yaml.safe_dump(deep_merge(repo_params(), {"data": {"path": "/no/such"},
                                                                "train": {"epochs": 3, "lr": 0.02}})))
    lines = preflight.warn_unread(params)
    assert capsys.readouterr().err.splitlines() == lines
    assert [line.split(" ", 2)[1] for line in lines] == ["data.path=/no/such", "train.epochs=3"]
    assert lines[0].endswith("is ignored while data.source=auto (read only while it is 'local')")
    assert lines[1].endswith("set experiments.<name>.train.epochs instead")
    monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path / "stop"))     # under the scripts: they already said it
    assert preflight.warn_unread(params) == []
