"""carbench.train.optim: parameter groups, layer-wise lr decay, optimizers, lr schedules."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from support.params import repo_params
from support.training import tiny

from carbench.config import parse_params
from carbench.model.build import build_model
from carbench.core.runtime import seed_everything
from carbench.train.engine import setup_trainer
from carbench.train.optim import (
    PLATEAU_PATIENCE,
    build_optimizer,
    build_scheduler,
    param_groups,
)

STEPS = 5


# Tiny models: one thread is faster and immune to other processes competing for the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def configs(model=None, train=None):
    exp = parse_params(repo_params()).experiments["cnn_basic"]
    return dataclasses.replace(exp.model, **(model or {})), dataclasses.replace(exp.train, **(train or {}))


def groups_by_name(model_over=None, train_over=None):
    m, t = configs(model_over, train_over)
    model = build_model(m, 3, pretrained=False)
    return model, {g["name"]: g for g in param_groups(model, m, t)}


def test_groups_split_head_backbone_and_skip_decay_on_bias_and_norm():
    model, groups = groups_by_name({"cnn_batch_norm": True, "backbone_lr_mult": 0.1}, {"lr": 0.5, "weight_decay": 0.01})
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert groups["head"]["lr"] == 0.5 and groups["backbone"]["lr"] == pytest.approx(0.05)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0.01
    assert all(p.ndim <= 1 for p in groups["backbone_no_decay"]["params"])
    counted = sum(p.numel() for g in groups.values() for p in g["params"])
    assert counted == sum(p.numel() for p in model.parameters())


def test_frozen_optimizes_the_head_only():
    _, groups = groups_by_name({"freeze": "frozen"})
    assert set(groups) == {"head", "head_no_decay"}


def test_partial_optimizes_the_last_blocks():
    model, groups = groups_by_name({"freeze": "partial", "trainable_blocks": 1})
    ids = {id(p) for g in groups.values() for p in g["params"]}
    assert ids == {id(p) for p in model.head.parameters()} | {id(p) for p in model.block_parameters(2)}


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers(name, cls):
    m, t = configs(train={"optimizer": name})
    model = build_model(m, 3, pretrained=False)
    opt = build_optimizer(param_groups(model, m, t), t)
    assert isinstance(opt, cls)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()


def lr_curve(train_over: dict, epochs_of_steps: int, val=None) -> list[float]:
    m, t = configs(train=train_over)
    model = build_model(m, 3, pretrained=False)
    opt = build_optimizer(param_groups(model, m, t), t)
    sched = build_scheduler(opt, t, STEPS)
    lrs = []
    for epoch in range(epochs_of_steps):
        for _ in range(STEPS):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
        sched.epoch_end(val[epoch] if val else 0.0)
    return lrs


def test_linear_warmup_then_cosine():
    lr, epochs, warm = 0.1, 6, 2
    lrs = lr_curve({"lr": lr, "scheduler": "cosine", "epochs": epochs, "warmup_epochs": warm}, epochs)
    warm_steps = warm * STEPS
    for s in range(warm_steps):
        assert lrs[s] == pytest.approx(lr * (s + 1) / warm_steps)
    for s in range(warm_steps, epochs * STEPS):
        progress = (s / STEPS - warm) / (epochs - warm)
        assert lrs[s] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * progress)))
    assert lrs[warm_steps] == pytest.approx(lr) and lrs[-1] < 0.01 * lr


def test_step_schedule_decays_every_step_size_epochs():
    lrs = lr_curve({"lr": 1.0, "scheduler": "step", "step_size": 2, "gamma": 0.5, "warmup_epochs": 0}, 5)
    per_epoch = [lrs[e * STEPS] for e in range(5)]
    assert per_epoch == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25])


def test_plateau_decays_after_patience_epochs_without_improvement():
    val = [0.1, 0.2, 0.2, 0.2, 0.2, 0.2]
    lrs = lr_curve({"lr": 1.0, "scheduler": "plateau", "gamma": 0.1, "warmup_epochs": 0}, len(val), val)
    per_epoch = [lrs[e * STEPS] for e in range(len(val))]
    decay_epoch = 2 + PLATEAU_PATIENCE  # epochs 2.. do not improve on 0.2
    assert per_epoch[:decay_epoch] == pytest.approx([1.0] * decay_epoch)
    assert per_epoch[decay_epoch] == pytest.approx(0.1)


def test_schedule_state_round_trip():
    m, t = configs(train={"scheduler": "cosine", "warmup_epochs": 1})
    model = build_model(m, 3, pretrained=False)
    opt = build_optimizer(param_groups(model, m, t), t)
    sched = build_scheduler(opt, t, STEPS)
    for _ in range(7):
        sched.step()
    other = build_scheduler(build_optimizer(param_groups(model, m, t), t), t, STEPS)
    other.load_state_dict(sched.state_dict())
    assert other.last_lr() == sched.last_lr()


def test_layer_decay_gives_each_backbone_block_its_lr(store):
    exp, base = tiny("cnn_residual", model={"layer_decay": 0.5, "backbone_lr_mult": 0.2, "cnn_widths": (4, 8, 8)})
    seed_everything(0)
    trainer, _ = setup_trainer(exp, base, store, torch.device("cpu"))
    lrs = {g["name"]: g["base_lr"] for g in param_groups(trainer.model, exp.model, exp.train)}
    n, lr = trainer.model.num_blocks, exp.train.lr
    assert n == 3 and lrs["head"] == lr
    for i in range(n):
        assert lrs[f"backbone{i}"] == pytest.approx(lr * 0.2 * 0.5 ** (n - i)), i
    covered = sum(len(g["params"]) for g in param_groups(trainer.model, exp.model, exp.train))
    assert covered == len(list(trainer.model.parameters()))
    plain = param_groups(trainer.model, dataclasses.replace(exp.model, layer_decay=1.0), exp.train)
    assert {g["name"] for g in plain} == {"head", "head_no_decay", "backbone", "backbone_no_decay"}


def test_linear_lr_scaling_multiplies_by_the_batch_over_256():
    _, groups = groups_by_name({"backbone_lr_mult": 0.5}, {"lr": 0.1, "batch_size": 64, "lr_scaling": "linear"})
    assert groups["head"]["lr"] == pytest.approx(0.1 * 64 / 256) == groups["head"]["base_lr"]
    assert groups["backbone"]["lr"] == pytest.approx(0.1 * 64 / 256 * 0.5)
    _, plain = groups_by_name(None, {"lr": 0.1, "batch_size": 64})
    assert plain["head"]["lr"] == 0.1                                   # lr_scaling: none leaves lr as set
