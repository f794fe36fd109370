"""carbench.train.plan (the run plan, computed once) and the engine's one loop over the fit and refit phases."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from support.training import CLASSES, COUNTS, IMAGE_SIZE, STORE_SIZE, tiny

import carbench.train.plan as plan_module
from carbench.config import ConfigError
from carbench.data.store import load_meta
from carbench.model.build import build_model
from carbench.train import augment
from carbench.train.distributed import Ddp
from carbench.train.engine import RunIO, refit_phase, run_phase, setup_trainer
from carbench.train.plan import REFIT_SEED_OFFSET, make_plan, use_feature_cache
from carbench.train.resume import ResumeState, TrainState
from carbench.train.train_log import NoLive

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def test_the_augmentation_policy_is_derived_and_validated_once(store, monkeypatch):
    calls = []
    original = plan_module.train_policy

    def counted(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(plan_module, "train_policy", counted)
    exp, base = tiny(train={"augment": "standard", "crop_scale": (0.5, 1.0)})
    plan = make_plan(exp, base, load_meta(store), device=CPU)
    assert len(calls) == 1
    assert plan.policy == dataclasses.replace(augment.PRESETS["standard"], scale=(0.5, 1.0))
    # the side the training crops are kept at follows from that policy: oversampled for the warp, not above the store
    assert plan.train_size == augment.stored_size(plan.policy, False, IMAGE_SIZE, STORE_SIZE) == STORE_SIZE
    bad, _ = tiny(train={"augment": "wild"})
    with pytest.raises(ValueError, match="train.augment"):
        make_plan(bad, base, load_meta(store), device=CPU)


def test_the_weights_spec_is_resolved_once_and_recorded(store, tmp_path, monkeypatch):
    exp, base = tiny("cnn_basic")
    path = tmp_path / "start.pth"
    torch.save(build_model(exp.model, CLASSES, pretrained=False).state_dict(), path)
    exp = dataclasses.replace(exp, model=dataclasses.replace(exp.model, weights=str(path)))
    resolved = []
    original = plan_module.resolve_weights
    monkeypatch.setattr(plan_module, "resolve_weights", lambda *a: resolved.append(a) or original(*a))
    trainer, _ = setup_trainer(exp, base, store, CPU)
    assert len(resolved) == 1 and trainer.plan.weights.path == path
    assert trainer.plan.weights_record == trainer.weights == {
        "weights_file": "start.pth", "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    none, _ = tiny("cnn_basic")
    assert make_plan(none, base, load_meta(store), device=CPU).weights_record == {"weights_file": "none",
                                                                                 "weights_sha256": "none"}


def test_per_rank_batch_feature_mode_phases_and_seeds(store):
    meta = load_meta(store)
    exp, base = tiny(train={"batch_size": 8, "refit": True})
    plan = make_plan(exp, base, meta, Ddp(True, 1, 4, CPU), device=CPU)
    assert plan.batch_size == 2 and plan.device == CPU
    assert [p.name for p in plan.phases] == ["fit", "refit"] and plan.fit.validated and not plan.refit.validated
    assert plan.refit.seed == base.seed + REFIT_SEED_OFFSET
    assert plan.fit.shuffle_seed() == base.seed + 1 and plan.fit.augment_seed(1) == base.seed + 3
    assert plan.fit.mix_seed(0) != plan.fit.augment_seed(0)
    with pytest.raises(ConfigError, match="divisible"):
        make_plan(exp, base, meta, Ddp(True, 0, 3, CPU), device=CPU)
    assert make_plan(tiny(train={"refit": False})[0], base, meta, device=CPU).refit is None
    refit_exp = plan.experiment(plan.refit, 2)
    assert (refit_exp.train.epochs, refit_exp.train.patience) == (2, 0) and plan.experiment(plan.fit) is exp

    frozen, _ = tiny("cnn_basic", model={"freeze": "frozen"}, train={"augment": "none", "feature_cache": True})
    cached = make_plan(frozen, base, meta, device=CPU)
    assert cached.feature_mode == use_feature_cache(frozen) is True and not cached.channels_last
    assert cached.train_size == IMAGE_SIZE  # no augmentation: kept at the input size
    mixing = dataclasses.replace(frozen, train=dataclasses.replace(frozen.train, mixup_alpha=0.2))
    assert not make_plan(mixing, base, meta, device=CPU).feature_mode


def test_one_loop_runs_the_validated_fit_and_the_unvalidated_refit(store, tmp_path):
    exp, base = tiny(train={"epochs": 3, "refit": True, "lr": 0.05})
    fit, meta = setup_trainer(exp, base, store, CPU)
    epochs_seen = []
    io = RunIO(NoLive(), tmp_path / "resume.pt", "key", lambda epoch, row: epochs_seen.append((epoch, sorted(row))),
               quiet=True)
    run_phase(fit, io)
    saved = ResumeState.from_file(torch.load(tmp_path / "resume.pt", weights_only=True))
    assert saved.fit is None and saved.state.epoch == 3 and saved.key == "key"
    assert fit.state.epoch == 3 and 1 <= fit.state.best.epoch <= 3 and fit.state.best.state_dict is not None
    assert all("val/top1" in keys for _, keys in epochs_seen)

    epochs_seen.clear()
    refit = refit_phase(fit, store, meta, io)
    best = fit.state.best.epoch
    assert refit is not None and refit.cfg.epochs == refit.state.epoch == best and refit.cfg.patience == 0
    assert len(refit.train_data) == COUNTS["train"] + COUNTS["val"]
    assert [e for e, _ in epochs_seen] == [3 + e for e in range(best)]  # counted on from the fit's epochs
    assert all(keys == ["epoch_seconds", "refit/loss", "refit/top1"] for _, keys in epochs_seen)
    saved = ResumeState.from_file(torch.load(tmp_path / "resume.pt", weights_only=True))
    assert isinstance(saved.fit, TrainState) and saved.fit.best.epoch == best and saved.state.epoch == best
    assert saved.to_file()["phase"] == "refit"  # the file format of the refit phase


def test_refit_is_skipped_without_a_best_epoch(store):
    exp, base = tiny(train={"epochs": 0, "refit": True})
    fit, meta = setup_trainer(exp, base, store, CPU)
    run_phase(fit, RunIO(quiet=True))
    assert refit_phase(fit, store, meta, RunIO(quiet=True)) is None
