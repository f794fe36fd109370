"""carbench.data.images: every way Pillow refuses a photo is one ImageError with a short reason, and the stages that
read photos (the download stage's header check, the crop stage) turn it into one line naming the photo, or a skip
under data.skip_bad_images; odd but sound photos pass. The odd photos are generated (support/odd_photos.py)."""
from __future__ import annotations

import logging
import struct
import subprocess
import sys
import warnings

import pytest
from PIL import Image, UnidentifiedImageError
from support.data import crop_config, download_local, edit_train_rows, replace_annotation, split_config
from support.odd_photos import REFUSED, encode, readable, tiff_bad_lzw, tiff_odd_samples
from support.params import ROOT

from carbench.data import images
from carbench.data.crop import write_crops
from carbench.data.crop_geometry import decode_crop
from carbench.data.split import write_split
from carbench.core.errors import DataError, DataWarning, ImageError

HEADER = sorted(name for name, (_, where) in REFUSED.items() if where == "header")
DECODE = sorted(name for name, (_, where) in REFUSED.items() if where == "decode")
BOX = (1, 1, 20, 20)


def _jpeg() -> bytes:
    return encode("JPEG", quality=90)


@pytest.mark.parametrize("exc, reason", [
    (UnidentifiedImageError("cannot identify image file <_io.BytesIO object at 0x7f00>"), "no known image format"),
    (OSError("image file is truncated (3 bytes not processed)"), "OSError: image file is truncated (3 bytes not "
                                                                 "processed)"),
    (SyntaxError("broken PNG file"), "SyntaxError: broken PNG file"),
    (ValueError("unrecognized image mode"), "ValueError: unrecognized image mode"),
    (EOFError(), "EOFError"),
    (struct.error("unpack requires a buffer of 4 bytes"), "error: unpack requires a buffer of 4 bytes"),
    (IndexError("index out of range"), "IndexError: index out of range"),
    (KeyError(7), "KeyError: 7"),
    (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    (NotImplementedError("unsupported compression"), "NotImplementedError: unsupported compression"),
    (MemoryError(), "MemoryError"),
    (Image.DecompressionBombError("Image size (400000000 pixels) exceeds limit of 178956970 pixels, could be "
                                  "decompression bomb DOS attack."), "too large: 400,000,000 pixels, over Pillow's "
     "limit of 89,478,485 against decompression bombs; downscale it"),
])
def test_every_pillow_failure_is_one_image_error(monkeypatch, exc, reason):
    def refuse(*args, **kwargs):
        raise exc

    monkeypatch.setattr(images.Image, "open", refuse)
    with pytest.raises(ImageError) as info:
        images.read_header(b"any bytes")
    assert str(info.value) == reason and "\n" not in reason
    img = Image.new("RGB", (4, 4))
    monkeypatch.setattr(img, "load", refuse)
    with pytest.raises(ImageError) as info:
        decode_crop(img, (1, 1, 4, 4), 0.0, 4, False)            # the same failure while decoding
    assert str(info.value) == reason


def test_a_box_outside_the_photo_stays_a_data_error():
    with pytest.raises(DataError, match="outside the 4x4 image") as info:
        decode_crop(Image.new("RGB", (4, 4)), (9, 9, 12, 12), 0.0, 4, False)
    assert not isinstance(info.value, ImageError)


def test_a_photo_without_pixels(monkeypatch):
    monkeypatch.setattr(images.Image, "open", lambda *args, **kwargs: Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError, match=r"^image has no pixels \(0x5\)$"):
        images.read_header(b"any bytes")


def test_odd_photos_are_refused_where_expected_and_sound_ones_read():
    jpeg = _jpeg()
    for name, (make, where) in REFUSED.items():
        data = make(jpeg)
        if where == "header":
            with pytest.raises(ImageError):
                images.read_header(data)
        else:
            images.read_header(data)
        with pytest.raises(ImageError):
            decode_crop(data, BOX, 0.0, 16, False)
    for name, data in readable().items():
        assert images.read_header(data)[:2] == (64, 48), name
        assert decode_crop(data, BOX, 0.0, 16, False).shape == (16, 16, 3), name


def test_pillow_says_nothing_on_its_own(capfd, caplog):
    """Pillow's warnings, its log records and libtiff's messages on stderr stay quiet: the reason says it all."""
    caplog.set_level(logging.DEBUG, logger="PIL")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="too large: 100,000,000 pixels"):
            images.read_header(REFUSED["big.png"][0](b""))          # DecompressionBombWarning zone: refused
        with pytest.raises(ImageError):
            images.read_header(tiff_odd_samples())                  # PIL logs "More samples per pixel ..."
        with pytest.raises(ImageError, match=r"^OSError: decoder error -2 \(libtiff: LZWDecode: "):
            decode_crop(tiff_bad_lzw(), BOX, 0.0, 16, False)        # libtiff writes to fd 2 itself
    assert caught == [] and [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert capfd.readouterr() == ("", "")
    assert logging.getLogger("PIL").level == logging.DEBUG          # the level is put back


def _use_boxes_inside(source) -> None:
    """Every train box inside the generated photos' 64 x 48 pixels, so only the photo itself can be refused."""
    edit_train_rows(source, lambda rows: [replace_annotation(rows, i, box=BOX)[i] for i in range(len(rows))])


@pytest.mark.parametrize("name", HEADER)
def test_download_refuses_each_odd_header_in_one_line(source, tmp_path, name):
    _use_boxes_inside(source)
    bad = source / "cars_train" / "00002.jpg"
    bad.write_bytes(REFUSED[name][0](bad.read_bytes()))
    with pytest.raises(DataError) as info:
        download_local(source, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{source}/devkit/cars_train_annos.mat row 2: not a readable image: ")
    assert message.endswith(f"(image {bad}); fix or remove it, or set data.skip_bad_images: true to skip bad images")
    assert "\n" not in message and " object at 0x" not in message


def _plant(source) -> dict[str, str]:
    """Every odd photo in place of a train photo; returns image name -> odd photo name."""
    _use_boxes_inside(source)
    photos = sorted((source / "cars_train").glob("*.jpg"))
    odd = {**{name: REFUSED[name][0](_jpeg()) for name in REFUSED}, **readable()}
    assert len(photos) >= len(odd)
    planted = {}
    for photo, (name, data) in zip(photos, sorted(odd.items())):
        photo.write_bytes(data)
        planted[f"cars_train/{photo.name}"] = name
    return planted


def test_skip_bad_images_skips_every_odd_photo_with_its_reason(source, tmp_path, capsys):
    planted = _plant(source)
    with pytest.warns(DataWarning, match=f"skipped {len(HEADER)} bad image"):
        metrics = download_local(source, tmp_path, skip=True)
    skipped = {s["image"]: s["reason"] for s in metrics["skipped"]}
    assert sorted(planted[image] for image in skipped) == HEADER
    assert all(reason.startswith("not a readable image: ") and "\n" not in reason for reason in skipped.values())
    write_split(split_config(), 0, tmp_path / "raw", tmp_path / "split", None, None)
    with pytest.raises(DataError) as info:                           # the crop stage: one line naming the first
        write_crops(crop_config(), False, tmp_path / "raw", tmp_path / "split", tmp_path / "crops", None, None)
    first = sorted(image for image, name in planted.items() if name in DECODE)[0]
    assert str(info.value).startswith(f"cannot decode {first} (stored in ") and "\n" not in str(info.value)
    assert str(info.value).endswith("; set data.skip_bad_images: true to skip unreadable images")
    capsys.readouterr()
    metrics = write_crops(crop_config(workers=2), True, tmp_path / "raw", tmp_path / "split", tmp_path / "crops",
                          tmp_path / "crop.json", None)
    assert sorted(planted[s["image"]] for s in metrics["skipped"]) == DECODE
    assert capsys.readouterr().err.count("\n") <= 2                  # the progress bar and the one warning line


def test_the_download_stage_script_prints_one_line_for_a_bomb(params_file, source, tmp_path):
    """A photo Pillow refuses with an exception the header check did not expect (a decompression bomb): one
    ``error:`` line naming it, no traceback."""
    bad = source / "cars_train" / "00002.jpg"
    bad.write_bytes(REFUSED["bomb.png"][0](b""))
    params = params_file({"data": {"source": "local", "path": str(source), "cache_dir": str(tmp_path / "cache")}})
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "download.py"), "--params", str(params), "--out",
                           "data/raw", "--metrics", "metrics/data.json"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"error: {source}/devkit/cars_train_annos.mat row 2: not a readable image: too large: 400,000,000 pixels, over "
        f"Pillow's limit of 89,478,485 against decompression bombs; downscale it (image {bad}); fix or remove it, or "
        "set data.skip_bad_images: true to skip bad images"]
