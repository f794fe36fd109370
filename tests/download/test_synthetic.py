"""The synthetic generator: torchvision's exact layout, deterministic, fast, learnable."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from PIL import Image
from support.data import SYNTHETIC_TINY, synthetic_config

from carbench.data.crop_geometry import crop_batch
from carbench.download.matfiles import read_annotations, read_class_names
from carbench.download.synthetic import class_names, class_style, generate, main

#: The default config (12 classes x 36 images) should take ~1 s; this bound leaves room for a loaded CI box.
DEFAULT_GENERATION_BUDGET_S = 6.0
LEARNABILITY_CROP = 16


def _digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_layout_and_counts(synthetic_source):
    per_class = SYNTHETIC_TINY["train_per_class"], SYNTHETIC_TINY["test_per_class"]
    classes = SYNTHETIC_TINY["num_classes"]
    assert len(list((synthetic_source / "cars_train").glob("*.jpg"))) == classes * per_class[0]
    assert len(list((synthetic_source / "cars_test").glob("*.jpg"))) == classes * per_class[1]
    assert read_class_names(synthetic_source / "devkit" / "cars_meta.mat") == class_names(classes)
    assert len(read_annotations(synthetic_source / "devkit" / "cars_test_annos.mat", require_class=False)) == 12
    train = read_annotations(synthetic_source / "devkit" / "cars_train_annos.mat")
    assert sorted({r.official_class for r in train}) == list(range(1, classes + 1))


def test_boxes_are_one_based_inside_and_tight(synthetic_source):
    for ann in read_annotations(synthetic_source / "cars_test_annos_withlabels.mat"):
        with Image.open(synthetic_source / "cars_test" / ann.fname) as img:
            width, height = img.size
        x1, y1, x2, y2 = ann.box
        assert 1 <= x1 < x2 <= width and 1 <= y1 < y2 <= height
        assert (x2 - x1 + 1) >= 0.4 * width  # the vehicle is a large part of the photo, not a speck


def test_torchvision_reads_it(synthetic_source):
    torchvision = pytest.importorskip("torchvision")
    train = torchvision.datasets.StanfordCars(str(synthetic_source.parent), split="train")
    test = torchvision.datasets.StanfordCars(str(synthetic_source.parent), split="test")
    assert len(train) == 24 and len(test) == 12
    assert train.classes == class_names(SYNTHETIC_TINY["num_classes"])
    image, target = test[0]
    assert image.mode == "RGB" and 0 <= target < SYNTHETIC_TINY["num_classes"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = synthetic_config(num_classes=2, train_per_class=2, test_per_class=1)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, cfg, seed)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_worker_processes_write_the_same_bytes(tmp_path, monkeypatch):
    import carbench.download.synthetic as S

    monkeypatch.setattr(S, "RENDER_CHUNK", 3)   # several tasks per split, finishing in any order
    cfg = synthetic_config(num_classes=3, train_per_class=3, test_per_class=2)
    generate(tmp_path / "one", cfg, 5)
    generate(tmp_path / "two", cfg, 5, workers=2)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_grayscale_fraction_and_size_range(tmp_path):
    generate(tmp_path / "g", synthetic_config(num_classes=2, grayscale_fraction=1.0, min_size=40, max_size=50), 0)
    for path in (tmp_path / "g" / "cars_train").glob("*.jpg"):
        with Image.open(path) as img:
            assert img.mode == "L" and all(40 <= side <= 50 for side in img.size)


def test_class_styles_differ():
    styles = [class_style(i) for i in range(196)]
    assert len({(s.body, s.wheels, s.panes, s.stripes, round(s.hue, 3)) for s in styles}) == 196
    assert len(set(class_names(196))) == 196


def test_default_config_is_fast(tmp_path):
    started = time.perf_counter()
    generate(tmp_path / "d", synthetic_config(num_classes=12, train_per_class=24, test_per_class=12,
                                              min_size=96, max_size=160, grayscale_fraction=0.05), 0)
    assert time.perf_counter() - started < DEFAULT_GENERATION_BUDGET_S


def _box_crops(root, split: str) -> tuple[np.ndarray, np.ndarray]:
    mat = root / ("devkit/cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat")
    rows = read_annotations(mat)
    images = [Image.open(root / f"cars_{split}" / r.fname) for r in rows]
    crops = crop_batch(images, [r.box for r in rows], 0.0, LEARNABILITY_CROP, False).astype(np.float32) / 255
    return crops.reshape(len(rows), -1), np.array([r.official_class - 1 for r in rows])


def test_classes_are_learnable_far_above_chance(tmp_path):
    """A nearest-class-mean classifier on 16 px box crops; a CNN does far better (see docs/data.md)."""
    classes = 8
    generate(tmp_path / "l", synthetic_config(num_classes=classes, train_per_class=16, test_per_class=8), 0)
    x_train, y_train = _box_crops(tmp_path / "l", "train")
    x_test, y_test = _box_crops(tmp_path / "l", "test")
    means = np.stack([x_train[y_train == c].mean(0) for c in range(classes)])
    predicted = np.argmin(((x_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == y_test).mean() > 3.0 / classes


def test_command_line(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--classes", "3", "--train-per-class", "2", "--test-per-class", "1",
                 "--min-size", "48", "--max-size", "64", "--seed", "1"]) == 0
    assert "6 train + 3 test images of 3 classes" in capsys.readouterr().out
    assert main([str(tmp_path / "cli")]) == 1  # refuses a non-empty folder
    assert main([str(tmp_path / "other"), "--classes", "1"]) == 1  # invalid config named
    assert "synthetic.num_classes" in capsys.readouterr().err
