"""Odd photos, generated: files Pillow refuses for every kind of reason, and unusual files it reads.

:data:`REFUSED` maps a file name to a function of a good JPEG's bytes giving the bad file's bytes and where the
refusal happens: ``"header"`` (the download stage's header check refuses it) or ``"decode"`` (the header is fine, the
pixels are not: the crop stage and carbench-predict refuse it). :data:`READABLE` are odd but sound photos that
every stage must accept.
"""
from __future__ import annotations

import io
import struct
import zlib
from typing import Callable

import numpy as np
from PIL import Image

PIXELS = np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)   # noisy: no tiny encodings


def encode(fmt: str, image: Image.Image | None = None, **kwargs) -> bytes:
    buf = io.BytesIO()
    (image if image is not None else Image.fromarray(PIXELS)).save(buf, fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose (valid) header claims ``width x height`` pixels, with one tiny IDAT: a decompression bomb
    by its header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        _chunk(b"IEND", b"")


def png_bad_header_crc() -> bytes:
    data = bytearray(encode("PNG"))
    data[29] ^= 0xFF                      # the IHDR chunk's CRC (bytes 29-32)
    return bytes(data)


def png_bad_data() -> bytes:
    """A PNG whose compressed pixels are garbage (its chunk CRCs recomputed, so only the zlib stream is bad)."""
    raw = encode("PNG")
    start = raw.index(b"IDAT") - 4
    length = struct.unpack(">I", raw[start:start + 4])[0]
    body = bytearray(raw[start + 8:start + 8 + length])
    body[2:40] = bytes(range(38))
    return raw[:start] + _chunk(b"IDAT", bytes(body)) + raw[start + 12 + length:]


def gif_without_pixels() -> bytes:
    """A GIF whose logical screen and image are 0 x 0."""
    return b"GIF89a" + struct.pack("<HHBBB", 0, 0, 0, 0, 0) + b"," + struct.pack("<HHHHB", 0, 0, 0, 0, 0) + \
        b"\x02\x02\x44\x01\x00;"


def gif_cut() -> bytes:
    raw = encode("GIF")
    return raw[:len(raw) // 2]


def tiff_bad_lzw() -> bytes:
    """An LZW-compressed TIFF whose compressed strip is garbage: libtiff fails (and complains on stderr)."""
    raw = bytearray(encode("TIFF", compression="tiff_lzw"))
    raw[8:400] = bytes((i * 37) % 256 for i in range(392))
    return bytes(raw)


def tiff_odd_samples() -> bytes:
    """A TIFF whose SamplesPerPixel tag (0x0115) says 9: no mode Pillow knows."""
    raw = bytearray(encode("TIFF"))
    offset = struct.unpack("<I", raw[4:8])[0]
    for i in range(struct.unpack("<H", raw[offset:offset + 2])[0]):
        entry = offset + 2 + 12 * i
        if struct.unpack("<H", raw[entry:entry + 2])[0] == 0x0115:
            raw[entry + 8:entry + 10] = struct.pack("<H", 9)
    return bytes(raw)


def jpeg_cut_in_header(jpeg: bytes) -> bytes:
    return jpeg[:jpeg.index(b"\xff\xda") - 20]     # before the start of scan: a header that stops short


#: name -> (make(bytes of a good JPEG) -> bytes, where it is refused)
REFUSED: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty.jpg": (lambda jpeg: b"", "header"),
    "notes.jpg": (lambda jpeg: b"shopping list: milk, eggs\n", "header"),
    "html.jpg": (lambda jpeg: b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "header"),
    "cut_header.jpg": (jpeg_cut_in_header, "header"),
    "truncated.jpg": (lambda jpeg: jpeg[:len(jpeg) // 2], "decode"),
    "bomb.png": (lambda jpeg: png_claiming(20_000, 20_000), "header"),          # 400 M pixels: Pillow's error
    "big.png": (lambda jpeg: png_claiming(10_000, 10_000), "header"),           # 100 M pixels: Pillow's warning
    "bad_crc.png": (lambda jpeg: png_bad_header_crc(), "header"),
    "bad_data.png": (lambda jpeg: png_bad_data(), "decode"),
    "truncated.png": (lambda jpeg: encode("PNG")[:300], "decode"),
    "no_pixels.gif": (lambda jpeg: gif_without_pixels(), "header"),
    "cut.gif": (lambda jpeg: gif_cut(), "decode"),
    "bad_lzw.tif": (lambda jpeg: tiff_bad_lzw(), "decode"),
    "odd_samples.tif": (lambda jpeg: tiff_odd_samples(), "header"),
    "truncated.webp": (lambda jpeg: encode("WEBP")[:200], "header"),
    "webp_header_only.webp": (lambda jpeg: encode("WEBP")[:30], "header"),
}


def readable() -> dict[str, bytes]:
    """Odd but sound photos: every stage reads them."""
    rgb = Image.fromarray(PIXELS)
    grey16 = Image.fromarray(PIXELS[..., 0].astype(np.uint16) * 257)          # mode I;16
    frames = [rgb, Image.fromarray(255 - PIXELS)]
    return {
        "cmyk.jpg": encode("JPEG", rgb.convert("CMYK")),
        "grey16.png": encode("PNG", grey16),
        "alpha.png": encode("PNG", rgb.convert("RGBA")),
        "palette.gif": encode("GIF", rgb.convert("P")),
        "animated.gif": encode("GIF", frames[0], save_all=True, append_images=frames[1:]),
        "pages.tif": encode("TIFF", frames[0], save_all=True, append_images=frames[1:]),
        "webp_named.jpg": encode("WEBP"),
        "bilevel.bmp": encode("BMP", rgb.convert("1")),
    }
