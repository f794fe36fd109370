"""carbench.train.augment: batched per-sample augmentation (eval preprocessing: test_preprocess.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from carbench.model.preprocess import eval_preprocess
from carbench.train import augment as A

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BATCH, STORE, SIZE = 6, 24, 16


# Tiny models: one thread is faster and immune to other processes competing for the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def images(seed: int = 0, batch: int = BATCH, size: int = STORE) -> torch.Tensor:
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def augmenter(preset: str, seed: int = 0, size: int = SIZE, randaugment: bool = False) -> A.BatchAugmenter:
    return A.build_augmenter(preset, randaugment, size, MEAN, STD, torch.Generator().manual_seed(seed))


def bounds() -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.tensor([-m / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    hi = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    return lo, hi


@pytest.mark.parametrize("preset", list(A.PRESETS))
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_output_shape_dtype_and_range(preset, layout):
    x = images()
    out = augmenter(preset)(x if layout == "nhwc" else x.permute(0, 3, 1, 2).contiguous())
    assert out.shape == (BATCH, 3, SIZE, SIZE) and out.dtype == torch.float32 and out.is_contiguous()
    lo, hi = bounds()
    assert torch.all(out >= lo - 1e-4) and torch.all(out <= hi + 1e-4)


def test_layouts_give_the_same_result():
    x = images()
    assert torch.equal(augmenter("strong")(x), augmenter("strong")(x.permute(0, 3, 1, 2).contiguous()))


def test_none_preset_is_eval_preprocessing():
    x = images()
    assert torch.equal(augmenter("none")(x), eval_preprocess(x, SIZE, MEAN, STD))


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_every_sample_gets_its_own_parameters(preset):
    same = images(batch=1).expand(BATCH, -1, -1, -1).contiguous()
    out = augmenter(preset)(same)
    for i in range(1, BATCH):
        assert not torch.allclose(out[0], out[i]), f"samples 0 and {i} were augmented identically"


def test_seed_determines_the_output():
    x = images()
    assert torch.equal(augmenter("strong", seed=3)(x), augmenter("strong", seed=3)(x))
    assert not torch.equal(augmenter("strong", seed=3)(x), augmenter("strong", seed=4)(x))
    aug = augmenter("strong", seed=3)
    assert not torch.equal(aug(x), aug(x))  # the generator advances between batches


def test_flip_policy_mirrors_the_image():
    x = images(size=SIZE)
    flip = A.BatchAugmenter(A.AugmentPolicy(hflip=1.0), SIZE, MEAN, STD, torch.Generator().manual_seed(0))
    assert torch.allclose(flip(x), eval_preprocess(x, SIZE, MEAN, STD).flip(-1), atol=1e-4)


def test_grayscale_policy_gives_grey_images():
    x = images(size=SIZE)
    grey = A.BatchAugmenter(A.AugmentPolicy(grayscale=1.0), SIZE, (0.5,) * 3, (0.25,) * 3,
                            torch.Generator().manual_seed(0))
    out = grey(x)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-4) and torch.allclose(out[:, 1], out[:, 2], atol=1e-4)


def test_affine_grid_matches_torch():
    theta = A.affine_matrices(A.PRESETS["strong"], torch.rand(4, A._DRAWS))
    assert torch.allclose(A.affine_grid(theta, SIZE), F.affine_grid(theta, [4, 3, SIZE, SIZE], align_corners=False),
                          atol=1e-6)


def test_randaugment_runs_per_sample_and_is_seeded():
    x = images()
    a, b = augmenter("none", seed=1, randaugment=True), augmenter("none", seed=1, randaugment=True)
    out = a(x)
    assert out.shape == (BATCH, 3, SIZE, SIZE) and torch.equal(out, b(x))


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="train.augment"):
        augmenter("extreme")
