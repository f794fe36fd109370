"""carbench.workshop.artifacts: dvc.yaml's generated artifacts section (current, read by DVC), versions and the listing."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from support.params import ROOT, committed_params_text

from carbench.workshop import artifacts

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]


def test_the_committed_dvc_yaml_section_is_current():
    """`python -m carbench.workshop.reference` writes it; an experiment added to params.yaml without it fails here."""
    text = (ROOT / "dvc.yaml").read_text()
    assert artifacts.with_section(text, yaml.safe_load(committed_params_text())) == text, \
        "dvc.yaml's artifacts section is stale: run python -m carbench.workshop.reference"


def test_one_model_artifact_per_experiment_with_its_files_and_metadata():
    raw = yaml.safe_load(committed_params_text())
    declared = yaml.safe_load(artifacts.section(raw))["artifacts"]
    assert list(declared) == list(raw["experiments"])
    for name, art in declared.items():
        assert art["type"] == "model" and art["path"] == f"exports/{name}" and art["desc"]
        assert art["labels"][0] == raw["experiments"][name]["config"] and len(art["labels"]) == 3
        assert art["meta"]["headline_metrics"] == f"metrics/headline/{name}.json"
        assert art["meta"]["card"] == f"cards/{name}.md"


def test_with_section_replaces_only_its_block():
    raw = yaml.safe_load(committed_params_text())
    first = artifacts.with_section("stages: {}\n", raw)
    assert first.startswith("stages: {}\n\n" + artifacts.START) and first.endswith(artifacts.END + "\n")
    edited = first.replace("type: model", "type: data", 1)
    assert artifacts.with_section(edited, raw) == first


def _repo(tmp_path, params: dict):
    """A git + DVC repo with one artifact per experiment of ``params``, its export folder tracked by DVC."""
    subprocess.run([*GIT, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    names = list(params["experiments"])
    stage = {"stages": {"make": {"cmd": " && ".join(f"mkdir -p exports/{n} && echo {n} > exports/{n}/model.onnx"
                                                    for n in names),
                                 "outs": [f"exports/{n}" for n in names]}}}
    (tmp_path / "dvc.yaml").write_text(artifacts.with_section(yaml.safe_dump(stage), params))
    for n in names:
        (tmp_path / "metrics" / "headline").mkdir(parents=True, exist_ok=True)
        (tmp_path / "metrics" / "headline" / f"{n}.json").write_text(json.dumps({"top1": 0.5, "f1_macro": 0.4}))
    subprocess.run(["dvc", "repro", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "run"], cwd=tmp_path, check=True)
    return names


@pytest.fixture()
def demo_params():
    """Two experiments, the transfer one run with a stand-in backbone as in the offline demo."""
    return {"model": {"arch": "resnet50"}, "split": {"strategy": "official"},
            "experiments": {"tl_resnet50_frozen": {"config": "transfer", "model": {"arch": "mobilenet_v2"}},
                            "cnn_basic": {"config": "scratch", "model": {"arch": "cnn"}}},
            "dag": {"train": ["tl_resnet50_frozen", "cnn_basic"], "retrieval": {}}}


def test_registered_versions_are_listed_with_their_labels_and_metrics_and_can_be_fetched(tmp_path, demo_params):
    root = tmp_path / "repo"
    root.mkdir()
    names = _repo(root, demo_params)
    assert artifacts.names(root) == names
    assert [r["version"] for r in artifacts.listing(root)] == [None, None]
    tags = artifacts.register(root, "HEAD")
    assert sorted(tags) == sorted(f"{n}@v0.0.1" for n in names)
    rows = {r["name"]: r for r in artifacts.listing(root)}
    assert rows["tl_resnet50_frozen"]["labels"] == ["transfer", "mobilenet_v2", "protocol-official"]
    assert rows["cnn_basic"]["metrics"] == {"top1": 0.5, "f1_macro": 0.4} and rows["cnn_basic"]["version"] == "v0.0.1"
    assert "cnn_basic" in artifacts.format_listing(list(rows.values()))
    from carbench.core.errors import UserError

    with pytest.raises(UserError, match="cannot register tl_resnet50_frozen at HEAD"):
        artifacts.register(root, "HEAD")          # that commit already holds a version
    out = tmp_path / "got"
    subprocess.run(["dvc", "artifacts", "get", ".", "cnn_basic", "-o", str(out)], cwd=root, check=True,
                   capture_output=True)
    assert (out / "model.onnx").read_text() == "cnn_basic\n"


def test_an_unknown_revision_is_one_clear_error(tmp_path, demo_params):
    from carbench.core.errors import UserError

    _repo(tmp_path, demo_params)
    with pytest.raises(UserError, match="neither a Git revision nor a `dvc exp run` experiment"):
        artifacts.register(tmp_path, "no-such-run")
