"""dvc.yaml against the code: every stage's code deps cover exactly the source files it imports.

The imports are derived from the code itself (support.imports: the stage script, then every ``carbench`` module it
imports, transitively, lazy imports inside functions included). A stage lists a folder of src/ (a package it uses
whole, or nearly) or single files; every imported file must lie in one of them, and every listed file and folder
must hold an imported one, so a new import without its dvc.yaml dep (a change there that `dvc status` would call up
to date) fails, and so does a stale dep. Where a folder would rerun costly stages for code they never import, the
tests below pin the precision that matters. The data files in src/carbench/resources/ are listed one by one: a
stage depends on exactly those its code names, plus those a named text resource names in turn.
"""
from __future__ import annotations

import re

import pytest
import yaml
from support.imports import RESOURCES, SRC, direct_imports, imported_files, resource_files
from support.params import ROOT

def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _is_code(dep: str) -> bool:
    """A code dep: a stage script, a module, or a folder of src/carbench other than the resources."""
    if dep.startswith("stages/"):
        return True
    return dep.startswith("src/") and not dep.startswith(RESOURCES.relative_to(ROOT).as_posix()) and \
        (dep.endswith(".py") or (ROOT / dep).is_dir())


def _code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if isinstance(d, str) and _is_code(d)}


def _covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


def _script(stage: dict) -> str:
    # train@ starts with its launcher (base.launcher: python unless set)
    return re.search(r"(?:python|\$\{base\.launcher\}) (stages/\S+\.py)", stage["cmd"]).group(1)


def stages_reached_by(path: str) -> set[str]:
    """The stages whose deps cover ``path``: those `dvc status` lists as changed after an edit to it."""
    return {name for name, stage in _stages().items()
            if any(isinstance(d, str) and _covers(d, path) for d in stage.get("deps", []))}


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_code_deps_cover_exactly_its_imports(name):
    stage = _stages()[name]
    want = imported_files(ROOT / _script(stage))
    have = _code_deps(stage)
    missing = sorted(f for f in want if not any(_covers(d, f) for d in have))
    stale = sorted(d for d in have if not any(_covers(d, f) for f in want))
    nested = sorted(d for d in have if any(o != d and _covers(o, d) for o in have))
    assert not (missing or stale or nested), (f"dvc.yaml stage {name!r}: missing {missing}, stale {stale}, "
                                              f"inside another dep {nested}; it imports:\n" +
                                              "\n".join(f"  - {d}" for d in sorted(want)))


def test_the_coverage_check_fails_on_a_missing_or_stale_dep():
    """The check above can fail: a stage without its train folder misses augment.py; a folder it never imports is
    stale."""
    want = imported_files(ROOT / "stages" / "train.py")
    have = _code_deps(_stages()["train"])
    assert "src/carbench/train/augment.py" in want
    assert not any(_covers(d, "src/carbench/train/augment.py") for d in have - {"src/carbench/train"})
    assert not any(_covers("src/carbench/download", f) for f in want)


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_resource_deps_are_exactly_the_resources_its_code_names(name):
    stage = _stages()[name]
    want = resource_files(imported_files(ROOT / _script(stage)))
    prefix = RESOURCES.relative_to(ROOT).as_posix() + "/"
    have = {d for d in stage.get("deps", []) if isinstance(d, str) and d.startswith(prefix)}
    assert have == want, f"dvc.yaml stage {name!r}: missing resource deps {sorted(want - have)}, stale {sorted(have - want)}"


def test_the_resource_walk_follows_code_then_resources():
    """The download code names sources.yaml, which names the annotations; the crop code names neither."""
    assert resource_files(imported_files(ROOT / "stages" / "download.py")) == {
        "src/carbench/resources/sources.yaml", "src/carbench/resources/stanford_cars_annotations.csv.gz"}
    assert resource_files(imported_files(ROOT / "stages" / "crop.py")) == set()


def test_the_import_walk_sees_relative_lazy_and_package_imports(tmp_path):
    """The walk itself can fail: plots.py is reached from aggregate, and a lazy import inside a function counts."""
    assert "src/carbench/report/plots.py" in imported_files(ROOT / "stages" / "aggregate.py")
    assert "src/carbench/__init__.py" in imported_files(ROOT / "stages" / "aggregate.py")
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from carbench.core.metrics import top_k\n")
    assert {"src/carbench/core/metrics.py", "src/carbench/__init__.py"} <= {
        p.relative_to(ROOT).as_posix() for p in direct_imports(script)}
    script.write_text("import os\n")
    assert direct_imports(script) == set()


def test_train_stages_track_their_resolved_config_not_params_sections():
    stages = _stages()
    for name, kind in (("train", "train"), ("embed", "embed"), ("knn", "knn")):
        stage = stages[name]
        assert "params" not in stage, f"{name}@ must depend on its resolved file, not on params sections"
        assert any(d.startswith(f"data/resolved/{kind}/") for d in stage["deps"]), name
        assert f"--resolved data/resolved/{kind}/" in stage["cmd"], name


def test_stages_that_load_models_do_not_depend_on_training_code():
    """evaluate@, embed@ and knn@ only load trained models (carbench.model): a training change (a mixup tweak, a
    loss) reaches them through models/<name>, so training code among their deps would rerun them for an edit that
    changes nothing they compute."""
    stages = _stages()
    for name in ("evaluate", "embed", "knn", "export"):
        deps = sorted(d for d in stages[name].get("deps", []) if isinstance(d, str) and
                      (_covers("src/carbench/train", d) or _covers(d, "src/carbench/train/engine.py")))
        assert not deps, f"dvc.yaml stage {name!r} depends on training code {deps}: import it from carbench.model"


def test_an_edit_to_mixup_reaches_only_train():
    assert stages_reached_by("src/carbench/train/augment.py") == {"train"}


def test_an_edit_to_a_download_only_reader_reaches_only_download():
    """split and crop read data/raw through carbench.data.raw: an edit to a layout reader, the fingerprint or a
    route marks only download as changed (what follows reruns only when data/raw's hash changes)."""
    for module in sorted((SRC / "download").glob("*.py")):
        assert stages_reached_by(module.relative_to(ROOT).as_posix()) == {"download"}, module.name


def test_an_edit_to_the_summary_code_does_not_rerun_evaluate():
    """evaluate@ runs the model over the test set once per experiment: it lists only the report modules it imports,
    so a change to the summary, the cards or the anchors leaves it up to date."""
    for module in ("aggregate.py", "card.py", "anchors.py", "disjoint.py"):
        assert "evaluate" not in stages_reached_by(f"src/carbench/report/{module}"), module


def test_a_pretrained_baseline_embeds_without_a_trained_model_and_is_scored_like_every_retrieval_experiment():
    """dag.pretrained: embed_pretrained@ runs embed@'s command on exactly embed@'s deps but models/<trained>, so no
    train@ runs for it; knn_pretrained@ is knn@ itself (one definition, a YAML alias)."""
    stages = _stages()
    embed, pretrained = stages["embed"], stages["embed_pretrained"]
    assert pretrained["cmd"] == embed["cmd"]
    assert set(embed["deps"]) - set(pretrained["deps"]) == {"models/${item}"}
    assert not [d for d in pretrained["deps"] if d.startswith("models/")]
    assert pretrained["outs"] == embed["outs"] and stages["knn_pretrained"] == stages["knn"]
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert raw["embed_pretrained"]["foreach"] == raw["knn_pretrained"]["foreach"] == "${dag.pretrained}"
