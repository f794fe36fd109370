"""Batched, per-sample image augmentation and mixing for training, on the tensors' device.

torchvision's v2 transforms draw ONE set of random parameters per call, so applied to a batch tensor
every image of the batch would get the same crop/flip/jitter. Here every sample gets its own parameters,
without a Python loop over images:

* geometry: one fused affine warp per sample (``F.affine_grid`` + ``F.grid_sample``, bilinear, zero
  fill) covering random resized crop (area ``scale`` and aspect ``ratio``; the crop side is clamped to
  the image instead of torchvision's 10 rejection tries), horizontal flip, rotation, translation and
  shear; it also produces the output ``image_size``. Perspective is not implemented.
* colour: brightness, contrast, saturation, hue (a rotation of the YIQ chroma plane) and random
  grayscale folded into one per-sample 3x3 matrix + offset (fixed order, a single clamp at the end).
* ``train.randaugment``: torchvision's ``v2.RandAugment`` applied per sample in a Python loop on uint8,
  seeded from the augmentation generator. It is much slower than the rest (one call per image).

Before the warp, images larger than needed are resized with antialiasing to
``ceil(image_size * WARP_OVERSAMPLE)`` so that the bilinear warp never downsamples by much (aliasing).
On CPU resizing runs on uint8 (torch's fast channels-last path), on CUDA on float32; the two differ by
at most one grey level.

Input: uint8 ``(B, S, S, 3)`` (crop-store layout) or ``(B, 3, S, S)``. Output: float32
``(B, 3, image_size, image_size)`` normalised with the model's mean/std. The ``none`` preset is exactly
:func:`carbench.model.preprocess.eval_preprocess` (antialiased resize to ``image_size`` + normalisation), the
inference preprocessing this module builds on.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

import torch
import torch.nn.functional as F

from ..model.preprocess import PIXEL_MAX, eval_preprocess, normalize, resize, to_nchw

#: Pre-resize target = image_size * this, so the warp downsamples by at most this factor.
WARP_OVERSAMPLE = 1.5
#: ITU-R BT.601 luma weights (as torchvision's rgb_to_grayscale).
LUMA = (0.299, 0.587, 0.114)
#: RGB -> YIQ (rows Y, I, Q); hue rotation turns the (I, Q) plane and keeps Y (so grey stays grey).
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
#: Uniform draws per sample (one column per random quantity, whatever the policy uses), so the
#: generator advances the same amount per batch for every preset.
_DRAWS = 14


@dataclass(frozen=True)
class AugmentPolicy:
    """Ranges of the per-sample random transforms; the default is the identity (``none``)."""

    scale: tuple[float, float] = (1.0, 1.0)   # crop area as a fraction of the image
    ratio: tuple[float, float] = (1.0, 1.0)   # crop aspect ratio (width / height), sampled log-uniformly
    hflip: float = 0.0                        # probability of a horizontal flip
    rotate: float = 0.0                       # max rotation, degrees (uniform in +-rotate)
    translate: float = 0.0                    # max shift, fraction of the image side
    shear: float = 0.0                        # max horizontal shear, degrees
    brightness: float = 0.0                   # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.0                     # factor uniform in [1 - c, 1 + c]
    saturation: float = 0.0                   # factor uniform in [1 - s, 1 + s]
    hue: float = 0.0                          # shift uniform in +-hue, fraction of a full turn (<= 0.5)
    grayscale: float = 0.0                    # probability of converting to grey

    @property
    def geometric(self) -> bool:
        return (self.scale != (1.0, 1.0) or self.ratio != (1.0, 1.0) or self.hflip > 0 or self.rotate > 0
                or self.translate > 0 or self.shear > 0)

    @property
    def photometric(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue, self.grayscale))


_CROP_RATIO = (3 / 4, 4 / 3)

#: ``train.augment`` presets. Car crops are already tight boxes, so crops keep most of the car.
PRESETS: dict[str, AugmentPolicy] = {
    "none": AugmentPolicy(),
    "light": AugmentPolicy(scale=(0.70, 1.0), ratio=_CROP_RATIO, hflip=0.5,
                           brightness=0.1, contrast=0.1, saturation=0.1),
    "standard": AugmentPolicy(scale=(0.40, 1.0), ratio=_CROP_RATIO, hflip=0.5, rotate=10.0,
                              brightness=0.2, contrast=0.2, saturation=0.2, grayscale=0.02),
    "strong": AugmentPolicy(scale=(0.25, 1.0), ratio=_CROP_RATIO, hflip=0.5, rotate=15.0, translate=0.1,
                            shear=10.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, grayscale=0.1),
}


# ----------------------------------------------------------------------------- policies and sizes
def train_policy(augment: str, crop_scale: Optional[Sequence[float]] = None,
                 crop_ratio: Optional[Sequence[float]] = None, crop_fraction: Optional[float] = None) -> AugmentPolicy:
    """The ``train.augment`` preset with ``train.crop_scale`` / ``train.crop_ratio`` (when set) replacing its
    random-resized-crop ranges; ``augment: none`` with a crop range is a random resized crop alone.
    ``crop_fraction`` (``train.resize_size``: image_size / resize_size) first makes the crop a fixed-size square
    of that side at a random place, torchvision's Resize + RandomCrop (the explicit ranges still win)."""
    if augment not in PRESETS:
        raise ValueError(f"train.augment must be one of {list(PRESETS)}, got {augment!r}")
    policy = PRESETS[augment]
    if crop_fraction is not None:
        policy = dataclasses.replace(policy, scale=(crop_fraction ** 2,) * 2, ratio=(1.0, 1.0))
    if crop_scale is not None:
        policy = dataclasses.replace(policy, scale=(float(crop_scale[0]), float(crop_scale[1])))
    if crop_ratio is not None:
        policy = dataclasses.replace(policy, ratio=(float(crop_ratio[0]), float(crop_ratio[1])))
    return policy


def stored_size(augment: str | AugmentPolicy, randaugment: bool, image_size: int, store_size: int) -> int:
    """Side to which training crops can be resized once, up front, without changing the augmenter's
    output: the size its first resize produces (``store_size`` when that would upsample, or when
    RandAugment must see the stored crops). ``augment`` is a preset name or a policy."""
    policy = PRESETS[augment] if isinstance(augment, str) else augment
    if randaugment:
        return store_size
    first = math.ceil(image_size * WARP_OVERSAMPLE) if policy.geometric else image_size
    return min(store_size, first)


@functools.lru_cache(maxsize=16)
def _colour_constants(device: torch.device) -> tuple[torch.Tensor, ...]:
    """(luma (3,), grey projection (3, 3), RGB->YIQ (3, 3), YIQ->RGB (3, 3)) on ``device``, made once.

    The inverse is computed on CPU: ``linalg.inv`` on CUDA checks for errors with a host sync.
    """
    luma = torch.tensor(LUMA)
    yiq = torch.tensor(RGB_TO_YIQ, dtype=torch.float64)
    consts = (luma, torch.ones(3, 1) * luma.view(1, 3), yiq.float(), torch.linalg.inv(yiq).float())
    return tuple(c.to(device) for c in consts)


# ----------------------------------------------------------------------------- random parameters
def _lerp(low: float, high: float, u: torch.Tensor) -> torch.Tensor:
    return low + (high - low) * u


def affine_matrices(policy: AugmentPolicy, u: torch.Tensor) -> torch.Tensor:
    """(B, _DRAWS) uniforms -> (B, 2, 3) ``affine_grid`` thetas (output coords -> input coords, [-1, 1])."""
    area = _lerp(*policy.scale, u[:, 0])
    log_ratio = _lerp(math.log(policy.ratio[0]), math.log(policy.ratio[1]), u[:, 1])
    # Crop half-sizes in normalised units (the full image is 1), clamped to the image.
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    shift = 2.0 * policy.translate
    cx = (1.0 - w) * (2 * u[:, 2] - 1) + shift * (2 * u[:, 3] - 1)
    cy = (1.0 - h) * (2 * u[:, 4] - 1) + shift * (2 * u[:, 5] - 1)
    flip = torch.where(u[:, 6] < policy.hflip, -1.0, 1.0)
    angle = torch.deg2rad(policy.rotate * (2 * u[:, 7] - 1))
    shear = torch.tan(torch.deg2rad(policy.shear * (2 * u[:, 8] - 1)))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # A = R(angle) @ [[1, shear], [0, 1]] @ diag(flip * w, h)
    a00, a01 = cos * flip * w, (cos * shear - sin) * h
    a10, a11 = sin * flip * w, (sin * shear + cos) * h
    return torch.stack([torch.stack([a00, a01, cx], 1), torch.stack([a10, a11, cy], 1)], 1)


def affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 2, 3) thetas -> (B, size, size, 2) sampling grid; equals ``F.affine_grid(align_corners=False)``.

    Broadcasting instead of F.affine_grid's batched matmul is about twice as fast on CPU.
    """
    lin = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1  # pixel centres
    a = theta.view(-1, 1, 1, 2, 3)
    return lin.view(1, 1, size, 1) * a[..., 0] + lin.view(1, size, 1, 1) * a[..., 1] + a[..., 2]


def colour_matrices(policy: AugmentPolicy, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, _DRAWS) uniforms -> per-sample colour matrix (B, 3, 3) and contrast mix (B,).

    The output is ``M @ rgb + mix * mean_grey(image)``: brightness b, contrast c, saturation s and hue
    compose to ``M = G @ H @ S * (b c)``, ``mix = (1 - c) b`` (G, H, S map grey to itself).
    """
    device = u.device
    b = 1.0 + policy.brightness * (2 * u[:, 9] - 1)
    c = 1.0 + policy.contrast * (2 * u[:, 10] - 1)
    s = 1.0 + policy.saturation * (2 * u[:, 11] - 1)
    theta = 2 * math.pi * policy.hue * (2 * u[:, 12] - 1)
    _, grey_proj, yiq, yiq_inv = _colour_constants(device)                       # grey_proj: rgb -> grey rgb
    eye = torch.eye(3, device=device)
    sat = s.view(-1, 1, 1) * eye + (1 - s).view(-1, 1, 1) * grey_proj           # (B, 3, 3)
    rot = torch.zeros(len(u), 3, 3, device=device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(theta), -torch.sin(theta)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(theta), torch.cos(theta)
    hue = yiq_inv @ rot @ yiq
    grey = (u[:, 13] < policy.grayscale).view(-1, 1, 1)
    g = torch.where(grey, grey_proj.expand(len(u), 3, 3), eye.expand(len(u), 3, 3))
    return g @ hue @ sat * (b * c).view(-1, 1, 1), (1 - c) * b


def apply_colour(images: torch.Tensor, matrix: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float 0..255 -> colour-transformed and clamped to 0..255."""
    bsz, _, hgt, wid = images.shape
    flat = images.reshape(bsz, 3, hgt * wid)
    luma = _colour_constants(images.device)[0]
    grey_mean = (luma.view(1, 3, 1) * flat).sum(1).mean(1)  # (B,)
    out = torch.baddbmm((mix * grey_mean).view(bsz, 1, 1).expand(bsz, 3, 1), matrix, flat)
    return out.clamp_(0.0, PIXEL_MAX).view(bsz, 3, hgt, wid)


# ----------------------------------------------------------------------------- the augmenter
class BatchAugmenter:
    """Per-sample random augmentation of uint8 batches (see the module docstring).

    ``generator`` (on the images' device) drives every random draw, so a seed fixes the output.
    """

    def __init__(self, policy: AugmentPolicy | str, image_size: int, mean: Sequence[float],
                 std: Sequence[float], generator: torch.Generator, randaugment: bool = False) -> None:
        self.policy = PRESETS[policy] if isinstance(policy, str) else policy
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.generator = generator
        self.randaugment = randaugment

    @property
    def identity(self) -> bool:
        """True when the output equals :func:`eval_preprocess` (no random transform at all)."""
        return not (self.policy.geometric or self.policy.photometric or self.randaugment)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) | (B, 3, S, S) -> float32 (B, 3, image_size, image_size), normalised."""
        x = to_nchw(images)
        if self.randaugment:
            x = self._randaugment(x)
        if self.identity:
            return eval_preprocess(x, self.image_size, self.mean, self.std)
        u = torch.rand(len(x), _DRAWS, generator=self.generator, device=self.generator.device).to(x.device)
        if not self.policy.geometric:
            x = resize(x, self.image_size).float()
        else:
            x = resize(x, min(x.shape[-1], math.ceil(self.image_size * WARP_OVERSAMPLE))).float()
            grid = affine_grid(affine_matrices(self.policy, u), self.image_size)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.policy.photometric:
            x = apply_colour(x, *colour_matrices(self.policy, u))
        return normalize(x, self.mean, self.std)

    def _randaugment(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision RandAugment per sample (slow Python loop), seeded from ``self.generator``."""
        from torchvision.transforms import v2

        transform = v2.RandAugment()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device))
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # v2 transforms draw from the global RNG; keep it reproducible
            return torch.stack([transform(img) for img in x.contiguous()])


def build_augmenter(augment: str | AugmentPolicy, randaugment: bool, image_size: int, mean: Sequence[float],
                    std: Sequence[float], generator: torch.Generator) -> BatchAugmenter:
    """The training augmenter for ``train.augment`` (a preset name, or the policy of :func:`train_policy`) and
    ``train.randaugment``."""
    if isinstance(augment, str) and augment not in PRESETS:
        raise ValueError(f"train.augment must be one of {list(PRESETS)}, got {augment!r}")
    return BatchAugmenter(augment, image_size, mean, std, generator, randaugment)


# ----------------------------------------------------------------------------- mixup / cutmix
class BatchMixer:
    """Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a normalised batch, as torchvision's v2
    ``MixUp`` / ``CutMix``: one ``lam ~ Beta(alpha, alpha)`` per batch, each sample paired with its neighbour
    (``roll(1)``), cutmix's ``lam`` corrected to the pasted box's area; with both alphas > 0 each batch picks
    one of the two with probability 1/2. Returns the mixed batch and soft targets ``(B, C)``
    (``lam * onehot(y) + (1 - lam) * onehot(y.roll(1))``). Mixing normalised images equals normalising mixed
    ones (the normalisation is affine). ``generator`` is a CPU generator: its state is all the randomness
    (the Beta draw goes through NumPy, seeded from it), so a seed and a resumed state fix the output.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int,
                 generator: torch.Generator) -> None:
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.num_classes = num_classes
        self.generator = generator

    def _uniform(self, n: int) -> list[float]:
        return torch.rand(n, generator=self.generator, dtype=torch.float64).tolist()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pick, u_x, u_y = self._uniform(3)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or pick < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(np.random.default_rng(seed).beta(alpha, alpha))
        other = x.roll(1, 0)
        if use_cutmix:
            hgt, wid = x.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            cx, cy = int(u_x * wid), int(u_y * hgt)
            x0, x1 = max(cx - int(cut * wid / 2), 0), min(cx + int(cut * wid / 2), wid)
            y0, y1 = max(cy - int(cut * hgt / 2), 0), min(cy + int(cut * hgt / 2), hgt)
            x = x.clone()
            x[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
            lam = 1.0 - (x1 - x0) * (y1 - y0) / (wid * hgt)
        else:
            x = other.mul(1.0 - lam).add_(x, alpha=lam)
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)
        return x, onehot.mul(lam).add_(onehot.roll(1, 0), alpha=1.0 - lam)
