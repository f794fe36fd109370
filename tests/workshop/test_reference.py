"""carbench.workshop.reference: docs/params.md and README's experiments block are what the schema and params.yaml give."""
from __future__ import annotations

import dataclasses
import shutil
import typing

import pytest
import yaml
from support.params import ROOT, committed_params_text, repo_params

from carbench import config
from carbench.workshop import reference
from carbench.config import schema
from carbench.download import sources


def _table_column(text: str, heading: str, column: int) -> list[str]:
    """Column ``column`` of the first table after ``heading``, without its header rows."""
    lines = (text.split(heading, 1)[1] if heading else text).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split(" | ")[column].strip("| `"))
    return rows


def test_docs_params_md_is_generated_from_the_schema_and_params():
    """Fails when a doc string, a constraint or a committed value changed without `python -m carbench.workshop.reference`."""
    want = reference.render(yaml.safe_load(committed_params_text()))
    have = (ROOT / reference.DOC).read_text()
    assert have == want, "docs/params.md is stale: run `python -m carbench.workshop.reference`"


def test_readme_experiments_block_is_generated_when_it_has_the_markers():
    text = (ROOT / reference.README).read_text()
    if reference.START not in text:
        pytest.skip("README.md has no experiments block")
    table = reference.experiments_table(yaml.safe_load(committed_params_text()))
    assert reference.with_readme_block(text, table) == text, "README.md is stale: run `python -m carbench.workshop.reference`"


def test_every_schema_field_has_a_doc_string():
    classes = reference.schema_classes()
    # The walk reaches the nested and the sources dataclasses, not only the sections.
    assert {config.SyntheticConfig, sources.Route, sources.RouteFile, sources.ExpectedData} <= set(classes)
    missing = [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)
               if not str(f.metadata.get("doc", "")).strip()]
    assert not missing, f"schema fields without a doc string (give them _f(doc=...)): {missing}"


def test_a_field_without_a_doc_string_is_refused():
    with pytest.raises(TypeError):
        schema._f(1, min=0)                        # doc is a required keyword
    with pytest.raises(TypeError, match="doc string"):
        schema._f(1, doc="  ")


def test_every_params_section_has_a_schema_or_is_the_experiment_list():
    assert set(config.SECTIONS) == set(config.SECTION_SCHEMAS) | {"experiments", "dag"}


def test_every_key_of_params_yaml_is_in_the_reference():
    raw = repo_params()
    text = reference.render(raw)
    for section, cls in config.SECTION_SCHEMAS.items():
        keys = _table_column(text, f"## `{section}`", 0)
        assert keys == list(reference_keys(cls)), section
        assert {k for k in raw[section] if not isinstance(raw[section][k], dict)} <= set(keys), section


def reference_keys(cls, prefix: str = ""):
    for f in dataclasses.fields(cls):
        yield f"{prefix}{f.name}"
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from reference_keys(tp, f"{prefix}{f.name}.")


def test_experiments_table_lists_exactly_the_experiments_of_params():
    raw = repo_params()
    table = reference.experiments_table(raw)
    names = _table_column(table, "", 0)
    assert names == list(raw["experiments"])
    embedders = dict(zip(names, _table_column(table, "", 3)))
    assert {n: e for n, e in embedders.items() if e != "—" and "untrained" not in e} == raw["dag"]["retrieval"]
    assert embedders["knn_imagenet_baseline"] == "resnet50` IMAGENET1K_V2 at 384 px, untrained"   # dag.pretrained
    assert "cnn_widths=[64, 128, 256, 512]" in table and "weighting=distance" in table


def test_an_experiment_added_to_params_appears(tmp_path):
    raw = repo_params()
    raw["experiments"]["knn_extra"] = {"config": "retrieval", "embed": {}, "knn": {"k": 1}}
    raw["dag"]["retrieval"]["knn_extra"] = "cnn_basic"
    assert "| `knn_extra` | retrieval | knn: k=1 | `cnn_basic` |" in reference.render(raw)


def test_allowed_values_and_ranges():
    assert reference.allowed({"choices": ("a", "b")}) == "`a` \\| `b`"
    assert reference.allowed({"min": 0}) == "≥ 0" and reference.allowed({"gt": 0.0, "lt": 1.0}) == "0.0 < x < 1.0"
    assert reference.allowed({"lt": 1}) == "< 1" and reference.allowed({}) == ""


def _project(tmp_path, readme: str | None):
    (tmp_path / "params.yaml").write_text(committed_params_text())
    if readme is not None:
        (tmp_path / "README.md").write_text(readme)
    return tmp_path


def test_generate_then_check(tmp_path, capsys):
    root = _project(tmp_path, "# Title\n\nintro\n<!-- experiments:start -->\nold table\n<!-- experiments:end -->\nrest\n")
    assert reference.main(["--root", str(root), "--check"]) == 1
    err = capsys.readouterr().err
    assert "docs/params.md is stale" in err and "README.md is stale" in err
    assert reference.main(["--root", str(root)]) == 0
    readme = (root / "README.md").read_text()
    assert readme.startswith("# Title\n\nintro\n<!-- experiments:start -->\n| experiment |")
    assert readme.endswith("|\n<!-- experiments:end -->\nrest\n") and "old table" not in readme
    assert (root / "docs" / "params.md").read_text() == reference.render(repo_params())
    assert reference.main(["--root", str(root), "--check"]) == 0
    (root / "README.md").write_text(readme.replace("`cnn_basic`", "`cnn_plain`"))
    assert reference.main(["--root", str(root), "--check"]) == 1
    assert "README.md is stale" in capsys.readouterr().err


def test_a_readme_without_the_markers_is_left_alone(tmp_path):
    text = "# Title\n\nno block here\n"
    root = _project(tmp_path, text)
    assert reference.main(["--root", str(root)]) == 0
    assert (root / "README.md").read_text() == text
    assert reference.main(["--root", str(root), "--check"]) == 0


def test_the_committed_doc_passes_the_check(tmp_path):
    root = _project(tmp_path, None)
    (root / "docs").mkdir()
    shutil.copy(ROOT / reference.DOC, root / "docs" / "params.md")
    assert reference.main(["--root", str(root), "--check"]) == 0


def test_the_results_page_gets_the_published_figures_from_the_anchors_file(tmp_path, capsys):
    root = _project(tmp_path, None)
    (root / "docs").mkdir()
    shutil.copy(ROOT / reference.DOC, root / "docs" / "params.md")
    (root / "docs" / "results.md").write_text("# Results\n<!-- anchors:start -->\nold\n<!-- anchors:end -->\nrest\n")
    assert reference.main(["--root", str(root), "--check"]) == 1
    assert "docs/results.md is stale" in capsys.readouterr().err
    assert reference.main(["--root", str(root)]) == 0
    page = (root / "docs" / "results.md").read_text()
    assert "old" not in page and page.endswith("<!-- anchors:end -->\nrest\n")
    assert "| class-disjoint retrieval | 87.7 R@1 (R@8 97.3): ResNet-50, 224 px; Proxy Anchor Loss" in page
    assert reference.main(["--root", str(root), "--check"]) == 0
