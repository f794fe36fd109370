"""The params reference, generated: ``python -m carbench.workshop.reference [--check]``.

Writes ``docs/params.md`` from the schema (the section dataclasses of :mod:`carbench.config.schema`, each field
with its doc string and constraints in its metadata) and the values of ``params.yaml``: one table per section (key,
type, allowed values, default, value, description), the experiments table (from ``experiments`` and ``dag``) and the
schema of the sources file (:mod:`carbench.download.sources`). The same experiments table replaces the block between
:data:`START` and :data:`END` in README.md when both markers are there (nothing else of README.md is touched), and
the published figures of ``resources/anchors.yaml`` the block between :data:`ANCHORS_START` and :data:`ANCHORS_END` in
docs/results.md.
dvc.yaml's ``artifacts:`` section, one DVC artifact per experiment, is generated too (:mod:`carbench.workshop.artifacts`).

``--check`` writes nothing: it exits 1 naming each stale file, 0 when all are up to date.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Optional

from . import artifacts
from ..config import SECTION_SCHEMAS, EmbedWithConfig, parse_params, read_yaml
from ..download.sources import ExpectedData, Route, RouteFile, Sources

DOC = Path("docs") / "params.md"
README = Path("README.md")
RESULTS = Path("docs") / "results.md"   # holds the published figures' table
DVC_YAML = Path("dvc.yaml")
PARAMS = Path("params.yaml")
START, END = "<!-- experiments:start -->", "<!-- experiments:end -->"
#: Section keys of an experiment entry, in the order the table shows them.
EXPERIMENT_SECTIONS = ("model", "train", "embed", "knn")
#: The sources file's dataclasses, documented under "Data sources" (prefix of their keys in the file).
SOURCES_SCHEMAS = (("expected.", ExpectedData), ("routes[].", Route), ("routes[].files.<file>.", RouteFile))


# ----------------------------------------------------------------------------- schema
def schema_classes() -> list[type]:
    """Every dataclass a params or sources file is built into (nested ones included), each once."""
    found: list[type] = []
    todo = [*SECTION_SCHEMAS.values(), Sources]
    while todo:
        cls = todo.pop(0)
        if cls in found:
            continue
        found.append(cls)
        hints = typing.get_type_hints(cls)
        todo += [tp for f in dataclasses.fields(cls) for tp in _nested(hints[f.name])]
    return found


def _nested(tp: Any) -> list[type]:
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [t for arg in typing.get_args(tp) for t in _nested(arg)]


def type_name(tp: Any) -> str:
    """An annotation as a reader of a YAML file sees it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return f"{type_name(rest[0])} or null"
    if origin is tuple:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"mapping to {type_name(args[1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return tp.__name__


def allowed(meta: typing.Mapping[str, Any]) -> str:
    """The choices or the range a field's metadata allows ("" when anything of its type goes)."""
    if "choices" in meta:
        return " \\| ".join(f"`{c}`" for c in meta["choices"])
    low = f"{meta['min']} ≤ " if "min" in meta else f"{meta['gt']} < " if "gt" in meta else ""
    high = f" ≤ {meta['max']}" if "max" in meta else f" < {meta['lt']}" if "lt" in meta else ""
    if low and high:
        return f"{low}x{high}"
    for key, sign in (("min", "≥"), ("gt", ">"), ("max", "≤"), ("lt", "<")):
        if key in meta:
            return f"{sign} {meta[key]}"
    return ""


def default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{flow(f.default)}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{flow(f.default_factory())}`"
    return "—"


def flow(value: Any) -> str:
    """``value`` as YAML flow text (``null``, ``true``, ``[1, 2]``, ``{k: v}``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def doc_of(f: dataclasses.Field) -> str:
    return str(f.metadata.get("doc", ""))


def _cell(text: str) -> str:
    """Markdown table cell: pipes escaped, ``<`` outside code spans kept as text (not the start of an HTML tag)."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;")
    return "`".join(parts)


def _class_doc(cls: type) -> str:
    return " ".join(line.strip() for line in (inspect.getdoc(cls) or "").splitlines())


# ----------------------------------------------------------------------------- tables
def _rows(cls: type, prefix: str, values: Optional[dict]) -> Iterator[list[str]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        row = [f"`{key}`", _cell(type_name(tp)), allowed(f.metadata), _cell(default(f))]
        if values is not None:
            value = values.get(f.name)
            row.append("" if dataclasses.is_dataclass(tp) else _cell(f"`{flow(value)}`") if f.name in values
                       else "(absent: the default)")
        yield row + [_cell(doc_of(f))]
        if dataclasses.is_dataclass(tp):
            yield from _rows(tp, f"{key}.", values.get(f.name) if values is not None else None)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _sets(entry: dict) -> str:
    """What an experiment entry overrides, compactly: ``model: arch=cnn, init=he; train: epochs=150``."""
    parts = []
    for section in EXPERIMENT_SECTIONS:
        keys = entry.get(section) or {}
        if keys:
            parts.append(f"{section}: " + ", ".join(f"{k}={flow(v)}" for k, v in keys.items()))
    return "; ".join(parts) or "the section defaults"


def experiments_table(raw: dict) -> str:
    """name | configuration | what it sets | embeds with: every experiment of ``raw``, in its order."""
    dag = raw.get("dag") or {}
    embedders = {name: f"`{embedder}`" for name, embedder in (dag.get("retrieval") or {}).items()}
    embedders.update({name: f"`{w.get('arch')}` {w.get('weights')} at {w.get('image_size')} px, untrained"
                      for name, w in (dag.get("pretrained") or {}).items()})
    rows = [[f"`{name}`", entry["config"], _cell(_sets(entry)), embedders.get(name, "—")]
            for name, entry in raw["experiments"].items()]
    return "\n".join(_table(["experiment", "configuration", "what it sets", "embeds with"], rows))


def render(raw: dict) -> str:
    """The text of docs/params.md for the params mapping ``raw`` (validated first)."""
    parse_params(raw)
    out = [
        "# params.yaml reference",
        "",
        "<!-- Generated by `python -m carbench.workshop.reference` from src/carbench/config/schema.py and params.yaml: "
        "edit those, not this file. -->",
        "",
        "Every key of `params.yaml`, from the schema in `src/carbench/config/schema.py`, which rejects unknown "
        "keys, wrong types and out-of-range values before any stage works. *Default*: the value a key takes when "
        "`params.yaml` leaves it out (— : the key is required). *params.yaml*: the value there.",
        "",
    ]
    for section, cls in SECTION_SCHEMAS.items():
        out += [f"## `{section}`", "", _class_doc(cls), ""]
        rows = list(_rows(cls, "", raw.get(section) or {}))
        out += _table(["key", "type", "allowed", "default", "params.yaml", "description"], rows) + [""]
    out += [
        "## `experiments` and `dag`",
        "",
        "Each experiment names its configuration (`transfer` and `scratch` train a model, `retrieval` embeds the "
        "images with a trained experiment's best checkpoint and classifies them by k-NN) and overrides keys of "
        "the `model`/`train` (trained) or `embed`/`knn` (retrieval) sections. `dag` lists the trained "
        "experiments and maps each retrieval experiment to the trained experiment that embeds for it (DVC's "
        "`foreach` cannot filter `experiments` by configuration), or, under `dag.pretrained`, to pretrained "
        "weights that embed for it untrained (a baseline: no `train@`, its stages are `embed_pretrained@` and "
        "`knn_pretrained@`).",
        "",
        experiments_table(raw),
        "",
        f"An entry of `dag.pretrained`: {_class_doc(EmbedWithConfig)}",
        "",
    ]
    out += _table(["key", "type", "allowed", "default", "description"],
                  list(_rows(EmbedWithConfig, "dag.pretrained.<name>.", None))) + [""]
    out += [
        "## Data sources (`src/carbench/resources/sources.yaml`)",
        "",
        "Not params: the routes `data.source: auto` tries in order and the fingerprint they must match are the "
        "code's data, in this tracked file (a dependency of the download stage). Stanford's own URLs answer 404: "
        "add a route there. Its keys:",
        "",
    ]
    rows = [row for prefix, cls in SOURCES_SCHEMAS for row in _rows(cls, prefix, None)]
    out += _table(["key", "type", "allowed", "default", "description"], rows) + [""]
    return "\n".join(out)


ANCHORS_START, ANCHORS_END = "<!-- anchors:start -->", "<!-- anchors:end -->"


def anchors_table() -> str:
    """The published figures of src/carbench/resources/anchors.yaml, as docs/results.md lists them."""
    from ..report.anchors import describe, load_anchors

    data = load_anchors()
    rows = [[a["protocol"], _cell(describe(data, a)), a["pretraining"],
             _cell(f"checkpoint selection: {a['selection']}; {a['notes']}")] for a in data["anchors"]]
    return "\n".join(_table(["protocol", "published figure (backbone, input, source)", "pretraining", "notes"], rows))


def with_block(page: str, table: str, start_marker: str = START, end_marker: str = END) -> str:
    """Markdown ``page`` with the block between the two markers replaced by ``table`` (unchanged without both)."""
    start, end = page.find(start_marker), page.find(end_marker)
    if start < 0 or end < start:
        return page
    return page[:start + len(start_marker)] + "\n" + table + "\n" + page[end:]


def with_readme_block(readme: str, table: str) -> str:
    """``readme`` with the experiments block replaced by ``table`` (unchanged without both markers)."""
    return with_block(readme, table)


# ----------------------------------------------------------------------------- command line
def outputs(root: Path, params: Path) -> dict[Path, str]:
    """Each file this generator owns under ``root`` -> the text it should have."""
    raw = read_yaml(root / params)
    wanted = {root / DOC: render(raw)}
    readme = root / README
    text = readme.read_text() if readme.is_file() else ""
    if START in text and END in text:
        wanted[readme] = with_readme_block(text, experiments_table(raw))
    results = root / RESULTS
    text = results.read_text() if results.is_file() else ""
    if ANCHORS_START in text and ANCHORS_END in text:
        wanted[results] = with_block(text, anchors_table(), ANCHORS_START, ANCHORS_END)
    dvc_yaml = root / DVC_YAML
    if dvc_yaml.is_file():
        wanted[dvc_yaml] = artifacts.with_section(dvc_yaml.read_text(), raw)
    return wanted


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale file")
    parser.add_argument("--params", type=Path, default=PARAMS, help="params file, relative to --root")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs(args.root, args.params).items():
        if path.is_file() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    for path in stale:
        print(f"{path} is stale: run python -m carbench.workshop.reference", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    from ..core.cli import run_command

    run_command(main)
