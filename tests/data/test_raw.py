"""carbench.data.raw, the data/raw format: what its writers write its readers read back; a missing file names the
stage that makes it; a manifest without a column is refused naming it. (What download packs: test_manifest.py.)"""
from __future__ import annotations

import ast
import json

import pytest

from carbench.data import raw
from carbench.core.errors import DataError
from support.params import ROOT

ROW = ["cars_train/00001.jpg", 0, 14, "Audi TTS Coupe 2012", 39, 116, 569, 375, "train", 600, 400, 0, 1234]


def test_what_is_written_is_read_back(tmp_path):
    raw.write_manifest(tmp_path, [ROW, [*ROW[:1], 1, 3, "Acura TL Sedan 2012", *ROW[4:8], "test", 600, 400, 1234, 10]])
    raw.write_classes(tmp_path, {"class_names": ["Audi TTS Coupe 2012"], "official_classes": [14], "source": "x"})
    frame = raw.read_manifest(tmp_path)
    assert tuple(frame.columns) == raw.MANIFEST_COLUMNS and len(frame) == 2
    assert frame.iloc[0].tolist() == ROW and frame["official_split"].tolist() == ["train", "test"]
    assert raw.read_classes(tmp_path)["official_classes"] == [14]
    assert json.loads((tmp_path / raw.CLASSES_JSON).read_text())["source"] == "x"


@pytest.mark.parametrize("reader", [raw.read_manifest, raw.read_classes])
def test_a_missing_file_names_the_download_stage(tmp_path, reader):
    with pytest.raises(DataError, match="not found: run the download stage first"):
        reader(tmp_path)


def test_a_manifest_without_a_column_is_refused_naming_it(tmp_path):
    (tmp_path / raw.MANIFEST).write_text(",".join(c for c in raw.MANIFEST_COLUMNS if c != "nbytes") + "\n")
    with pytest.raises(DataError, match="missing column.s. nbytes"):
        raw.read_manifest(tmp_path)


def test_the_format_imports_none_of_the_download_side_readers():
    """split and crop depend on this module alone for data/raw (dvc.yaml): it must stay free of layouts, .mat
    files, archives and the fingerprint, or a change to those would rerun them."""
    tree = ast.parse((ROOT / "src" / "carbench" / "data" / "raw.py").read_text())
    imported = {(node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m.split(".")[-1] in {"layouts", "matfiles", "archives", "fingerprint",
                                                              "manifest", "images"}}, imported
