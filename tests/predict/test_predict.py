"""carbench-predict on generated photos: top-5 output, retrieval grid, default experiment, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from support.retrieval import CLASS_NAMES, class_colours, fit_retrieval, make_world

from carbench.predict import predict as P

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
    # k-NN: only the classes its k = 3 neighbours voted for, never padded with unscored ones
    expected = 5 if name == "cnn_basic" else len({n for n, _ in ranked})
    assert len(ranked) == expected and len({n for n, _ in ranked}) == expected
    assert {n for n, _ in ranked} <= set(CLASS_NAMES)
    assert all(p > 0 for _, p in ranked)
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


def test_knn_top_classes_are_only_the_scored_ones(world, tmp_path):
    ranked, _ = P.predict_image(world.photo, RETRIEVAL, None, world.models, world.crops, None, tmp_path / "none")
    assert 1 <= len(ranked) <= world.params.experiments[RETRIEVAL].knn.k < 5
    assert all(p > 0 for _, p in ranked) and sum(p for _, p in ranked) == pytest.approx(1.0, abs=1e-5)
    probs = np.array([0.5, 0.0, 0.25, 0.25, 0.0, 0.0])
    assert P.top_classes(probs, CLASS_NAMES, scored_only=True) == \
        [(CLASS_NAMES[0], 0.5), (CLASS_NAMES[2], 0.25), (CLASS_NAMES[3], 0.25)]
    assert len(P.top_classes(probs, CLASS_NAMES)) == 5        # a classifier's softmax scores every class


def test_no_picture_unless_out_is_given(world, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    P.main(_argv(world, "--experiment", RETRIEVAL))
    assert "nearest gallery crops" not in capsys.readouterr().out
    assert not list(tmp_path.glob("*.png"))
    assert "default: no picture" in P.build_parser().format_help()
    P.main(_argv(world, "--experiment", RETRIEVAL, "--out", str(tmp_path / "grid.png")))
    assert f"nearest gallery crops: {tmp_path / 'grid.png'}" in capsys.readouterr().out
    assert (tmp_path / "grid.png").is_file()


def test_not_an_image_names_the_file_and_what_to_do(world, capsys, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(SystemExit) as info:
        P.main([str(text), "--experiment", "cnn_basic", "--models", str(world.models), "--crops", str(world.crops)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and len(err.splitlines()) == 1
    assert err == f"error: {text} is not a readable image (no known image format); pass a photo (JPEG, PNG, ...)"


def test_a_model_trained_on_synthetic_data_warns_once(world, capsys):
    import torch

    path = world.models / "cnn_basic" / "best.pt"
    P.main(_argv(world, "--experiment", "cnn_basic"))
    assert capsys.readouterr().err == ""                      # no data_source recorded: no warning
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "data_source": "synthetic"}, path)
    P.main(_argv(world, "--experiment", "cnn_basic"))
    captured = capsys.readouterr()
    assert len(_ranked(captured.out)) == 5
    assert captured.err.startswith("warning: cnn_basic was trained on the synthetic data set")
    assert len(captured.err.splitlines()) == 1
    torch.save({**ckpt, "data_source": "torchvision"}, path)
    P.main(_argv(world, "--experiment", "cnn_basic"))
    assert capsys.readouterr().err == ""


def test_retrieval_warns_when_its_embedder_saw_synthetic_data(world, capsys, tmp_path):
    import torch

    from carbench.retrieval.predictor import load_predictor

    embedder = world.models / "tl_resnet50_finetune" / "best.pt"
    ckpt = torch.load(embedder, weights_only=True)
    torch.save({**ckpt, "data_source": "synthetic"}, embedder)
    fit_retrieval(world, RETRIEVAL)                           # the k-NN model checks its embedder's md5
    assert load_predictor(world.models / RETRIEVAL, "cpu", world.models).data_source == "synthetic"
    P.main(_argv(world, "--experiment", RETRIEVAL))
    assert capsys.readouterr().err.startswith(f"warning: {RETRIEVAL} was trained on the synthetic data set")


def test_closed_stdout_pipe_ends_quietly(world):
    """`carbench-predict ... | head -1`: the reader goes away before the top-5 is printed."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "carbench.predict.predict", *_argv(world, "--experiment", "cnn_basic")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                      # like `head` exiting: the child's writes now fail with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


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
