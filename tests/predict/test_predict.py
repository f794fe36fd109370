"""carbench-predict on generated photos: top-5 output, retrieval grid, default experiment, folders, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from support.odd_photos import REFUSED, encode, readable
from support.retrieval import CLASS_NAMES, boxed_photo, class_colours, fit_retrieval, make_world

from carbench.predict import predict as P

pytestmark = pytest.mark.usefixtures("one_thread")

RETRIEVAL = "knn_resnet50_k3"
PHOTO_W, PHOTO_H = 64, 48
BOX = (9, 5, 40, 36)                      # 1-based inclusive, inside the photo


@pytest.fixture()
def world(tmp_path):
    w = make_world(tmp_path)
    fit_retrieval(w, RETRIEVAL)
    w.photo = boxed_photo(tmp_path / "photo.jpg", PHOTO_W, PHOTO_H, BOX)      # a "car" of class 2 in the box
    return w


def _argv(world, *extra: str) -> list[str]:
    return [str(world.photo), "--models", str(world.models), "--crops", str(world.crops),
            "--summary", str(world.root / "metrics" / "summary"), *extra]


def _ranked(stdout: str) -> list[tuple[str, float]]:
    """Parse the printed lines "1. 0.1234  Class Name" (a k-NN line ends "  (its note)")."""
    rows = []
    for line in stdout.splitlines():
        if line[:1].isdigit():
            number, prob, name = line.split(maxsplit=2)
            assert number == f"{len(rows) + 1}."
            rows.append((name.split("  (")[0], float(prob)))
    return rows


def _notes(stdout: str) -> list[tuple[int, float]]:
    """(votes, nearest distance) of each k-NN line "... (2 of 3 neighbours, nearest gallery crop d=0.123)"."""
    import re

    return [(int(m[1]), float(m[2])) for m in re.finditer(r"\((\d+) of 3 neighbours, nearest gallery crop d=([\d.]+)\)",
                                                          stdout)]


@pytest.mark.parametrize("name", ["cnn_basic", RETRIEVAL])
def test_prints_five_distinct_classes(world, name, capsys, tmp_path):
    P.main(_argv(world, "--experiment", name, "--box", ",".join(map(str, BOX)), "--out", str(tmp_path / "nn.png")))
    out = capsys.readouterr().out
    ranked = _ranked(out)
    assert len(ranked) == 5 and len({n for n, _ in ranked}) == 5        # k-NN too, although k = 3 < 5
    assert {n for n, _ in ranked} <= set(CLASS_NAMES)
    assert sum(p for _, p in ranked) <= 1.0 + 5e-4                     # printed with 4 decimals
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    assert (tmp_path / "nn.png").is_file() == (name == RETRIEVAL)
    if name == "cnn_basic":
        assert all(p > 0 for _, p in ranked) and not _notes(out)
        return
    notes = _notes(out)
    assert len(notes) == 5 and sum(v for v, _ in notes) == 3            # every neighbour's vote is on a line
    voted = [i for i, (v, _) in enumerate(notes) if v]
    assert voted == list(range(len(voted))) and all(ranked[i][1] > 0 for i in voted)
    unvoted = notes[len(voted):]                                        # then by their nearest gallery crop
    assert all(p == 0 for _, p in ranked[len(voted):]) and unvoted == sorted(unvoted, key=lambda n: n[1])


def test_retrieval_finds_the_boxed_colour(world, tmp_path):
    ranked, grid = P.predict_image(world.photo, RETRIEVAL, ",".join(map(str, BOX)), world.models, world.crops,
                                   tmp_path / "nn.png", tmp_path / "none")
    assert ranked[0].name == CLASS_NAMES[2] and grid.read_bytes()[:4] == b"\x89PNG"
    assert sum(r.probability for r in ranked) == pytest.approx(1.0, abs=1e-5)


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
    (["--box", f"1,1,{PHOTO_W + 1},{PHOTO_H}"], f"outside the {PHOTO_W}x{PHOTO_H} image (need x2 <= {PHOTO_W}"),
    (["--box", "10,10,5,20"], "--box 10,10,5,20 is inverted: x2 must be >= x1 and y2 >= y1 (x1,y1 is the top-left "
                              "corner, x2,y2 the bottom-right); did you mean --box 5,10,10,20?"),
    (["--box", "40,30,4,3"], "inverted"),
    (["--box", "0,1,5,5"], "x1 and y1 must be >= 1 (coordinates are 1-based"),
    (["--experiment", "nope"], "unknown experiment 'nope'"),
])
def test_bad_input_is_one_error_line(world, capsys, extra, message):
    argv = _argv(world, *extra) if "--experiment" in extra else _argv(world, "--experiment", "cnn_basic", *extra)
    with pytest.raises(SystemExit) as info:
        P.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("error:") and message in err


def test_knn_top_five_when_every_neighbour_agrees(world, tmp_path):
    """k = 3 neighbours of one class: the vote class first, then four classes without a vote, nearest first."""
    from carbench.retrieval.predictor import load_predictor

    ranked, _ = P.predict_image(world.photo, RETRIEVAL, ",".join(map(str, BOX)), world.models, world.crops, None,
                                tmp_path / "none")
    assert world.params.experiments[RETRIEVAL].knn.k == 3 and len(ranked) == 5
    assert ranked[0].probability == pytest.approx(1.0) and ranked[0].note.startswith("3 of 3 neighbours")
    assert all(r.probability == 0 and r.note.startswith("0 of 3 neighbours") for r in ranked[1:])
    # the order of the classes without a vote: their nearest gallery crop, computed here from every distance
    predictor = load_predictor(world.models / RETRIEVAL, "cpu", world.models)
    crop = P.crop_query(world.photo, BOX, world.crops)
    dist, idx = predictor.kneighbors(crop, len(predictor.knn.gallery_labels))
    nearest = {}
    for d, i in zip(dist[0], idx[0]):
        nearest.setdefault(predictor.knn.class_names[predictor.knn.gallery_labels[i]], d)
    expected = sorted((n for n in nearest if n != ranked[0].name), key=nearest.get)[:4]
    assert [r.name for r in ranked[1:]] == expected
    assert [r.note for r in ranked[1:]] == [f"0 of 3 neighbours, nearest gallery crop d={nearest[n]:.3f}"
                                            for n in expected]


def test_classifier_top_classes():
    probs = np.array([0.5, 0.0, 0.25, 0.2, 0.05, 0.0])
    assert P.top_classes(probs, CLASS_NAMES) == [P.Ranked(CLASS_NAMES[i], probs[i]) for i in (0, 2, 3, 4, 1)]


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


def _folder(world, tmp_path):
    """A folder of two photos, a text file, a hidden file and a sub-folder (with a photo that is left alone)."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    photo = world.photo.read_bytes()
    for name in ("b.jpg", "a.JPG", "sub/c.jpg", ".hidden.jpg"):
        (folder / name).write_bytes(photo)
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_a_folder_gets_every_photo_in_it(world, capsys, tmp_path):
    folder = _folder(world, tmp_path)
    P.main(_argv(world, "--experiment", "cnn_basic"))
    single = capsys.readouterr().out
    argv = _argv(world, "--experiment", "cnn_basic")
    argv[0] = str(folder)
    P.main(argv)
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == f"{folder / 'a.JPG'}\n{single}\n{folder / 'b.jpg'}\n{single}"


def test_a_folder_reports_each_unreadable_photo_and_goes_on(world, capsys, tmp_path):
    folder = _folder(world, tmp_path)
    (folder / "broken.png").write_bytes(b"")
    jpeg = encode("JPEG", quality=90)
    (folder / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    argv = _argv(world, "--experiment", RETRIEVAL)
    argv[0] = str(folder)
    with pytest.raises(SystemExit) as info:
        P.main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 1
    broken, cut = captured.err.splitlines()
    assert broken == f"error: {folder / 'broken.png'} is not a readable image (zero-byte file); pass a photo (JPEG, " \
        "PNG, ...)"
    assert cut.startswith(f"error: cannot decode {folder / 'cut.jpg'} (OSError: image file is truncated (") and \
        cut.endswith("); pass a complete, undamaged photo")
    blocks = captured.out.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [str(folder / "a.JPG"), str(folder / "b.jpg")]
    assert all(len(_ranked(b)) == 5 for b in blocks)


@pytest.mark.parametrize("extra, message", [
    (["--box", "1,1,5,5"], "--box applies to one photo, and {folder} is a folder"),
    (["--out", "grid.png"], "--out applies to one photo, and {folder} is a folder"),
])
def test_a_folder_refuses_options_for_one_photo(world, capsys, tmp_path, extra, message):
    folder = _folder(world, tmp_path)
    argv = _argv(world, "--experiment", RETRIEVAL, *extra)
    argv[0] = str(folder)
    with pytest.raises(SystemExit) as info:
        P.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 1 and len(err.splitlines()) == 1 and message.format(folder=folder) in err


def test_a_folder_without_photos_is_one_error_line(world, capsys, tmp_path):
    folder = tmp_path / "empty"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "photo.jpg").write_bytes(world.photo.read_bytes())
    argv = _argv(world, "--experiment", "cnn_basic")
    argv[0] = str(folder)
    with pytest.raises(SystemExit) as info:
        P.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err == f"error: no photos in the folder {folder} (files ending .jpg, .png, " \
        ".webp, ...; sub-folders are not searched)\n"


def test_odd_photos_are_one_error_line_each_and_sound_ones_are_read(world, capsys, tmp_path):
    """Every way Pillow refuses a photo (support/odd_photos.py) is one line naming it; odd but sound photos work."""
    jpeg = encode("JPEG", quality=90)
    for name, (make, where) in REFUSED.items():
        path = tmp_path / name
        path.write_bytes(make(jpeg))
        with pytest.raises(SystemExit) as info:
            P.main([str(path), "--experiment", "cnn_basic", "--models", str(world.models), "--crops",
                    str(world.crops)])
        captured = capsys.readouterr()
        expected = f"error: {path} is not a readable image (" if where == "header" else f"error: cannot decode {path} ("
        assert info.value.code == 1 and captured.out == "", name
        assert len(captured.err.splitlines()) == 1 and captured.err.startswith(expected), (name, captured.err)
    for name, data in readable().items():
        path = tmp_path / name
        path.write_bytes(data)
        P.main([str(path), "--experiment", "cnn_basic", "--models", str(world.models), "--crops", str(world.crops)])
        captured = capsys.readouterr()
        assert len(_ranked(captured.out)) == 5 and captured.err == "", name


@pytest.mark.parametrize("file", ["model.onnx", "model.ts"])
def test_an_exported_model_ranks_like_its_checkpoint(tmp_path, capsys, file):
    """`--model exports/<name>/model.onnx`: the contract gives the crop and preprocessing, no --models/--crops."""
    from support.exports import EXPORTED, export_world

    world = export_world(tmp_path / "world")
    photo = np.zeros((PHOTO_H, PHOTO_W, 3), np.uint8)
    photo[:, :] = class_colours()[4].astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    for name in EXPORTED:
        P.main([str(tmp_path / "photo.png"), "--experiment", name, "--models", str(world.models),
                "--crops", str(world.crops), "--summary", str(tmp_path / "none")])
        theirs = _ranked(capsys.readouterr().out)
        P.main([str(tmp_path / "photo.png"), "--model", str(world.exports[name] / file)])
        mine = _ranked(capsys.readouterr().out)
        assert [n for n, _ in mine] == [n for n, _ in theirs] and len(mine) == 5
        assert np.allclose([p for _, p in mine], [p for _, p in theirs], atol=2e-4)
