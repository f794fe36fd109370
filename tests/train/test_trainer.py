"""carbench.train.trainer: head warm-up, the EMA of the weights, and the refit phase on train+val."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from support.training import run, tiny, weights_of

from carbench.core.runtime import seed_everything
from carbench.train.batches import Order
from carbench.train.engine import setup_trainer, train_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


def test_head_warmup_trains_only_the_head_in_its_epochs(tmp_path, store):
    exp, base = tiny("cnn_bn_dropout", model={"freeze": "full", "head_warmup_epochs": 1}, train={"epochs": 1})
    seed_everything(0)
    trainer, _ = setup_trainer(exp, base, store, torch.device("cpu"))
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    head_before = trainer.model.head.fc.weight.clone()
    trainer.run_epoch(0, type("Bar", (), {"update": lambda self, n: None})())
    after = trainer.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    assert not torch.equal(head_before, trainer.model.head.fc.weight)


def test_ema_averages_the_weights_after_every_step(store):
    exp, base = tiny(train={"ema_decay": 0.75, "augment": "none"})
    seed_everything(0)
    trainer, _ = setup_trainer(exp, base, store, torch.device("cpu"))
    x, y = trainer.train_data.batch(Order.make(torch.arange(8), torch.device("cpu")), 0, 8)
    trainer.model.train()
    trainer.train_step(trainer.prepare(x, True), y)
    first = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step(trainer.prepare(x, True), y)
    second = trainer.model.state_dict()
    ema = trainer.final_module().state_dict()
    for key, value in ema.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * first[key] + 0.25 * second[key], atol=1e-6), key
        else:
            assert torch.equal(value, second[key]), key  # num_batches_tracked is copied


def test_ema_weights_are_the_ones_saved(tmp_path, store):
    exp, base = tiny(train={"ema_decay": 0.9, "epochs": 1})
    seed_everything(base.seed)
    out, _ = run(tmp_path, store, exp, base, "ema")
    plain, _ = run(tmp_path, store, dataclasses.replace(exp, train=dataclasses.replace(exp.train, ema_decay=0.0)),
                   base, "plain")
    saved, raw = weights_of(out), weights_of(plain)  # same seed: the raw weights of both runs are identical
    assert any(not torch.equal(saved[k], raw[k]) for k in saved if saved[k].is_floating_point())


def test_refit_retrains_on_train_and_val_for_the_best_epoch_count(tmp_path, store, capsys):
    exp, base = tiny(train={"epochs": 3, "refit": True})
    summary = train_experiment(exp, base, store, tmp_path / "m", tmp_path / "live", resume_dir=tmp_path / "r")
    err = capsys.readouterr().err
    best = summary["best_epoch"]
    assert best >= 1 and summary["refit_epochs"] == best
    assert "refit: training a fresh model on train+val (36 crops)" in err  # 24 train + 12 val
    assert err.count("refit epoch") == best
    ckpt = torch.load(tmp_path / "m" / "best.pt", weights_only=True)
    assert ckpt["refit"] is True and ckpt["epoch"] == best and ckpt["train"]["epochs"] == best
    plain = dataclasses.replace(exp, train=dataclasses.replace(exp.train, refit=False))
    out, _ = run(tmp_path, store, plain, base, "plain")
    assert any(not torch.equal(ckpt["state_dict"][k], v) for k, v in weights_of(out).items())


def test_refit_on_cached_features(tmp_path, store, capsys):
    exp, base = tiny("tl_resnet50_frozen", model={"arch": "cnn", "weights": "none"},
                     train={"epochs": 2, "refit": True, "augment": "none"})
    exp = dataclasses.replace(exp, config="scratch")
    summary = train_experiment(exp, base, store, tmp_path / "m", tmp_path / "live", resume_dir=tmp_path / "r")
    err = capsys.readouterr().err
    assert "feature cache" in err and "train+val (36 crops)" in err and summary["refit_epochs"] >= 1


def test_a_retrieval_selection_keeps_the_epoch_with_the_best_val_score(tmp_path, store, monkeypatch):
    """Crafted val scores: top-1 is best at epoch 1, MAP@R at epoch 2; each selection keeps its own epoch."""
    from carbench.train import selection
    from carbench.train.trainer import Trainer

    top1, map_r = iter([0.9, 0.1, 0.5] * 2), iter([0.1, 0.95, 0.3] * 2)
    monkeypatch.setattr(Trainer, "evaluate", lambda self: (1.0, next(top1)))
    monkeypatch.setattr(Trainer, "val_retrieval", lambda self: {"val/recall_at_1": 0.5, "val/map_at_r": next(map_r)})
    for select, want in (("map_at_r", 2), ("top1", 1)):
        exp, base = tiny(train={"epochs": 3, "select": select})
        summary = train_experiment(exp, base, store, tmp_path / select / "model", tmp_path / select / "live",
                                   resume_dir=tmp_path / "resume")
        assert summary["best_epoch"] == want
        assert torch.load(tmp_path / select / "model" / "best.pt", weights_only=True)["epoch"] == want
        if select == "map_at_r":   # the chosen epoch's top-1 beside the score that chose it
            assert summary["best_val_top1"] == 0.1 and summary["best_val_map_at_r"] == 0.95
    assert summary["best_val_top1"] == 0.9 and "selected_on" not in summary
    assert selection.best_epoch([{"val/map_at_r": v} for v in (0.1, 0.95, 0.3)], "map_at_r") == 2


def test_a_metric_loss_trains_an_embedding_on_class_balanced_batches(tmp_path, store, monkeypatch):
    from collections import Counter

    from carbench.train.trainer import Trainer

    seen, step = [], Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, x, y: seen.append(y.tolist()) or step(self, x, y))
    exp, base = tiny(model={"embedding_dim": 8},
                     train={"loss": "multi_similarity", "sampler": "m_per_class", "m_per_class": 2, "epochs": 3,
                            "select": "map_at_r", "optimizer": "adam", "lr": 0.01})
    summary = train_experiment(exp, base, store, tmp_path / "model", tmp_path / "live", resume_dir=tmp_path / "resume")
    assert summary["selected_on"] == "val/map_at_r" and 0 < summary["best_val_map_at_r"] <= 1
    ckpt = torch.load(tmp_path / "model" / "best.pt", weights_only=True)
    assert ckpt["state_dict"]["head.hidden.0.weight"].shape[0] == 8
    assert len(seen) == 9                        # 24 photos, batches of 8, 3 epochs: each batch 4 classes x 2
    assert all(sorted(Counter(labels).values()) == [2, 2, 2, 2] for labels in seen), seen


def test_plateau_and_patience_follow_the_selection_score(tmp_path, store, monkeypatch):
    """top-1 keeps rising while MAP@R falls after epoch 1: selected on MAP@R, the lr decays after two epochs
    without a better MAP@R and patience 3 stops the run at epoch 4."""
    from carbench.train.trainer import Trainer

    top1, map_r = iter([0.1, 0.2, 0.3, 0.4, 0.5]), iter([0.9, 0.5, 0.4, 0.3, 0.2])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: (1.0, next(top1)))
    monkeypatch.setattr(Trainer, "val_retrieval", lambda self: {"val/recall_at_1": 0.5, "val/map_at_r": next(map_r)})
    rows = []
    exp, base = tiny(train={"epochs": 5, "select": "map_at_r", "scheduler": "plateau", "gamma": 0.1, "patience": 3})
    train_experiment(exp, base, store, tmp_path / "model", tmp_path / "live", resume_dir=tmp_path / "resume",
                     on_epoch_end=lambda epoch, row: rows.append(row))
    assert len(rows) == 4                                        # stopped: 3 epochs without a better MAP@R
    assert rows[3]["lr"] == pytest.approx(0.1 * rows[2]["lr"])   # decayed after epochs 2 and 3 did not improve
