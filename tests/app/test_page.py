"""The page's handlers and layout: top-5 cards per experiment, nearest crops per retrieval experiment, a refused
upload as one line naming the uploaded file, the mistakes tab's tiles."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from support.app import BOX_TEXT, EVALUATED, RETRIEVAL, WRONG_ROWS

from carbench.app import page as G
from carbench.core.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

CARD_ITEM = re.compile(r'<li data-experiment="([^"]+)" data-rank="(\d)" data-class="([^"]+)" '
                       r'data-probability="([0-9.]+)">')


def test_predict_shows_every_experiments_top5_and_the_nearest_crops(world, showroom):
    status, crop, cards, *galleries = G.predict(showroom, str(world.photo), BOX_TEXT)
    _, answers = showroom.predict_all(world.photo, BOX_TEXT)
    assert status == f"photo.jpg: top-5 of {len(answers)} experiments"
    assert np.array_equal(crop, showroom.crop(world.photo, BOX_TEXT)[0])
    shown = [(e, int(r), c, p) for e, r, c, p in CARD_ITEM.findall(cards)]
    assert shown == [(a.experiment, rank, row.name, f"{row.probability:.4f}")
                     for a in answers for rank, row in enumerate(a.ranked, start=1)]
    assert len(galleries) == 1 == len(showroom.retrieval)
    knn = next(a for a in answers if a.experiment == RETRIEVAL)
    assert [caption for _, caption in galleries[0]] == [f"{n} (d={d:.3f})" for _, n, d in knn.neighbours]
    assert "neighbours, nearest gallery crop" in cards            # the k-NN lines keep their vote note


def test_class_names_are_escaped():
    from carbench.app.showroom import Answer
    from carbench.predict.predict import Ranked

    cards = G.top5_html([Answer("x", "classifier", [Ranked('A<b>"&', 0.5)])])
    assert "<b>" not in cards and 'data-class="A&lt;b&gt;&quot;&amp;"' in cards


@pytest.mark.parametrize("name, box, expected", [
    ("notes.jpg", "", "error: notes.jpg is not a readable image (no known image format); pass a photo"),
    ("photo.jpg", "1,1,999,5", "error: box 1,1,999,5 is outside the 64x48 image (need x2 <= 64 and y2 <= 48)"),
    ("photo.jpg", "1,2", "error: box must be four integers"),
])
def test_a_refused_upload_is_one_line_naming_the_uploaded_file(world, showroom, tmp_path, name, box, expected):
    upload = tmp_path / "gradio" / "3f2a" / name          # where Gradio keeps an upload: a temporary folder
    upload.parent.mkdir(parents=True)
    if name == "notes.jpg":
        upload.write_text("not a picture")
    else:
        shutil.copy(world.photo, upload)
    status, crop, cards, *galleries = G.predict(showroom, str(upload), box)
    assert status.startswith(expected) and "\n" not in status and str(tmp_path) not in status
    assert crop is None and cards == "" and galleries == [[]]


def test_no_photo_yet(showroom):
    assert G.predict(showroom, None, "")[0] == "error: choose a photo first"


def test_refusal_keeps_a_message_without_the_path():
    assert G.refusal(UserError("--box 1,2 is bad"), None) == "error: box 1,2 is bad"


def test_mistakes_tab_shows_three_tiles_per_mistake(world, showroom):
    line, tiles = G.browse(showroom, EVALUATED, 1)
    assert line.startswith(f"{EVALUATED}: {len(WRONG_ROWS)} of {len(world.test_labels)} test photos wrong; "
                           f"mistakes 1-{len(WRONG_ROWS)}")
    assert len(tiles) == 3 * len(WRONG_ROWS)
    first = showroom.mistakes(EVALUATED).items[0]
    assert tiles[0][1] == f"{first.image}: true {first.true}, predicted {first.predicted}"
    assert tiles[1][1] == f"true: {first.true}" and tiles[2][1] == f"predicted: {first.predicted}"
    assert np.array_equal(tiles[1][0], first.true_examples[0])
    assert np.array_equal(tiles[2][0], first.predicted_examples[0])


def test_mistakes_tab_error_is_one_line(showroom):
    line, tiles = G.browse(showroom, "cnn_residual", None)
    assert line.startswith("error: missing per-image predictions") and tiles == [] and "\n" not in line


def test_the_page_has_a_gallery_per_retrieval_experiment(showroom):
    blocks = G.build(showroom)
    ids = {getattr(b, "elem_id", None) for b in blocks.blocks.values()}
    assert {"photo", "box", "predict", "status", "top5", "crop", "experiment", "mistakes",
            f"nearest-{RETRIEVAL}"} <= ids
    assert sum(1 for i in ids if i and i.startswith("nearest-")) == len(showroom.retrieval)
