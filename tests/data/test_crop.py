"""carbench.data.crop and carbench.data.crop_geometry: crop geometry on images with a known coloured rectangle, colour modes
(PNG, CMYK, 16-bit decoded by content), JPEG draft, the crop stage and its bad images."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from support.data import (
    CROP_SIZE_TINY,
    SYNTHETIC_TOTAL,
    crop_config,
    download_local,
    split_config,
)
from support.params import ROOT

from carbench.data.crop import write_crops
from carbench.data.crop_geometry import (
    apply_draft,
    crop_batch,
    crop_box,
    decode_crop,
    draft_scale,
    plan_crop,
    to_rgb,
)
from carbench.download.layouts import open_local
from carbench.download.manifest import build_raw
from carbench.data.raw import read_manifest
from carbench.data.split import write_split
from carbench.data.store import load_meta, load_split
from carbench.core.errors import DataError

RED, BLUE = (220, 20, 30), (20, 40, 200)
#: Mean absolute difference (0..255) allowed between a draft-decoded crop and a full-decode crop: per image,
#: and averaged over several real photos (measured on raw300: mean 0.2 at 224 px, 0.9 at 96 px; max 3.7).
DRAFT_TOLERANCE = 3.0
REAL_TOLERANCE_IMAGE, REAL_TOLERANCE_MEAN = 6.0, 2.0


def _scene(width: int, height: int, rect: tuple[int, int, int, int]) -> Image.Image:
    """Blue image with a red rectangle covering pixels [left, right) x [top, bottom)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = BLUE
    left, top, right, bottom = rect
    pixels[top:bottom, left:right] = RED
    return Image.fromarray(pixels)


def _is_red(pixels: np.ndarray) -> np.ndarray:
    return np.all(pixels == RED, axis=-1)


def test_one_based_inclusive_box_is_exactly_the_rectangle():
    img = _scene(100, 80, (20, 10, 60, 50))          # pixels x 20..59, y 10..49
    crop = np.asarray(crop_box(img, (21, 11, 60, 50), 0.0, 40, False))  # output size = box size: no resampling
    assert _is_red(crop).all()
    single = np.asarray(crop_box(img, (21, 11, 21, 11), 0.0, 16, False))
    assert _is_red(single).all()                      # one pixel, upsampled


def test_margin_adds_a_fraction_of_the_box_on_each_side():
    img = _scene(100, 80, (20, 10, 60, 50))
    crop = np.asarray(crop_box(img, (21, 11, 60, 50), 0.25, 60, False))  # 10 px each side -> 60 px
    red = _is_red(crop)
    assert red[10:50, 10:50].all() and not red[:10].any() and not red[:, 50:].any()


def test_margin_is_clamped_to_the_image():
    img = _scene(100, 80, (0, 0, 40, 40))
    crop = np.asarray(crop_box(img, (1, 1, 40, 40), 0.25, 50, False))  # region [0, 50) after clamping
    red = _is_red(crop)
    assert red[:40, :40].all() and not red[40:].any() and not red[:, 40:].any()
    assert plan_crop((1, 1, 40, 40), 0.25, 100, 80, 50, False).source == (0, 0, 50, 50)


def test_stretch_fills_the_output_with_the_box():
    img = _scene(100, 80, (20, 30, 60, 50))           # 40 x 20 rectangle
    crop = np.asarray(crop_box(img, (21, 31, 60, 50), 0.0, 32, False))
    assert crop.shape == (32, 32, 3) and _is_red(crop[2:-2, 2:-2]).all()


def test_keep_aspect_pads_to_a_square_inside_the_image():
    img = _scene(100, 80, (20, 30, 60, 50))           # 40 x 20 -> square 40 x 40 around the centre (40, 40)
    crop = np.asarray(crop_box(img, (21, 31, 60, 50), 0.0, 40, True))
    red = _is_red(crop)
    assert red[10:30].all() and not red[:10].any() and not red[30:].any()


def test_keep_aspect_square_is_shifted_into_the_image():
    img = _scene(100, 80, (0, 0, 40, 20))             # at the top edge: the square is [0, 40) in y
    plan = plan_crop((1, 1, 40, 20), 0.0, 100, 80, 40, True)
    assert plan.source == (0, 0, 40, 40) and plan.dest == (0, 0, 40, 40)
    red = _is_red(np.asarray(crop_box(img, (1, 1, 40, 20), 0.0, 40, True)))
    assert red[:20].all() and not red[20:].any()


def test_keep_aspect_letterboxes_when_the_image_is_too_short():
    img = _scene(100, 30, (0, 0, 100, 30))            # the whole image is the box: 100 x 30
    plan = plan_crop((1, 1, 100, 30), 0.0, 100, 30, 100, True)
    assert plan.dest == (0, 35, 100, 65)              # centred, black above and below
    crop = np.asarray(crop_box(img, (1, 1, 100, 30), 0.0, 100, True))
    assert _is_red(crop[35:65]).all() and (crop[:35] == 0).all() and (crop[65:] == 0).all()


@pytest.mark.parametrize("box", [(10, 10, 5, 20), (10, 20, 20, 10)])
def test_empty_box_is_refused(box):
    with pytest.raises(DataError, match="empty box"):
        crop_box(_scene(50, 50, (0, 0, 1, 1)), box, 0.0, 16, False)


def test_box_outside_the_image_is_refused():
    with pytest.raises(DataError, match="outside the 50x40 image"):
        crop_box(_scene(50, 40, (0, 0, 1, 1)), (60, 1, 70, 10), 0.0, 16, False)


def test_draft_scale_keeps_at_least_size_pixels():
    assert [draft_scale(side, 100) for side in (99, 100, 199, 200, 399, 400, 800, 5000)] == [1, 1, 1, 2, 2, 4, 8, 8]


def _jpeg(img: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95, **kwargs)
    return out.getvalue()


def test_reduced_scale_decoding_matches_a_full_decode():
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((1600, 1200), Image.BICUBIC)
    data, box = _jpeg(smooth), (201, 101, 1400, 1000)
    lazy = Image.open(io.BytesIO(data))
    assert apply_draft(lazy, 900, 64) == 8 and lazy.size == (200, 150)
    fast = decode_crop(data, box, 0.0, 64, False)
    full = np.asarray(crop_box(Image.open(io.BytesIO(data)).convert("RGB"), box, 0.0, 64, False))
    assert np.abs(fast.astype(int) - full).mean() < DRAFT_TOLERANCE


def test_cmyk_jpeg_is_converted_to_the_right_colour():
    data = _jpeg(_scene(64, 48, (0, 0, 64, 48)).convert("CMYK"))
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    crop = decode_crop(data, (1, 1, 64, 48), 0.0, 16, False)
    assert np.abs(crop.astype(int) - RED).max() <= 6


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = Image.fromarray(np.full((20, 30), 40000, np.uint16))
    out = io.BytesIO()
    grey.save(out, format="PNG")
    img = Image.open(io.BytesIO(out.getvalue()))
    assert img.mode == "I;16"
    crop = decode_crop(out.getvalue(), (1, 1, 30, 20), 0.0, 8, False)
    assert (crop == 40000 >> 8).all()
    assert (np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 1000, np.int32), "I"))) == 1000 >> 8).all()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1"])
def test_other_modes_become_rgb(mode):
    img = _scene(20, 20, (0, 0, 20, 20)).convert(mode)
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (20, 20)


def test_transparent_pixels_are_composited_over_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert (np.asarray(to_rgb(rgba)) == 255).all()


def test_crop_batch_shapes():
    img = _scene(50, 40, (5, 5, 30, 30))
    batch = crop_batch([img, _jpeg(img)], [(6, 6, 30, 30), (1, 1, 50, 40)], 0.1, 24, True)
    assert batch.shape == (2, 24, 24, 3) and batch.dtype == np.uint8


# ----------------------------------------------------------------------------- the stage
def test_write_crops_end_to_end(synthetic_raw, synthetic_split, tmp_path):
    metrics = write_crops(crop_config(preview=6), False, synthetic_raw, synthetic_split, tmp_path / "crops",
                          tmp_path / "crop.json", tmp_path / "preview.png")
    meta = load_meta(tmp_path / "crops")
    manifest = read_manifest(synthetic_raw)
    assert meta.size == CROP_SIZE_TINY and meta.num_classes == 4
    assert sum(meta.counts.values()) == len(manifest) == sum(metrics["counts"].values())
    train = load_split(tmp_path / "crops", "train")
    first = manifest.set_index("image").loc[train.names[0]]
    start, stop = first["offset"], first["offset"] + first["nbytes"]  # (Series.nbytes is its memory size)
    blob = (synthetic_raw / "images.bin").read_bytes()[start:stop]
    expected = decode_crop(blob, tuple(first[["x1", "y1", "x2", "y2"]]), 0.0, CROP_SIZE_TINY, False)
    assert np.array_equal(train.images[0], expected) and train.labels[0] == first.class_id
    assert json.loads((tmp_path / "crop.json").read_text())["images_per_second"] > 0
    assert (tmp_path / "preview.png").read_bytes()[:4] == b"\x89PNG"


def test_workers_do_not_change_the_crops(synthetic_raw, synthetic_split, synthetic_crops, tmp_path):
    write_crops(crop_config(workers=2), False, synthetic_raw, synthetic_split, tmp_path / "crops", None, None)
    for split in ("train", "val", "test"):
        assert np.array_equal(load_split(tmp_path / "crops", split).images, load_split(synthetic_crops, split).images)


def _plain_crop(path, box, size: int) -> np.ndarray:
    """An independent crop: full decode, 1-based inclusive box, resize (no draft, no shared code)."""
    with Image.open(path) as img:
        x1, y1, x2, y2 = box
        region = img.convert("RGB").crop((x1 - 1, y1 - 1, x2, y2))
        return np.asarray(region.resize((size, size), Image.Resampling.BILINEAR), dtype=np.int16)


@pytest.mark.parametrize("size", [224, 96])
def test_real_raw300_crops_match_a_plain_pil_crop(real_data, tmp_path, size):
    root = real_data / "stanford-cars-raw300"
    with open_local(root, tmp_path) as source:
        build_raw(source, tmp_path / "raw", skip_bad=False)
    manifest = read_manifest(tmp_path / "raw")
    picked = manifest.iloc[::37]  # a few images of various sizes
    blob = (tmp_path / "raw" / "images.bin").read_bytes()
    differences = []
    for row in picked.itertuples():
        box = (row.x1, row.y1, row.x2, row.y2)
        ours = decode_crop(blob[row.offset:row.offset + row.nbytes], box, 0.0, size, False)
        differences.append(np.abs(ours.astype(np.int16) - _plain_crop(root / row.image, box, size)).mean())
    assert max(differences) < REAL_TOLERANCE_IMAGE and np.mean(differences) < REAL_TOLERANCE_MEAN


def test_stage_scripts_run_in_a_fresh_folder(params_file, tmp_path):
    """The three stage scripts, as dvc.yaml calls them, on the default synthetic data (small crops)."""
    params = params_file({"data": {"source": "synthetic", "cache_dir": str(tmp_path / "cache"),
                                   "synthetic": {"num_classes": 3, "train_per_class": 6, "test_per_class": 3}},
                          "crop": {"size": 32, "preview": 4}})
    commands = [
        ["download.py", "--out", "data/raw", "--metrics", "metrics/data.json"],
        ["split.py", "--raw", "data/raw", "--out", "data/split", "--metrics", "metrics/split.json",
         "--plot", "plots/class_distribution.png"],
        ["crop.py", "--raw", "data/raw", "--split", "data/split", "--out", "data/crops",
         "--metrics", "metrics/crop.json", "--preview", "plots/crops_preview.png"],
    ]
    for script, *args in commands:
        done = subprocess.run([sys.executable, str(ROOT / "stages" / script), "--params", str(params), *args],
                              cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert load_meta(tmp_path / "data" / "crops").counts == json.loads(
        (tmp_path / "metrics" / "crop.json").read_text())["counts"]
    for plot in ("class_distribution.png", "crops_preview.png"):
        assert (tmp_path / "plots" / plot).is_file()
    bad = subprocess.run([sys.executable, str(ROOT / "stages" / "split.py"), "--params", str(params),
                          "--raw", "nowhere", "--out", "data/split2", "--metrics", "m.json", "--plot", "p.png"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "nowhere" in bad.stderr


def test_an_empty_split_gives_an_empty_store(synthetic_raw, synthetic_split, tmp_path):
    frame = pd.read_csv(synthetic_split / "split.csv")
    frame.loc[frame["split"] == "val", "split"] = "train"
    (tmp_path / "split").mkdir()
    frame.to_csv(tmp_path / "split" / "split.csv", index=False)
    metrics = write_crops(crop_config(preview=0), False, synthetic_raw, tmp_path / "split", tmp_path / "crops", None,
                          tmp_path / "preview.png")
    val = load_split(tmp_path / "crops", "val")
    assert metrics["counts"]["val"] == 0 and val.images.shape == (0, CROP_SIZE_TINY, CROP_SIZE_TINY, 3)
    assert (tmp_path / "preview.png").is_file()


def _split_and_crop(tmp_path, skip: bool = False, workers: int = 1) -> dict:
    write_split(split_config(), 0, tmp_path / "raw", tmp_path / "split", None, None)
    return write_crops(crop_config(workers=workers), skip, tmp_path / "raw", tmp_path / "split", tmp_path / "crops",
                       tmp_path / "crop.json", None)


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_jpeg_fails_the_crop_stage(source, tmp_path, workers):
    _truncate(source / "cars_test" / "00002.jpg")
    download_local(source, tmp_path)  # the header is intact: only decoding finds the damage
    with pytest.raises(DataError, match=r"cannot decode cars_test/00002\.jpg .*images\.bin.*skip_bad_images"):
        _split_and_crop(tmp_path, workers=workers)
    assert not (tmp_path / "crops").exists() and not (tmp_path / "crop.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".crops")]


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_bad_images_at_crop_lists_them(source, tmp_path, workers, capsys):
    _truncate(source / "cars_test" / "00002.jpg")
    download_local(source, tmp_path)
    capsys.readouterr()
    metrics = _split_and_crop(tmp_path, skip=True, workers=workers)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == [f"warning: crop skipped 1 unreadable image(s) (data.skip_bad_images: true); "
                   f"listed under 'skipped' in {tmp_path / 'crop.json'}"]
    assert " object at 0x" not in metrics["skipped"][0]["reason"]
    assert [s["image"] for s in metrics["skipped"]] == ["cars_test/00002.jpg"]
    test = load_split(tmp_path / "crops", "test")
    assert "cars_test/00002.jpg" not in test.names and len(test.images) == len(test.names) == metrics["counts"]["test"]
    assert sum(metrics["counts"].values()) == SYNTHETIC_TOTAL - 1


def _save_as(path, image: Image.Image, **kwargs) -> None:
    """Overwrite ``path`` (named .jpg) with ``image`` in the given format."""
    out = io.BytesIO()
    image.save(out, **kwargs)
    path.write_bytes(out.getvalue())


def test_png_cmyk_and_16_bit_images_are_decoded_by_content(source, tmp_path):
    """A PNG named .jpg, a CMYK JPEG and a 16-bit grey PNG, through download, split and crop."""
    train = source / "cars_train"
    originals = {name: Image.open(train / name).convert("RGB") for name in ("00001.jpg", "00002.jpg", "00003.jpg")}
    _save_as(train / "00001.jpg", originals["00001.jpg"], format="PNG")
    _save_as(train / "00002.jpg", originals["00002.jpg"].convert("CMYK"), format="JPEG", quality=98)
    grey16 = (np.asarray(originals["00003.jpg"].convert("L"), dtype=np.uint16) * 257)
    _save_as(train / "00003.jpg", Image.fromarray(grey16), format="PNG")
    metrics = download_local(source, tmp_path)
    assert metrics["formats"]["PNG"] == 2
    _split_and_crop(tmp_path)
    crops = {split: load_split(tmp_path / "crops", split) for split in ("train", "val")}
    for name, original in originals.items():
        image = f"cars_train/{name}"
        split = next(s for s, data in crops.items() if image in data.names)
        crop = crops[split].images[crops[split].names.index(image)].astype(int)
        reference = original.convert("L").convert("RGB") if name == "00003.jpg" else original
        row = read_manifest(tmp_path / "raw").set_index("image").loc[image]
        expected = np.asarray(crop_box(reference, tuple(row[["x1", "y1", "x2", "y2"]]), 0.0, crop.shape[0], False))
        assert np.abs(crop - expected).mean() < 4.0, name


def test_crop_store_records_where_the_images_came_from(source, tmp_path):
    """The data source travels data/raw -> data/crops -> best.pt, so predict can warn about a demo model."""
    download_local(source, tmp_path)
    _split_and_crop(tmp_path)
    recorded = json.loads((tmp_path / "raw" / "classes.json").read_text())["source"]
    assert json.loads((tmp_path / "crops" / "meta.json").read_text())["source"] == recorded == "torchvision"


def test_a_worker_pool_stopped_as_soon_as_it_started_never_hangs(tmp_path):
    """In a stage, SIGINT and SIGTERM have a Python handler. A pool worker that got its SIGTERM between fork() and
    the interpreter's after-fork step used to drop it, and terminate() then waited for ever (a hang seen in CI on
    a tiny crop). A hundred pools that end at once: the old code hung within a few dozen."""
    import subprocess
    import sys
    import textwrap

    images = tmp_path / "images.bin"
    images.write_bytes(bytes(16))
    script = tmp_path / "pools.py"
    script.write_text(textwrap.dedent(f"""
        from carbench.core.cli import run
        from carbench.data.crop import _task_runner

        def main():
            for _ in range(100):
                with _task_runner(({str(images)!r}, 0.0, 16, False), 2) as run_all:
                    assert list(run_all([])) == []
            print("done")

        run(main)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, "done"), result.stderr


def test_a_disjoint_split_reaches_the_store_so_training_sees_only_the_train_half(synthetic_raw, tmp_path):
    write_split(split_config(strategy="disjoint", disjoint_at=2), 0, synthetic_raw, tmp_path / "split", None, None)
    write_crops(crop_config(), False, synthetic_raw, tmp_path / "split", tmp_path / "crops", None, None)
    meta = load_meta(tmp_path / "crops")
    assert meta.train_classes == 2 and meta.num_classes == 4 and meta.trained().num_classes == 2
    assert set(load_split(tmp_path / "crops", "test").labels) == {2, 3}
    assert set(load_split(tmp_path / "crops", "train").labels) == {0, 1} == set(load_split(tmp_path / "crops",
                                                                                          "val").labels)
