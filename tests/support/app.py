"""The world ``carbench app``'s tests show: a tiny retrieval world (support.retrieval) with one k-NN model, a photo
of class 2 in a box, and one experiment's predictions table written by the evaluate stage's own writer."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from support.retrieval import boxed_photo, fit_retrieval, make_world

RETRIEVAL = "knn_resnet50_k3"
PHOTO_W, PHOTO_H = 64, 48
BOX = (9, 5, 40, 36)                      # 1-based inclusive, inside the photo
BOX_TEXT = ",".join(map(str, BOX))
#: The experiment given an evaluation table, and the test rows (crop-store order) it gets wrong.
EVALUATED = "cnn_basic"
WRONG_ROWS = (1, 4, 5, 9, 16)


def make_app_world(root: Path) -> SimpleNamespace:
    """The world under ``root``: ``make_world``'s fields plus ``photo``, ``eval`` (the tables dir), ``test_labels``
    and ``test_preds``."""
    from carbench.data.store import load_split
    from carbench.report.evaluate import write_predictions

    w = make_world(root)
    fit_retrieval(w, RETRIEVAL)
    w.photo = boxed_photo(root / "photo.jpg", PHOTO_W, PHOTO_H, BOX)      # a "car" of class 2 in the box
    test = load_split(w.crops, "test", mmap=False)
    labels = np.asarray(test.labels)
    preds = labels.copy()
    num_classes = int(labels.max()) + 1
    for row in WRONG_ROWS:
        preds[row] = (labels[row] + 1) % num_classes
    w.eval = root / "metrics" / "eval"
    (w.eval / EVALUATED).mkdir(parents=True)
    write_predictions(test.names, labels, preds, w.eval / EVALUATED / "predictions.csv")
    w.test_labels, w.test_preds = labels, preds
    return w
