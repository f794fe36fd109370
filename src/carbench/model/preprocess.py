"""Inference preprocessing: uint8 crops -> the normalised float batch a model takes (antialiased resize to the
checkpoint's ``image_size`` + its mean/std), on the tensors' device. The predictor, evaluate and embed use it;
training uses it for validation, the feature cache and the resident crops, and the augmenter
(:mod:`carbench.train.augment`) builds on it.

On CPU resizing runs on uint8 (torch's fast channels-last path), on CUDA on float32; the two differ by at most
one grey level. Input: uint8 ``(B, S, S, 3)`` (crop-store layout) or ``(B, 3, S, S)``.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F

#: Pixel scale of uint8 images.
PIXEL_MAX = 255.0


def to_nchw(images: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) -> (B, 3, S, S) view (channels-last memory, no copy); (B, 3, S, S) passes through."""
    if images.dim() != 4:
        raise ValueError(f"expected a 4-d image batch, got shape {tuple(images.shape)}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        return images.permute(0, 3, 1, 2)
    if images.shape[1] == 3:
        return images
    raise ValueError(f"expected (B,S,S,3) or (B,3,S,S) images, got shape {tuple(images.shape)}")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of (B, 3, H, W) to (B, 3, size, size); uint8 stays uint8 on CPU.

    On other devices uint8 input is converted to float (0..255) first. No-op when already ``size``.
    """
    if images.shape[-2:] == (size, size):
        return images
    if images.dtype == torch.uint8 and images.device.type != "cpu":
        images = images.float()
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def resize_nhwc_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> uint8 (B, size, size, 3), antialiased (rounded to uint8 off CPU)."""
    out = resize(to_nchw(images), size)
    if out.dtype != torch.uint8:
        out = out.round_().clamp_(0, PIXEL_MAX).to(torch.uint8)
    return out.permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=64)
def _normalize_constants(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) (1, 3, 1, 1) on ``device``, made once: building them from Python lists every batch
    would be a blocking host-to-device copy per step on CUDA."""
    scale = torch.tensor([1.0 / (PIXEL_MAX * s) for s in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], device=device).view(1, 3, 1, 1)
    return scale, shift


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) in 0..255 (any dtype) -> float32 ``(x / 255 - mean) / std``, contiguous NCHW."""
    scale, shift = _normalize_constants(tuple(map(float, mean)), tuple(map(float, std)), images.device)
    if images.dtype == torch.uint8:
        # Make the (small) uint8 tensor contiguous first: float maths on a channels-last view is ~5x
        # slower on CPU. The float copy is ours, so the rest runs in place.
        return images.contiguous().float().mul_(scale).sub_(shift)
    return (images.float().contiguous() * scale).sub_(shift)


def centre_crop(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """The central square of side ``round(S * fraction)`` of (B, 3, S, S) images (a view)."""
    side = images.shape[-1]
    keep = max(1, round(side * fraction))
    start = (side - keep) // 2
    return images[..., start:start + keep, start:start + keep]


def eval_preprocess(images: torch.Tensor, image_size: int, mean: Sequence[float],
                    std: Sequence[float], resize_size: int = 0) -> torch.Tensor:
    """uint8 (B, S, S, 3) | (B, 3, S, S) -> float32 (B, 3, image_size, image_size), normalised.

    ``resize_size`` > 0 (``train.resize_size``): first the centre crop of image_size / resize_size of the side,
    i.e. torchvision's Resize(resize_size) + CenterCrop(image_size) (exactly, on images stored at resize_size)."""
    x = to_nchw(images)
    if resize_size:
        x = centre_crop(x, image_size / resize_size)
    return normalize(resize(x, image_size), mean, std)
