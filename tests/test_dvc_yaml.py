"""dvc.yaml against the code: every stage depends on exactly the source files it imports.

The imports are derived here from the code itself (the stage script, then every ``carbench`` module it
imports, transitively, lazy imports inside functions included), so a new import without its dvc.yaml dep
(a change there that `dvc status` would call up to date) fails this test, and so does a stale dep. The same holds
for the data files in src/carbench/resources/: a stage depends on exactly those its code names (a string literal
equal to the file name), plus those a named text resource names in turn (sources.yaml names the annotations).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from support.params import ROOT

PACKAGE = "carbench"
SRC = ROOT / "src" / PACKAGE
RESOURCES = SRC / "resources"
#: Resources read as text, which may name other resources.
TEXT_RESOURCES = (".yaml", ".yml", ".json", ".txt", ".csv")


def _module_file(module: str) -> Path | None:
    """``carbench.x`` -> src/carbench/x.py (or the package's __init__.py); None outside the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    path = SRC.joinpath(*parts[1:])
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1]) if parts[-1] != "__init__" else ".".join(parts[:-1])


def direct_imports(path: Path) -> set[Path]:
    """The package files ``path`` imports (anywhere in it), plus the __init__.py of every package on the way."""
    found: set[Path] = set()
    tree = ast.parse(path.read_text(), str(path))
    here = _package_of(path) if path.is_relative_to(SRC) else ""
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):     # importing a.b.c runs a/__init__, a/b/__init__, ...
                file = _module_file(".".join(parts[:i]))
                if file is not None:
                    found.add(file)
    return found


def imported_files(script: Path) -> set[str]:
    """The stage script and every package file it imports, transitively, as repository-relative paths."""
    todo, seen = [script], {script}
    while todo:
        for dep in direct_imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return {p.relative_to(ROOT).as_posix() for p in seen}


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def resource_files(code: set[str]) -> set[str]:
    """The files of src/carbench/resources/ that the ``code`` files name, and those named by a named text resource."""
    by_name = {p.name: p for p in RESOURCES.iterdir() if p.is_file()}
    literals = set().union(*(_string_literals(ROOT / f) for f in code if f.endswith(".py")))
    found = {p for name, p in by_name.items() if name in literals}
    todo = list(found)
    while todo:
        resource = todo.pop()
        if resource.suffix not in TEXT_RESOURCES:
            continue
        text = resource.read_text()
        for name, p in by_name.items():
            if p not in found and name in text:
                found.add(p)
                todo.append(p)
    return {p.relative_to(ROOT).as_posix() for p in found}


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _is_code(dep: str) -> bool:
    return dep.endswith(".py") and (dep.startswith("stages/") or dep.startswith("src/"))


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_code_deps_are_exactly_its_imports(name):
    stage = _stages()[name]
    # train@ starts with its launcher (base.launcher: python unless set)
    script = re.search(r"(?:python|\$\{base\.launcher\}) (stages/\S+\.py)", stage["cmd"]).group(1)
    want = imported_files(ROOT / script)
    have = {d for d in stage.get("deps", []) if isinstance(d, str) and _is_code(d)}
    assert have == want, (f"dvc.yaml stage {name!r}: missing {sorted(want - have)}, stale {sorted(have - want)}; "
                          f"its code deps should be:\n" + "\n".join(f"  - {d}" for d in sorted(want)))


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_resource_deps_are_exactly_the_resources_its_code_names(name):
    stage = _stages()[name]
    script = re.search(r"(?:python|\$\{base\.launcher\}) (stages/\S+\.py)", stage["cmd"]).group(1)
    want = resource_files(imported_files(ROOT / script))
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
    script.write_text("def main():\n    from carbench.metrics import top_k\n")
    assert {"src/carbench/metrics.py", "src/carbench/__init__.py"} <= {
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
    loss) reaches them through models/<name>, so a src/carbench/train/ file among their deps would rerun them for
    an edit that changes nothing they compute."""
    train_code = (SRC / "train").relative_to(ROOT).as_posix() + "/"
    stages = _stages()
    for name in ("evaluate", "embed", "knn"):
        deps = sorted(d for d in stages[name].get("deps", []) if isinstance(d, str) and d.startswith(train_code))
        assert not deps, f"dvc.yaml stage {name!r} depends on training code {deps}: import it from carbench.model"


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
