"""carbench.download.fingerprint: the definition, the pinned value of the real dataset, canonical order, what differs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import scipy.io
from support.data import SYNTHETIC_TINY
from support.packagings import reference_lines

from carbench.download.fingerprint import (
    canonical_order,
    differences,
    digest,
    fingerprint,
    read_reference,
    write_reference,
)
from carbench.download.layouts import SourceImage, open_local
from carbench.download.matfiles import read_all_in_one
from carbench.download.sources import load_sources

EXPECTED = load_sources().expected   # the shipped src/carbench/resources/sources.yaml


def _plain_sha256(lines) -> str:
    """The issue's definition, written out: sorted lines, each ended by \\n, sha256 of the UTF-8 bytes."""
    return hashlib.sha256("".join(f"{line}\n" for line in sorted(lines)).encode("utf-8")).hexdigest()


def _image(split="train", cls=1, box=(1, 2, 30, 40), fname="00001.jpg", path=Path("/nonexistent")) -> SourceImage:
    return SourceImage(split=split, fname=fname, path=path, official_class=cls, box=box, origin="test")


def test_fingerprint_of_a_source_follows_the_definition(synthetic_source, tmp_path):
    with open_local(synthetic_source, tmp_path) as source:
        found = fingerprint(source.images)
    lines = reference_lines(synthetic_source)
    assert found.sha256 == _plain_sha256(lines)
    assert found.labels_sha256 == _plain_sha256(",".join(line.split(",")[:2]) for line in lines)
    assert found.counts == {"train": 4 * SYNTHETIC_TINY["train_per_class"], "test": 4 * SYNTHETIC_TINY["test_per_class"]}


def test_file_names_do_not_change_the_fingerprint_but_a_label_does():
    a = [_image(fname="00001.jpg"), _image(split="test", cls=2, fname="00002.jpg")]
    renamed = [_image(fname="x.jpg"), _image(split="test", cls=2, fname="y.jpg")]
    relabelled = [_image(fname="00001.jpg"), _image(split="test", cls=3, fname="00002.jpg")]
    assert fingerprint(a) == fingerprint(renamed)
    assert fingerprint(a).sha256 != fingerprint(relabelled).sha256


def test_boxless_source_has_only_a_labels_fingerprint():
    found = fingerprint([_image(box=None)])
    assert found.sha256 is None and found.labels_sha256 == _plain_sha256(["train,1"])
    assert found.as_dict()["sha256"] == "none"


def test_real_devkit_matches_the_pinned_fingerprint_in_both_packagings(real_data):
    """The split devkit (train annos + test labels) and the all-in-one cars_annos.mat give the pinned value."""
    devkit = real_data / "stanford-cars-devkit"
    split_lines = reference_lines(devkit)
    annos = scipy.io.loadmat(devkit / "cars_annos.mat", squeeze_me=True)["annotations"]
    all_in_one = [f"{'test' if r['test'] else 'train'},{r['class']},{r['bbox_x1']},{r['bbox_y1']},"
                  f"{r['bbox_x2']},{r['bbox_y2']}" for r in annos]
    expected = EXPECTED
    assert _plain_sha256(split_lines) == _plain_sha256(all_in_one) == expected.sha256
    assert _plain_sha256(",".join(x.split(",")[:2]) for x in all_in_one) == expected.labels_sha256
    assert sum(x.startswith("train,") for x in all_in_one) == expected.train == 8144
    assert sum(x.startswith("test,") for x in all_in_one) == expected.test == 8041
    assert sorted(read_reference(expected.annotations)) == sorted(all_in_one)
    names, rows = read_all_in_one(devkit / "cars_annos.mat")  # our reader agrees with plain scipy
    assert len(names) == 196 and [f"{'test' if r.test else 'train'},{r.official_class},"
                                  + ",".join(map(str, r.box)) for r in rows] == all_in_one


def test_shipped_reference_lines_hash_to_the_pinned_fingerprint():
    expected = EXPECTED
    lines = read_reference(expected.annotations)
    assert digest(lines) == expected.sha256 and len(lines) == expected.train + expected.test


def test_reference_file_is_byte_reproducible(tmp_path):
    write_reference(tmp_path / "a.csv.gz", ["train,1,1,1,2,2", "test,2,1,1,3,3"])
    write_reference(tmp_path / "b.csv.gz", ["test,2,1,1,3,3", "train,1,1,1,2,2"])
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()
    assert read_reference(tmp_path / "a.csv.gz") == ["test,2,1,1,3,3", "train,1,1,1,2,2"]


def test_canonical_order_ignores_names_and_breaks_ties_by_content(tmp_path):
    (tmp_path / "p").write_bytes(b"photo P")
    (tmp_path / "q").write_bytes(b"photo Q")
    tied = [_image(split="test", fname="b.jpg", path=tmp_path / "q"), _image(split="test", fname="a.jpg", path=tmp_path / "p")]
    images = [_image(cls=2, fname="z.jpg"), *tied, _image(cls=1, fname="y.jpg")]
    first = [i.path for i in canonical_order(images)]
    second = [i.path for i in canonical_order(list(reversed(images)))]
    assert first == second
    assert [i.split for i in canonical_order(images)] == ["train", "train", "test", "test"]
    by_content = sorted([tmp_path / "p", tmp_path / "q"], key=lambda p: hashlib.sha256(p.read_bytes()).hexdigest())
    assert first[2:] == by_content


def _expect(images):
    found = fingerprint(images)
    return found.sha256, found.labels_sha256, found.counts


def test_differences_name_a_wrong_label_and_a_missing_image():
    good = [_image(cls=1, box=(1, 1, 10, 10)), _image(cls=2, box=(2, 2, 20, 20), fname="00002.jpg"),
            _image(split="test", cls=1, box=(3, 3, 30, 30), fname="00003.jpg")]
    reference = [f"{i.split},{i.official_class}," + ",".join(map(str, i.box)) for i in good]
    sha, labels, counts = _expect(good)
    assert differences(good, sha, labels, counts, reference) == []
    wrong = [good[0], _image(cls=1, box=(2, 2, 20, 20), fname="00002.jpg"), good[2]]
    problems = differences(wrong, sha, labels, counts, reference)
    assert problems == ["cars_train/00002.jpg: class 1 where the dataset has class 2 for this train image and box"]
    missing = differences(good[:2], sha, labels, counts, reference)
    assert "0 test images where the dataset has 1" in missing[0]
    assert "missing: the test image with class/box (test,1,3,3,30,30) is not in this source" in missing


def test_differences_without_reference_still_reject():
    good = [_image(cls=1), _image(cls=2, fname="00002.jpg")]
    sha, labels, counts = _expect(good)
    problems = differences([good[0], _image(cls=3, fname="00002.jpg")], sha, labels, counts, None)
    assert len(problems) == 1 and "differs from the expected" in problems[0]


def test_boxless_source_is_checked_by_labels():
    good = [_image(cls=1), _image(cls=2, fname="00002.jpg")]
    sha, labels, counts = _expect(good)
    boxless = [_image(cls=1, box=None), _image(cls=2, box=None, fname="00002.jpg")]
    assert differences(boxless, sha, labels, counts, None) == []
    relabelled = [_image(cls=1, box=None), _image(cls=1, box=None, fname="00002.jpg")]
    assert differences(relabelled, sha, labels, counts, None)
