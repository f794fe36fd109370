"""Opening a user's photo with Pillow: the one place that knows how Pillow refuses a photo.

Every stage and command that reads a photo (the download stage's header check, the crop stage, carbench-predict)
opens it with :func:`open_image` and decodes it inside :func:`decoding`, so each refusal is one
:class:`~carbench.core.errors.ImageError` whose message is a short reason (the caller names the photo and says what to
do), never a traceback.

Pillow reports a damaged or odd file with many exception types, depending on the format plugin and on where the
damage lies: ``UnidentifiedImageError`` (no known format), ``OSError`` ("image file is truncated", "broken data
stream", a decoder error), ``SyntaxError`` (a bad header or PNG checksum), ``ValueError``, ``EOFError``,
``struct.error``, ``IndexError``, ``DecompressionBombError``... Pillow's own fuzzing harness catches every
``Exception`` for that reason, and so does :func:`pillow_errors`, around Pillow's calls only.

Warnings: a photo of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 89.5 million) is refused, like the
``DecompressionBombError`` Pillow raises at twice that size (one limit, rather than a warning of several lines
below it and an error above). Pillow's other warnings about a photo (corrupt EXIF data, a skipped TIFF tag, ...),
whether Python warnings or log records of its ``PIL`` logger, concern metadata the pixels do not need and are not
shown. libtiff, the C library that decodes compressed TIFFs,
prints its complaints on the process's stderr itself; while a TIFF decodes they go to a temporary file instead, and
the first one is added to the reason when the decode fails.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import IO, Iterator, Union

from PIL import Image, UnidentifiedImageError

from ..core.errors import ImageError, UserError

#: The repr PIL puts in its messages when it reads from memory (``<_io.BytesIO object at 0x7f...>``).
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")
_PIXELS = re.compile(r"\((\d+) pixels\)")
#: The placeholder file name Pillow hands libtiff, which starts each of its messages.
_LIBTIFF_NAME = re.compile(r"^\S+\.tiff?:\s*")
#: Formats whose decoder is a C library that writes its messages to stderr (libtiff).
STDERR_FORMATS = ("TIFF",)

ImageBytes = Union[bytes, bytearray, memoryview]


def error_reason(exc: BaseException) -> str:
    """A failure to read a photo as a short reason for a user: no Python object reprs (the caller names the file)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "no known image format"
    text = _OBJECT_REPR.sub("", str(exc)).strip()
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = _PIXELS.search(text)
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return f"too large: {pixels}, over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} against decompression " \
            "bombs; downscale it"
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


@contextlib.contextmanager
def pillow_errors() -> Iterator[None]:
    """Inside the block, whatever Pillow raises on a photo becomes an :class:`ImageError` (see the module docstring);
    a :class:`~carbench.core.errors.UserError` (a box outside the image) passes unchanged."""
    logger = logging.getLogger("PIL")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except UserError:
        raise
    except Exception as exc:   # noqa: BLE001 (Pillow's failures are many plain exception types)
        raise ImageError(error_reason(exc)) from None
    finally:
        logger.setLevel(level)


def open_image(data: ImageBytes) -> Image.Image:
    """Open a photo's encoded bytes (the format comes from the content, not the file name); only the header is
    read, the pixels are decoded later (inside :func:`decoding`). ImageError when Pillow refuses it."""
    if not len(data):
        raise ImageError("zero-byte file")
    with pillow_errors():
        img = Image.open(io.BytesIO(data))
    width, height = img.size
    if width < 1 or height < 1:
        img.close()
        raise ImageError(f"image has no pixels ({width}x{height})")
    return img


def read_header(data: ImageBytes) -> tuple[int, int, str]:
    """``(width, height, format)`` from a photo's header only (no pixel decoding); ImageError when refused."""
    with open_image(data) as img:
        return img.width, img.height, img.format or "unknown"


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[IO[bytes]]:
    """Point file descriptor 2 (where C libraries write) at a temporary file for the block; yield that file."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield sink
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _first_line(sink: IO[bytes]) -> str:
    sink.seek(0)
    lines = [line.strip() for line in sink.read().decode(errors="replace").splitlines() if line.strip()]
    return _LIBTIFF_NAME.sub("", lines[0]) if lines else ""


@contextlib.contextmanager
def decoding(img: Image.Image) -> Iterator[None]:
    """:func:`pillow_errors` for decoding ``img``'s pixels; for a libtiff-decoded format, libtiff's own messages
    stay off stderr and the first one joins the reason when the decode fails."""
    if img.format not in STDERR_FORMATS:
        with pillow_errors():
            yield
        return
    with _stderr_to_file() as sink:
        try:
            with pillow_errors():
                yield
        except ImageError as exc:
            first = _first_line(sink)
            raise ImageError(f"{exc} (libtiff: {first})" if first else str(exc)) from None
