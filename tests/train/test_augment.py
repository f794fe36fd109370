"""carbench.train.augment: batched per-sample augmentation and mixing, crop ranges (eval preprocessing:
tests/model/test_preprocess.py)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from support.training import tiny

from carbench.model.preprocess import eval_preprocess
from carbench.train import augment as A
from carbench.train.engine import use_feature_cache

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


def test_crop_scale_and_ratio_replace_the_preset_ranges():
    policy = A.train_policy("standard", [0.25, 0.25], [4.0, 4.0])
    assert policy.scale == (0.25, 0.25) and policy.ratio == (4.0, 4.0)
    assert policy.rotate == A.PRESETS["standard"].rotate  # the rest of the preset is kept
    u = torch.rand(6, A._DRAWS)
    theta = A.affine_matrices(dataclasses.replace(policy, rotate=0.0), u)
    w, h = theta[:, 0, 0].abs(), theta[:, 1, 1]
    # area 0.25 and aspect 4: half-sizes sqrt(0.25 * 4) = 1 (clamped to the image) and sqrt(0.25 / 4) = 0.25
    assert torch.allclose(w, torch.ones(6)) and torch.allclose(h, torch.full((6,), 0.25))
    assert A.train_policy("light") == A.PRESETS["light"]


def test_a_crop_range_alone_makes_augment_none_a_random_resized_crop():
    policy = A.train_policy("none", [0.5, 0.5], None)
    assert policy.geometric and not policy.photometric
    assert A.stored_size(policy, False, 16, 64) == math.ceil(16 * A.WARP_OVERSAMPLE)
    aug = A.build_augmenter(policy, False, 16, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(0))
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    assert not torch.allclose(aug(images), eval_preprocess(images, 16, (0.5,) * 3, (0.25,) * 3))
    exp, _ = tiny("tl_resnet50_frozen", model={"arch": "cnn", "weights": "none"}, train={"augment": "none"})
    assert use_feature_cache(exp)
    assert not use_feature_cache(dataclasses.replace(exp, train=dataclasses.replace(exp.train, crop_scale=(0.5, 1.0))))
    assert not use_feature_cache(dataclasses.replace(exp, train=dataclasses.replace(exp.train, mixup_alpha=0.2)))


def test_mixup_mixes_each_sample_with_its_neighbour():
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    mixed, target = A.BatchMixer(0.4, 0.0, 4, torch.Generator().manual_seed(1))(x, y)
    lam = float(target[1, 1])
    assert 0 < lam < 1 and torch.allclose(target.sum(1), torch.ones(5))
    assert torch.allclose(target[1], torch.tensor([1 - lam, lam, 0.0, 0.0]))  # neighbour of 1 is 0 (roll(1))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
    again = A.BatchMixer(0.4, 0.0, 4, torch.Generator().manual_seed(1))(x, y)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], target)


def test_cutmix_pastes_a_box_and_weights_the_labels_by_its_area():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()  # sample i is constant i
    y = torch.arange(4)
    for seed in range(5):
        mixed, target = A.BatchMixer(0.0, 1.0, 4, torch.Generator().manual_seed(seed))(x, y)
        own = (mixed[:, 0] == x[:, 0]).float().mean((1, 2))  # fraction of pixels kept from the sample itself
        assert torch.allclose(target[torch.arange(4), y], own)
        assert torch.allclose(target[torch.arange(4), y.roll(1)], 1 - own)
        assert torch.all((mixed == x) | (mixed == x.roll(1, 0)))


def test_both_on_picks_mixup_or_cutmix_per_batch():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()
    mixer = A.BatchMixer(1.0, 1.0, 4, torch.Generator().manual_seed(0))
    kinds = set()
    for _ in range(20):
        mixed, _ = mixer(x, torch.arange(4))
        kinds.add("cutmix" if torch.all((mixed == x) | (mixed == x.roll(1, 0))) else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_resize_size_makes_training_a_random_crop_of_the_resized_image():
    policy = A.train_policy("none", None, None, 28 / 32)                # image_size 28 of resize_size 32
    assert policy.scale == ((28 / 32) ** 2,) * 2 and policy.ratio == (1.0, 1.0) and policy.hflip == 0
    assert A.train_policy("light", [0.5, 1.0], None, 0.875).scale == (0.5, 1.0)   # an explicit range still wins
    aug = A.build_augmenter(policy, False, 28, (0.0,) * 3, (1 / 255,) * 3, torch.Generator().manual_seed(0))
    ramp = 4 * torch.arange(32).view(1, 32) + 2 * torch.arange(32).view(32, 1)          # value = 4 x + 2 y
    images = ramp.to(torch.uint8).view(1, 32, 32, 1).expand(6, 32, 32, 3).contiguous()
    out = aug(images)[:, 0]                                             # normalised back to 0..255 by std 1/255
    assert out.shape == (6, 28, 28)
    inner = out[:, 2:-2, 2:-2]
    # the same slopes as the image (no rescaling: a crop, not a resized crop) ...
    assert torch.allclose(inner[:, :, 1:] - inner[:, :, :-1], torch.tensor(4.0), atol=0.05)
    assert torch.allclose(inner[:, 1:] - inner[:, :-1], torch.tensor(2.0), atol=0.05)
    # ... and each sample's window starts anywhere in the 4 px of slack: value at (0, 0) = 4 x0 + 2 y0
    origin = out[:, 2, 2] - 4 * 2 - 2 * 2
    assert ((origin >= -0.05) & (origin <= 4 * 4 + 2 * 4 + 0.05)).all() and origin.unique().numel() > 1
    exp, _ = tiny("tl_resnet50_frozen", model={"arch": "cnn", "weights": "none"},
                  train={"augment": "none", "image_size": 28, "resize_size": 32})
    assert not use_feature_cache(exp)                                   # a random crop: no cached features
