"""Fixtures of the data and download tests (their conftest.py files import them): a copy of the tiny synthetic set, its
expected fingerprint, a baseline packing."""
from __future__ import annotations

import hashlib
import shutil

import pytest
from support import packagings
from support.routes import download_and_crop, route_case

from carbench.download.fingerprint import write_reference


@pytest.fixture
def source(synthetic_source, tmp_path):
    """A private, editable copy of the tiny synthetic dataset."""
    return shutil.copytree(synthetic_source, tmp_path / "source")


@pytest.fixture(scope="module")
def expected(synthetic_source, tmp_path_factory) -> dict:
    """``data.expected`` for the tiny synthetic set, from lines computed independently of the code."""
    lines = packagings.reference_lines(synthetic_source)
    reference = tmp_path_factory.mktemp("reference") / "annotations.csv.gz"
    write_reference(reference, lines)
    sha = lambda ls: hashlib.sha256("".join(f"{x}\n" for x in sorted(ls)).encode()).hexdigest()  # noqa: E731
    return {"sha256": sha(lines), "labels_sha256": sha(",".join(x.split(",")[:2]) for x in lines),
            "train": sum(x.startswith("train") for x in lines), "test": sum(x.startswith("test") for x in lines),
            "annotations": str(reference)}


@pytest.fixture(scope="module")
def baseline(synthetic_source, expected, tmp_path_factory):
    """The tiny set read from its torchvision folder (``data.source: local``)."""
    work = tmp_path_factory.mktemp("baseline")
    data = route_case(work, expected, [], source="local", path=str(synthetic_source))
    return download_and_crop(data, work)
