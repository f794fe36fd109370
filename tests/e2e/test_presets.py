"""End to end: the paper and laptop presets (configs/overrides/) through the real `dvc repro`, at a tiny size.

Each preset is merged over the committed params as `scripts/offline.py --overrides` would, then only the size is
shrunk (synthetic photos, small crops, an epoch or two, MobileNetV2 where the preset names ResNet-50: the only
ImageNet weights offline); every other setting of the preset (optimizer, lr scaling, resize-then-crop, schedule,
refit, freeze modes, feature cache) runs as written.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from support.project import env, make_project, merge, run
from support.params import ROOT, committed_params_text

from carbench.config import parse_params
from carbench.config.schema import LR_SCALING_BATCH

pytestmark = pytest.mark.e2e

TINY_DATA = {
    "data": {"source": "synthetic", "synthetic": {"num_classes": 4, "train_per_class": 10, "test_per_class": 4,
                                                  "min_size": 48, "max_size": 64}},
    "evaluate": {"latency_runs": 1, "latency_warmup": 0, "misclassified": 2, "confused_pairs": 2},
}
STAND_IN = {"arch": "mobilenet_v2", "weights": "IMAGENET1K_V1"}
#: The paper recipe at 1/16 of its size: resize 32, crop 28 (448/512 = 28/32), 2 epochs, batch 8.
PAPER_TINY = merge(TINY_DATA, {"crop": {"size": 32, "preview": 4}, "experiments": {"tl_resnet50_finetune": {
    "model": STAND_IN, "train": {"epochs": 2, "batch_size": 8, "image_size": 28, "resize_size": 32}}}})
LAPTOP_TINY = merge(TINY_DATA, {"crop": {"size": 32, "preview": 4}, "experiments": {
    name: {"train": {"epochs": 1, "image_size": 32}} for name in
    ("tl_resnet50_frozen", "tl_resnet50_finetune")},
    "dag": {"pretrained": {"knn_imagenet_baseline": {"image_size": 32}}}})


def preset_params(preset: str, tiny: dict) -> dict:
    """The committed params.yaml + configs/overrides/<preset>.yaml + ``tiny``."""
    overrides = yaml.safe_load((ROOT / "configs" / "overrides" / f"{preset}.yaml").read_text())
    return merge(merge(yaml.safe_load(committed_params_text()), overrides), tiny)


def test_paper_preset_trains_with_the_recipe(tmp_path):
    raw = preset_params("paper_resnet50", PAPER_TINY)
    exp = parse_params(raw).experiments["tl_resnet50_finetune"]
    assert (exp.train.lr_scaling, exp.train.resize_size, exp.train.epochs) == ("linear", 32, 2)
    path = make_project(tmp_path / "project", raw)
    environ = env(tmp_path / "torch_home")
    run(["dvc", "repro", "evaluate@tl_resnet50_finetune"], path, environ)
    ckpt = torch.load(path / "models/tl_resnet50_finetune/best.pt", map_location="cpu", weights_only=False)
    trained = ckpt["train"]
    assert (trained["optimizer"], trained["weight_decay"], trained["label_smoothing"], trained["scheduler"],
            trained["lr_scaling"], trained["image_size"], trained["resize_size"]) == \
        ("sgd", 0.0005, 0.1, "cosine", "linear", 28, 32)
    head = next(g for g in ckpt["optimizer"]["param_groups"] if g["name"].startswith("head"))
    assert head["base_lr"] == pytest.approx(0.1 * 8 / LR_SCALING_BATCH)        # lr 0.1 x batch / 256
    evaluated = json.loads((path / "metrics/eval/tl_resnet50_finetune.json").read_text())
    assert (evaluated["model_arch"], evaluated["model_freeze"], evaluated["model_image_size"],
            evaluated["model_resize_size"]) == ("mobilenet_v2", "full", 28, 32)
    assert 0.0 <= evaluated["top1"] <= 1.0


def test_laptop_preset_runs_its_cached_and_retrieval_experiments(tmp_path):
    raw = preset_params("laptop", LAPTOP_TINY)
    parse_params(raw)
    path = make_project(tmp_path / "project", raw)
    environ = env(tmp_path / "torch_home")
    done = run(["dvc", "repro", "evaluate@tl_resnet50_frozen", "evaluate@knn_resnet50_k3",
                "evaluate@knn_imagenet_baseline"], path, environ)
    assert "feature cache" in done.stdout + done.stderr     # the frozen backbone runs once
    for name in ("tl_resnet50_frozen", "knn_resnet50_k3", "knn_imagenet_baseline"):
        evaluated = json.loads((path / f"metrics/eval/{name}.json").read_text())
        assert 0.0 <= evaluated["top1"] <= 1.0
    frozen = json.loads((path / "metrics/eval/tl_resnet50_frozen.json").read_text())
    assert (frozen["model_arch"], frozen["model_freeze"]) == ("mobilenet_v2", "frozen")
    baseline = json.loads((path / "metrics/eval/knn_imagenet_baseline.json").read_text())
    assert (baseline["model_arch"], baseline["model_image_size"]) == ("mobilenet_v2", 32)   # offline weights
