"""carbench.train.resume: a run interrupted with every recipe option on resumes to the uninterrupted result."""
from __future__ import annotations

import pytest
import torch
from support.training import (
    Interrupt,
    assert_same_weights,
    deterministic_metrics,
    run,
    tiny,
    weights_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("after", [1, 3])  # interrupted in the fit phase / in the refit phase
def test_resume_with_every_recipe_option_equals_an_uninterrupted_run(tmp_path, store, capsys, after):
    exp, base = tiny(model={"layer_decay": 0.8, "head_warmup_epochs": 1},
                     train={"epochs": 3, "refit": True, "ema_decay": 0.5, "mixup_alpha": 0.4, "cutmix_alpha": 1.0,
                            "augment": "light", "crop_scale": (0.3, 1.0), "crop_ratio": (0.5, 2.0)})
    out_a, live_a = run(tmp_path, store, exp, base, "a")
    assert torch.load(out_a / "best.pt", weights_only=True)["epoch"] >= 1  # so the refit has an epoch 3
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, store, exp, base, "b", on_epoch_end=Interrupt(after=after))
    capsys.readouterr()
    out_b, live_b = run(tmp_path, store, exp, base, "b")
    err = capsys.readouterr().err
    assert ("resuming the refit" in err) == (after >= 3)
    assert_same_weights(weights_of(out_a), weights_of(out_b))
    assert deterministic_metrics(live_a) == deterministic_metrics(live_b)
