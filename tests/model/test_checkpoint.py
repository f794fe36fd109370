"""carbench.model.checkpoint: the best.pt format round-trips and rebuilds the model without weights files."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from support.params import repo_params

from carbench.config import parse_params
from carbench.core.errors import UserError
from carbench.model.build import build_model
from carbench.model.checkpoint import (
    FORMAT,
    load_classifier,
    make_checkpoint,
    save_checkpoint,
)
from carbench.train.optim import build_optimizer, build_scheduler, param_groups

NAMES = ["a", "b", "c"]


# Tiny models: one thread is faster and immune to other processes competing for the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def write_checkpoint(path: Path, exp_name: str = "cnn_bn_dropout", record: dict | None = None,
                     **model_over) -> torch.nn.Module:
    exp = parse_params(repo_params()).experiments[exp_name]
    m = dataclasses.replace(exp.model, **model_over)
    t = dataclasses.replace(exp.train, image_size=16)
    torch.manual_seed(0)
    model = build_model(m, len(NAMES), pretrained=False)
    opt = build_optimizer(param_groups(model, m, t), t)
    model(torch.randn(4, 3, 16, 16)).sum().backward()  # some BN statistics and optimizer state
    opt.step()
    sched = build_scheduler(opt, t, 3)
    save_checkpoint(make_checkpoint(model, m, t, NAMES, 2, 0.5, opt.state_dict(), sched.state_dict(),
                                    weights=record), path)
    return model.eval()


def test_checkpoint_has_the_documented_keys_and_loads_weights_only(tmp_path):
    write_checkpoint(tmp_path / "best.pt")
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["format"] == FORMAT and ckpt["kind"] == "classifier"
    for key in ("model", "num_classes", "class_names", "image_size", "mean", "std", "state_dict", "epoch",
                "best_val_top1", "train", "optimizer", "scheduler", "weights_file", "weights_sha256"):
        assert key in ckpt, key
    assert ckpt["class_names"] == NAMES and ckpt["image_size"] == 16 and ckpt["epoch"] == 2


def test_checkpoint_records_the_weights_file_and_its_sha256(tmp_path):
    record = {"weights_file": "resnet50-11ad3fa6.pth", "weights_sha256": "11ad3fa6" + "0" * 56}
    write_checkpoint(tmp_path / "best.pt", record=record)
    _, info = load_classifier(tmp_path / "best.pt", "cpu")
    assert {k: info[k] for k in record} == record
    write_checkpoint(tmp_path / "other.pt")  # a caller that does not say which weights it started from
    ckpt = torch.load(tmp_path / "other.pt", weights_only=True)
    assert ckpt["weights_file"] == ckpt["weights_sha256"] == "unknown"


def test_load_classifier_gives_the_same_logits(tmp_path):
    model = write_checkpoint(tmp_path / "best.pt")
    loaded, info = load_classifier(tmp_path / "best.pt", "cpu")
    x = torch.randn(3, 3, 16, 16)
    assert not loaded.training and "state_dict" not in info
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.mean == model.mean and info["num_classes"] == len(NAMES)


def test_pretrained_config_loads_without_any_weights_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    model = write_checkpoint(tmp_path / "best.pt", "tl_resnet50_frozen", arch="mobilenet_v2",
                             weights="IMAGENET1K_V1", head_hidden=8)
    loaded, _ = load_classifier(tmp_path / "best.pt", "cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.penultimate(x), model.penultimate(x))
    assert not (tmp_path / "empty").exists()


def test_bad_checkpoint_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_classifier(tmp_path / "missing.pt", "cpu")
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="not a carbench checkpoint"):
        load_classifier(tmp_path / "x.pt", "cpu")


def test_checkpoint_records_the_data_source(tmp_path):
    exp = parse_params(repo_params()).experiments["cnn_bn_dropout"]
    t = dataclasses.replace(exp.train, image_size=16)
    model = build_model(exp.model, len(NAMES), pretrained=False)
    save_checkpoint(make_checkpoint(model, exp.model, t, NAMES, 1, 0.5, {}, {}, data_source="synthetic"),
                    tmp_path / "best.pt")
    assert load_classifier(tmp_path / "best.pt", "cpu")[1]["data_source"] == "synthetic"
    write_checkpoint(tmp_path / "other.pt")                   # a caller that does not say: recorded as unknown
    assert torch.load(tmp_path / "other.pt", weights_only=True)["data_source"] == ""
