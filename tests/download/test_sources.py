"""carbench.download.sources: the shipped routes and fingerprint file, and its errors (naming the file and key)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support.params import repo_params

from carbench.config import ConfigError, parse_params
from carbench.download.sources import SOURCES, load_sources

ROUTE = {"name": "mirror", "kind": "urls", "files": {"stanford-cars.tgz": {"urls": ["https://example.org/x.tgz"]}}}


def _write(folder: Path, content) -> Path:
    path = folder / "sources.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _shipped() -> dict:
    return yaml.safe_load(SOURCES.read_text())


def test_the_shipped_file_holds_the_routes_and_the_full_dataset():
    sources = load_sources()
    assert [r.name for r in sources.routes] == ["kaggle-torchvision", "kaggle-jessicali", "fastai-all-in-one",
                                                "stanford-official", "hf-parquet"]
    assert (sources.expected.train, sources.expected.test) == (8144, 8041)
    # The annotations are named relative to the file, so the stage finds them from any working directory.
    assert Path(sources.expected.annotations) == SOURCES.parent / "stanford_cars_annotations.csv.gz"
    assert sources.routes[1].files["cars_test_annos_withlabels.mat"].md5 == "b0a2b23655a3edd16d84508592a98d10"


def test_the_header_tells_a_user_to_add_a_route_here():
    header = SOURCES.read_text().split("\nexpected:")[0]
    assert "add yours" in header and "kind: urls" in header


def test_a_route_added_by_a_user_is_tried(tmp_path):
    content = _shipped()
    content["routes"].insert(0, ROUTE)
    (tmp_path / "stanford_cars_annotations.csv.gz").write_bytes(b"")
    sources = load_sources(_write(tmp_path, content))
    assert sources.routes[0].name == "mirror" and sources.routes[0].files["stanford-cars.tgz"].md5 is None


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["routes"][0].update(kind="ftp"), r"sources\.routes\[0\]\.kind must be one of"),
    (lambda c: c["routes"][0].pop("ref"), r"sources\.routes\[0\]\.ref must name the kaggle dataset"),
    (lambda c: c["routes"][4].pop("revision"), r"sources\.routes\[4\]\.revision must pin a commit"),
    (lambda c: c["routes"][2]["files"]["stanford-cars.tgz"].update(urls=[]), r"files\.stanford-cars\.tgz\.urls"),
    (lambda c: c["routes"].append(dict(c["routes"][0])), r"two routes are named 'kaggle-torchvision'"),
    (lambda c: c.update(routes=[]), r"sources\.routes must list at least one route"),
    (lambda c: c["routes"][0].update(url="x"), r"unknown key sources\.routes\[0\]\.url"),
    (lambda c: c["expected"].pop("sha256"), r"missing key sources\.expected\.sha256"),
    (lambda c: c["expected"].update(train=-1), r"sources\.expected\.train must be >= 0"),
    (lambda c: c["expected"].update(annotations="nope.csv.gz"), r"sources\.expected\.annotations: .*nope\.csv\.gz"),
    (lambda c: c.pop("routes"), r"missing key sources\.routes"),
])
def test_a_bad_sources_file_names_the_file_and_the_key(tmp_path, edit, message):
    content = _shipped()
    content["expected"]["annotations"] = str(SOURCES.parent / content["expected"]["annotations"])
    edit(content)
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError, match=message) as info:
        load_sources(path)
    assert "sources.yaml: " in str(info.value)


def test_a_missing_sources_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"sources file not found: .*absent\.yaml"):
        load_sources(tmp_path / "absent.yaml")


@pytest.mark.parametrize("key", ["routes", "expected"])
def test_params_from_before_say_where_routes_and_fingerprint_went(key):
    raw = repo_params({"data": {key: {}}})
    with pytest.raises(ConfigError, match=rf"data\.{key} is no longer a param: .*src/carbench/resources/sources\.yaml"):
        parse_params(raw)
