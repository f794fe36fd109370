"""carbench-predict on generated photos: top-5 output, retrieval grid, default experiment, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from carbench.predict import predict as P
from test_embed import CLASS_NAMES, class_colours, fit_retrieval, make_world

pytestmark = pytest.mark.usefixtures("one_thread")

RETRIEVAL = "knn_resnet50_k3"
PHOTO_W, PHOTO_H = 64, 48
BOX = (9, 5, 40, 36)                      # 1-based inclusive, inside the photo


@pytest.fixture()
def world(tmp_path):
    w = make_world(tmp_path)
    fit_retrieval(w, RETRIEVAL)
    photo = np.zeros((PHOTO_H, PHOTO_W, 3), np.uint8)
    x1, y1, x2, y2 = BOX
    photo[y1 - 1:y2, x1 - 1:x2] = class_colours()[2].astype(np.uint8)      # a "car" of class 2 in the box
    w.photo = tmp_path / "photo.jpg"
    Image.fromarray(photo).save(w.photo, quality=95)
    return w


def _argv(world, *extra: str) -> list[str]:
    return [str(world.photo), "--models", str(world.models), "--crops", str(world.crops),
            "--summary", str(world.root / "metrics" / "summary"), *extra]


def _ranked(stdout: str) -> list[tuple[str, float]]:
    """Parse the printed lines "1. 0.1234  Class Name"."""
    rows = []
    for line in stdout.splitlines():
        if line[:1].isdigit():
            _, prob, name = line.split(maxsplit=2)
            rows.append((name, float(prob)))
    return rows


@pytest.mark.parametrize("name", ["cnn_basic", RETRIEVAL])
def test_prints_five_distinct_classes(world, name, capsys, tmp_path):
    P.main(_argv(world, "--experiment", name, "--box", ",".join(map(str, BOX)), "--out", str(tmp_path / "nn.png")))
    ranked = _ranked(capsys.readouterr().out)
    assert len(ranked) == 5 and len({n for n, _ in ranked}) == 5
    assert {n for n, _ in ranked} <= set(CLASS_NAMES)
    assert sum(p for _, p in ranked) <= 1.0 + 5e-4                     # printed with 4 decimals
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    assert (tmp_path / "nn.png").is_file() == (name == RETRIEVAL)


def test_retrieval_finds_the_boxed_colour(world, tmp_path):
    ranked, grid = P.predict_image(world.photo, RETRIEVAL, ",".join(map(str, BOX)), world.models, world.crops,
                                   tmp_path / "nn.png", tmp_path / "none")
    assert ranked[0][0] == CLASS_NAMES[2] and grid.read_bytes()[:4] == b"\x89PNG"
    assert sum(p for _, p in ranked) <= 1.0 + 1e-6


def test_default_box_is_the_whole_image(world):
    whole = P.crop_query(world.photo, None, world.crops)
    explicit = P.crop_query(world.photo, (1, 1, PHOTO_W, PHOTO_H), world.crops)
    assert whole.shape == (1, 20, 20, 3) and np.array_equal(whole, explicit)


def test_default_experiment_comes_from_the_summary(world, capsys):
    with pytest.raises(SystemExit) as info:
        P.main(_argv(world))
    assert info.value.code == 1 and "pass --experiment" in capsys.readouterr().err
    summary = world.root / "metrics" / "summary"
    summary.mkdir(parents=True)
    (summary / "summary.json").write_text(json.dumps({"best": {"experiment": "cnn_basic", "top1": 0.5}}))
    P.main(_argv(world))
    assert len(_ranked(capsys.readouterr().out)) == 5


@pytest.mark.parametrize("extra, message", [
    (["--box", "1,2,3"], "four integers"),
    (["--box", f"1,1,{PHOTO_W + 1},{PHOTO_H}"], "outside"),
    (["--box", "10,10,5,20"], "outside"),
    (["--experiment", "nope"], "unknown experiment 'nope'"),
])
def test_bad_input_is_one_error_line(world, capsys, extra, message):
    argv = _argv(world, *extra) if "--experiment" in extra else _argv(world, "--experiment", "cnn_basic", *extra)
    with pytest.raises(SystemExit) as info:
        P.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("error:") and message in err


def test_not_an_image_and_missing_models(world, capsys, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    for argv, message in [([str(text), "--experiment", "cnn_basic", "--models", str(world.models), "--crops",
                            str(world.crops)], "not a readable image"),
                          ([str(world.photo), "--experiment", "cnn_basic", "--models", str(tmp_path / "none")],
                           "models directory not found")]:
        with pytest.raises(SystemExit) as info:
            P.main(argv)
        err = capsys.readouterr().err.strip()
        assert info.value.code == 1 and err.startswith("error:") and message in err


def test_crop_matches_the_crop_store(synthetic_raw, synthetic_crops, tmp_path):
    """A raw photo cropped by predict is bit-identical to the crop stage's stored crop of it."""
    import pandas as pd

    from carbench.data.store import load_split

    manifest = pd.read_csv(synthetic_raw / "manifest.csv")
    test = load_split(synthetic_crops, "test")
    row = manifest.set_index("image").loc[test.names[0]]
    with open(synthetic_raw / "images.bin", "rb") as handle:
        handle.seek(int(row["offset"]))
        data = handle.read(int(row["nbytes"]))
    photo = tmp_path / ("photo" + "." + test.names[0].rsplit(".", 1)[-1])
    photo.write_bytes(data)
    box = tuple(int(row[c]) for c in ("x1", "y1", "x2", "y2"))
    assert np.array_equal(P.crop_query(photo, box, synthetic_crops)[0], test.images[0])
