"""Crop geometry: an official box -> a square uint8 crop (shared by the crop stage and predict).

The crop stage itself (process pool, store writing) is :mod:`carbench.data.crop`; the store format is
:mod:`carbench.data.store`.

Geometry of :func:`crop_box` (all coordinates in pixels of the *stored* image; EXIF orientation is ignored,
like torchvision's loader, because the official boxes refer to the stored pixel grid):

1. The official box ``(x1, y1, x2, y2)`` is 1-based and inclusive, i.e. the pixel region
   ``[x1 - 1, x2) x [y1 - 1, y2)``; it is first clamped to the image.
2. ``margin`` adds ``margin * box width`` pixels (rounded, halves up) left and right and
   ``margin * box height`` pixels above and below, and the result is clamped to the image: the *region*.
3. ``keep_aspect=False``: the region is resized (stretched) to ``size x size``.
   ``keep_aspect=True``: the region is padded to a square of side ``L = max(region w, h)`` centred on it; along
   an axis where the image is at least ``L`` long the square is shifted to lie inside the image (more real
   context, no padding); along an axis where the image is shorter than ``L`` it is centred on the image and the
   part outside is filled with black. The square is resized to ``size x size`` (aspect ratio preserved).

Resampling is bilinear, antialiased when shrinking (as torchvision's `Resize`; bicubic cost twice the time for no accuracy gain). Colour modes are converted by :func:`to_rgb`.
JPEGs are decoded at a reduced DCT scale (1/2, 1/4, 1/8) when the region still keeps at least ``size`` pixels
on its shorter side (stretch) or on the square side (keep_aspect), so no crop is ever upsampled because of it.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageCms, JpegImagePlugin

from ..core.errors import DataError
from .images import decoding, open_image

RESAMPLE = Image.Resampling.BILINEAR
DRAFT_SCALES = (8, 4, 2, 1)            # the DCT scalings libjpeg offers, largest first
PAD_RGB = (0, 0, 0)                    # keep_aspect fill outside the image
ALPHA_BACKGROUND = (255, 255, 255)     # transparent pixels are composited over white
UINT16_TO_UINT8_SHIFT = 8              # 16-bit grey 0..65535 -> 0..255
UINT8_MAX = 255
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropPlan:
    """Where a crop comes from and where it goes.

    ``source``: ``(left, top, right, bottom)`` in image pixels (floats; right/bottom exclusive), the part of the
    image to resample; ``dest``: integer ``(left, top, right, bottom)`` in the ``size x size`` output;
    ``content_side``: image pixels that map onto ``size`` output pixels (limits the JPEG draft scale).
    """

    source: tuple[float, float, float, float]
    dest: Box
    content_side: float


def _round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's round() sends 2.5 to 2)."""
    return math.floor(value + 0.5)


def margin_region(box: Sequence[int], margin: float, width: int, height: int) -> Box:
    """The 0-based half-open pixel region ``(left, top, right, bottom)`` of a 1-based inclusive box.

    Steps 1-2 of the module docstring. Raises DataError when the box is empty or outside the image.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if x1 > x2 or y1 > y2:
        raise DataError(f"empty box {tuple(box)}: x1 > x2 or y1 > y2")
    left, top, right, bottom = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, width), min(y2, height)
    if left >= right or top >= bottom:
        raise DataError(f"box {tuple(box)} lies outside the {width}x{height} image")
    mx, my = _round_half_up(margin * (right - left)), _round_half_up(margin * (bottom - top))
    return max(left - mx, 0), max(top - my, 0), min(right + mx, width), min(bottom + my, height)


def _square_axis(lo: int, hi: int, side: float, extent: int) -> tuple[float, float]:
    """Start of the square along one axis, and the covered in-image interval's start (see docstring step 3)."""
    if extent >= side:
        start = min(max((lo + hi) / 2 - side / 2, 0.0), extent - side)
        return start, start
    start = extent / 2 - side / 2
    return start, 0.0


def plan_crop(box: Sequence[int], margin: float, width: int, height: int, size: int, keep_aspect: bool) -> CropPlan:
    """The :class:`CropPlan` for a 1-based inclusive ``box`` in a ``width x height`` image."""
    left, top, right, bottom = margin_region(box, margin, width, height)
    if not keep_aspect:
        return CropPlan((left, top, right, bottom), (0, 0, size, size), min(right - left, bottom - top))
    side = float(max(right - left, bottom - top))
    qx, sx = _square_axis(left, right, side, width)
    qy, sy = _square_axis(top, bottom, side, height)
    ex, ey = min(qx + side, width), min(qy + side, height)
    scale = size / side
    left_px, top_px = round((sx - qx) * scale), round((sy - qy) * scale)
    # At least one output pixel along each axis, even for a sliver of a box.
    right_px = max(round((ex - qx) * scale), left_px + 1)
    bottom_px = max(round((ey - qy) * scale), top_px + 1)
    return CropPlan((sx, sy, ex, ey), (left_px, top_px, right_px, bottom_px), side)


def draft_scale(content_side: float, size: int) -> int:
    """The largest JPEG DCT scale that keeps ``content_side / scale >= size``."""
    return next(s for s in DRAFT_SCALES if content_side / s >= size or s == 1)


def apply_draft(img: Image.Image, content_side: float, size: int) -> int:
    """Ask a not-yet-decoded JPEG to decode at a reduced scale; return the scale (1 = full size)."""
    if not isinstance(img, JpegImagePlugin.JpegImageFile) or not img.tile:
        return 1  # not a JPEG, or already decoded
    scale = draft_scale(content_side, size)
    if scale == 1:
        return 1
    width, height = img.size
    result = img.draft(img.mode, (width // scale, height // scale))
    if result is None:
        return 1
    return round(width / result[1][2])  # draft's box is (0, 0, width / scale, height / scale)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK -> RGB through the embedded ICC profile when there is one, else PIL's formula."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to the plain conversion
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    16-bit grey (``I;16*``, and ``I`` with values above 255) is scaled by 1/256 rather than clipped;
    ``F`` is clipped to 0..255; transparency (RGBA, LA, palette with transparency) is composited over white;
    CMYK uses the embedded ICC profile when present; L, 1, P, YCbCr, LAB, HSV use PIL's conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(img)
        if mode in SIXTEEN_BIT_MODES or (mode == "I" and values.max(initial=0) > UINT8_MAX):
            values = np.clip(values, 0, np.iinfo(np.uint16).max).astype(np.uint32) >> UINT16_TO_UINT8_SHIFT
        grey = np.clip(values, 0, UINT8_MAX).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (UINT8_MAX,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    return img.convert("RGB")


def crop_box(img: Image.Image, box: Sequence[int], margin: float, size: int, keep_aspect: bool) -> Image.Image:
    """Crop ``img`` to an official 1-based inclusive ``box`` and return a ``size x size`` RGB image.

    Geometry: see the module docstring. ``img`` may be a freshly opened (not yet decoded) file: a JPEG is
    then decoded at a reduced scale where that keeps quality (this loads ``img`` itself at that scale; pass
    ``Image.open(...)`` anew rather than an image you still need at full size). Raises DataError for an
    empty box or one outside the image.
    """
    width, height = img.size
    plan = plan_crop(box, margin, width, height, size, keep_aspect)
    scale = apply_draft(img, plan.content_side, size)
    # Cut the whole-pixel bounds of the region first: the resampling filter then never reaches pixels
    # outside the box (crop-then-resize semantics), and only these pixels get colour-converted.
    src = [min(v / scale, limit) for v, limit in zip(plan.source, img.size * 2)]  # draft sizes round up
    bounds = (math.floor(src[0]), math.floor(src[1]), math.ceil(src[2]), math.ceil(src[3]))
    img = to_rgb(img.crop(bounds))
    src = [src[0] - bounds[0], src[1] - bounds[1], src[2] - bounds[0], src[3] - bounds[1]]
    d = plan.dest
    patch = img.resize((d[2] - d[0], d[3] - d[1]), RESAMPLE, box=tuple(src))
    if d == (0, 0, size, size):
        return patch
    canvas = Image.new("RGB", (size, size), PAD_RGB)
    canvas.paste(patch, d[:2])
    return canvas


ImageInput = Union[bytes, bytearray, memoryview, Image.Image]


def decode_crop(data: ImageInput, box: Sequence[int], margin: float, size: int, keep_aspect: bool) -> np.ndarray:
    """Open an image (encoded bytes, or a PIL image) and crop it: uint8 array ``(size, size, 3)``.

    A photo Pillow refuses (not an image, truncated, damaged, too large: :mod:`carbench.data.images`) raises
    :class:`~carbench.core.errors.ImageError`, a box outside it DataError; both are DataErrors whose message is the reason.
    """
    img = data if isinstance(data, Image.Image) else open_image(data)
    with decoding(img):
        return np.asarray(crop_box(img, box, margin, size, keep_aspect), dtype=np.uint8)


def crop_batch(images: Sequence[ImageInput], boxes: Sequence[Sequence[int]], margin: float, size: int,
               keep_aspect: bool) -> np.ndarray:
    """Crop many images (bytes or PIL images) in one go: uint8 array ``(N, size, size, 3)``."""
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, (image, box) in enumerate(zip(images, boxes)):
        out[i] = decode_crop(image, box, margin, size, keep_aspect)
    return out
