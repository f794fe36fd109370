"""Exported models loaded as a deployment would: a contract that disagrees with its model file is refused."""
from __future__ import annotations

import json
import shutil

import pytest
from support.exports import export_world
from support.retrieval import IMAGE_SIZE

from carbench.core.errors import UserError
from carbench.export import contract as C
from carbench.export.runtime import load_exported

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return export_world(tmp_path_factory.mktemp("runtime"))


def _tampered(src, tmp_path, edit):
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    contract = json.loads((dst / C.CONTRACT).read_text())
    edit(contract)
    (dst / C.CONTRACT).write_text(json.dumps(contract))
    return dst


def _size(contract):
    contract["preprocess"]["resize"]["size"] = [IMAGE_SIZE * 2, IMAGE_SIZE * 2]


def _mean(contract):
    contract["preprocess"]["mean"] = [v + 0.1 for v in contract["preprocess"]["mean"]]


def _std(contract):
    contract["preprocess"]["std"] = [v * 1.5 for v in contract["preprocess"]["std"]]


@pytest.mark.parametrize("file", [C.ONNX_FILE, C.TORCHSCRIPT_FILE])
@pytest.mark.parametrize("edit", [_size, _mean, _std])
def test_a_contract_that_disagrees_with_the_model_is_refused(world, tmp_path, file, edit):
    bad = _tampered(world.exports["cnn_basic"], tmp_path, edit)
    with pytest.raises(UserError, match="contract"):
        load_exported(bad / file)
    load_exported(world.exports["cnn_basic"] / file)            # the untouched export loads


def test_a_foreign_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="contract.json"):
        load_exported(tmp_path / C.ONNX_FILE)
    (tmp_path / C.CONTRACT).write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not a carbench export contract"):
        load_exported(tmp_path / C.ONNX_FILE)
