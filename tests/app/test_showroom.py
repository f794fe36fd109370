"""The page's core on a tiny world: the same top-5 as carbench-predict, nearest gallery crops, refusals as one line,
test mistakes with examples of both classes, models that cannot load left out with their reason."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from support.app import BOX, BOX_TEXT, EVALUATED, PHOTO_H, PHOTO_W, RETRIEVAL, WRONG_ROWS
from support.retrieval import CLASS_NAMES

from carbench.app.showroom import MISTAKES_PER_PAGE, Showroom, top5_rows
from carbench.core.errors import UserError
from carbench.predict import predict as P

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_experiment_is_loaded_and_ranks_like_carbench_predict(world, showroom):
    assert showroom.names == sorted([*world.params.trained, RETRIEVAL]) and showroom.skipped == {}
    assert showroom.retrieval == [RETRIEVAL]
    crop, answers = showroom.predict_all(world.photo, BOX_TEXT)
    assert np.array_equal(crop, P.crop_query(world.photo, BOX, world.crops)[0])
    assert [a.experiment for a in answers] == showroom.names
    for answer in answers:
        ranked, _ = P.predict_image(world.photo, answer.experiment, BOX_TEXT, world.models, world.crops, None,
                                    world.root / "no-summary", "cpu")
        assert answer.ranked == ranked and len(ranked) == 5, answer.experiment
    rows = top5_rows(answers)
    assert len(rows) == 5 * len(answers)
    assert rows[0] == (answers[0].experiment, 1, answers[0].ranked[0].name, answers[0].ranked[0].probability,
                       answers[0].ranked[0].note)


def test_an_empty_box_is_the_whole_photo(world, showroom):
    whole = P.crop_query(world.photo, None, world.crops)[0]
    for box in (None, "", "  "):
        assert np.array_equal(showroom.crop(world.photo, box)[0], whole)


def test_retrieval_shows_its_nearest_gallery_crops_nearest_first(world, showroom):
    from carbench.data.store import load_split

    crop = showroom.crop(world.photo, BOX_TEXT)
    answer = showroom.answer(RETRIEVAL, crop)
    assert answer.kind == "knn" and len(answer.neighbours) == P.MIN_NEIGHBOURS_SHOWN
    distances = [d for _, _, d in answer.neighbours]
    assert distances == sorted(distances)
    assert answer.neighbours[0][1] == CLASS_NAMES[2] == answer.ranked[0].name     # the boxed colour
    knn = showroom.predictors[RETRIEVAL].knn
    _, idx = showroom.predictors[RETRIEVAL].kneighbors(crop, P.MIN_NEIGHBOURS_SHOWN)
    for (image, name, _), i in zip(answer.neighbours, idx[0]):    # the very gallery crops, from the store
        store = load_split(world.crops, str(knn.gallery_split[i]), mmap=True)
        assert np.array_equal(image, store.images[knn.gallery_row[i]])
        assert name == CLASS_NAMES[store.labels[knn.gallery_row[i]]]
    assert showroom.answer("cnn_basic", crop).neighbours == []


@pytest.mark.parametrize("box, message", [
    ("1,2,3", "four integers"),
    (f"1,1,{PHOTO_W + 1},{PHOTO_H}", "outside the 64x48 image"),
    ("10,10,5,20", "inverted"),
])
def test_a_bad_box_is_one_line(world, showroom, box, message):
    with pytest.raises(UserError) as info:
        showroom.predict_all(world.photo, box)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1


def test_not_an_image_or_a_truncated_photo_is_one_line(world, showroom, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(UserError, match="is not a readable image"):
        showroom.predict_all(text)
    data = world.photo.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError) as info:
        showroom.predict_all(cut)
    assert str(cut) in str(info.value) and len(str(info.value).splitlines()) == 1


def test_mistakes_are_the_wrong_test_photos_with_train_crops_of_both_classes(world, showroom):
    from carbench.data.store import load_split

    test, train = load_split(world.crops, "test"), load_split(world.crops, "train")
    page = showroom.mistakes(EVALUATED)
    assert (page.experiment, page.wrong, page.total, page.first) == (EVALUATED, len(WRONG_ROWS), len(test), 1)
    assert [m.image for m in page.items] == [test.names[r] for r in WRONG_ROWS]
    for m, row in zip(page.items, WRONG_ROWS):
        assert np.array_equal(m.crop, test.images[row])
        assert m.true == CLASS_NAMES[world.test_labels[row]] and m.predicted == CLASS_NAMES[world.test_preds[row]]
        for examples, name in ((m.true_examples, m.true), (m.predicted_examples, m.predicted)):
            assert len(examples) == 2
            for example in examples:   # a train crop of that class
                rows = [i for i in range(len(train)) if np.array_equal(train.images[i], example)]
                assert rows and CLASS_NAMES[train.labels[rows[0]]] == name


def test_mistakes_come_in_pages(world, showroom):
    second = showroom.mistakes(EVALUATED, page=2, per_page=2)
    assert second.first == 3 and len(second.items) == 2 and second.wrong == len(WRONG_ROWS)
    last = showroom.mistakes(EVALUATED, page=99, per_page=2)       # clamped to the last page
    assert last.first == 5 and len(last.items) == 1
    assert showroom.mistakes(EVALUATED, page=0).first == 1
    assert len(showroom.mistakes(EVALUATED).items) == min(MISTAKES_PER_PAGE, len(WRONG_ROWS))


def test_mistakes_need_the_evaluate_tables(showroom):
    with pytest.raises(UserError, match="missing per-image predictions.*rerun"):
        showroom.mistakes("cnn_residual")
    with pytest.raises(UserError, match="unknown experiment 'nope'"):
        showroom.mistakes("nope")


def test_a_model_that_cannot_load_is_left_out_with_its_reason(world, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(world.models, models)
    (models / "tl_resnet50_finetune" / "best.pt").write_bytes(b"changed")     # the k-NN model's embedder
    (models / "notes").mkdir()                                             # no model in it: not an experiment
    shown = Showroom(models, world.crops, world.eval, "cpu")
    assert RETRIEVAL not in shown.names and "notes" not in shown.names
    assert set(shown.skipped) == {RETRIEVAL, "tl_resnet50_finetune"}
    assert "stale" in shown.skipped[RETRIEVAL] or "finetune" in shown.skipped[RETRIEVAL]


def test_no_model_at_all_is_one_error(world, tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(UserError, match="no model to show under .*train first"):
        Showroom(tmp_path / "models", world.crops, world.eval, "cpu")
    with pytest.raises(UserError, match="models directory not found"):
        Showroom(tmp_path / "none", world.crops, world.eval, "cpu")
    with pytest.raises(UserError, match="crop store not found"):
        Showroom(world.models, tmp_path, world.eval, "cpu")


def test_a_model_trained_on_synthetic_data_says_so(world, tmp_path):
    import torch

    models = tmp_path / "models"
    shutil.copytree(world.models, models, ignore=shutil.ignore_patterns("knn_*"))
    path = models / "cnn_basic" / "best.pt"
    torch.save({**torch.load(path, weights_only=True), "data_source": "synthetic"}, path)
    shown = Showroom(models, world.crops, world.eval, "cpu")
    _, answers = shown.predict_all(world.photo)
    warned = {a.experiment: a.warning for a in answers if a.warning}
    assert list(warned) == ["cnn_basic"] and "synthetic data set" in warned["cnn_basic"]


def test_a_class_disjoint_store_has_no_mistakes_to_show(showroom, monkeypatch):
    import dataclasses

    monkeypatch.setattr(showroom, "meta", dataclasses.replace(showroom.meta, train_classes=3))
    with pytest.raises(UserError, match="class-disjoint split.*no classification mistakes"):
        showroom.mistakes(EVALUATED)
