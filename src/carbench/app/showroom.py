"""What the page of ``carbench app`` shows, in plain Python (no web framework): every experiment's model, loaded
once; one photo's top-5 under each; a retrieval experiment's nearest gallery crops; an experiment's test mistakes.

A photo is cropped and ranked exactly as ``carbench-predict`` does it (the crop store's geometry,
:func:`carbench.predict.predict.crop_photo` and :func:`~carbench.predict.predict.rank`), so the page and the command
give the same top-5. The mistakes come from what ``evaluate@<name>`` wrote: ``metrics/eval/<name>/predictions.csv``
(docs/ARCHITECTURE.md §8), with the test crops and, as examples of each class, train crops of the crop store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..core.errors import UserError
from ..predict import predict as P

#: Train crops shown as examples of the true and of the predicted class of a mistake.
EXAMPLES_PER_CLASS = 2
#: Mistakes shown per page of the mistakes tab.
MISTAKES_PER_PAGE = 8
PREDICTIONS_FILE = "predictions.csv"
EXAMPLE_SPLIT = "train"
TEST_SPLIT = "test"


@dataclass(frozen=True)
class Answer:
    """One experiment's answer for one photo: its top-5, and (retrieval) its nearest gallery crops."""

    experiment: str
    kind: str
    ranked: list[P.Ranked]
    #: ``(crop, class name, distance)``, nearest first; empty for a classifier.
    neighbours: list[tuple[np.ndarray, str, float]] = field(default_factory=list)
    #: A one-line caveat about the model (trained on the synthetic data set), or "".
    warning: str = ""


@dataclass(frozen=True)
class Mistake:
    """One misclassified test photo: its crop, the true and the predicted class, train crops of both."""

    image: str
    crop: np.ndarray
    true: str
    predicted: str
    true_examples: list[np.ndarray]
    predicted_examples: list[np.ndarray]


@dataclass(frozen=True)
class Mistakes:
    """One page of an experiment's test mistakes: ``wrong`` of ``total`` test photos, ``items`` from 1-based
    ``first`` on."""

    experiment: str
    wrong: int
    total: int
    first: int
    items: list[Mistake]


def top5_rows(answers: list[Answer]) -> list[tuple[str, int, str, float, str]]:
    """The answers as table rows ``(experiment, rank, class, probability, note)``."""
    return [(a.experiment, rank, row.name, row.probability, row.note)
            for a in answers for rank, row in enumerate(a.ranked, start=1)]


def model_dirs(models_root: Path) -> list[Path]:
    """The experiment folders of ``models_root`` that hold a model (a checkpoint or a fitted k-NN), by name."""
    from ..retrieval.knn import KNN_META
    from ..retrieval.predictor import CHECKPOINT

    if not models_root.is_dir():
        raise UserError(f"models directory not found: {models_root} (run `dvc repro`, or pass --models)")
    return sorted((d for d in models_root.iterdir()
                   if d.is_dir() and ((d / CHECKPOINT).is_file() or (d / KNN_META).is_file())), key=lambda d: d.name)


class Showroom:
    """Every model under ``models_root``, loaded once, with the crop store they were trained and evaluated on and
    the evaluate stage's tables (``eval_dir``/<name>/). A model that cannot be loaded (a stale k-NN model, a
    missing embedder) is left out and its reason kept in ``skipped``; none at all is an error."""

    def __init__(self, models_root: str | Path, crops_dir: str | Path, eval_dir: str | Path,
                 device: str = "auto") -> None:
        from ..core import runtime
        from ..retrieval.predictor import load_predictor

        self.models_root, self.crops_dir, self.eval_dir = Path(models_root), Path(crops_dir), Path(eval_dir)
        self.meta = P.crop_geometry(self.crops_dir)
        self.device = runtime.select_device(device)
        self.predictors: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        for folder in model_dirs(self.models_root):
            try:
                self.predictors[folder.name] = load_predictor(folder, self.device, self.models_root)
            except UserError as exc:
                self.skipped[folder.name] = str(exc)
        if not self.predictors:
            why = "; ".join(f"{n}: {m}" for n, m in self.skipped.items()) or "no model folders"
            raise UserError(f"no model to show under {self.models_root} ({why}): train first (`dvc repro`, or the "
                            "demo `python scripts/offline.py`), or pass --models")
        self._examples: Optional[dict[int, list[int]]] = None

    @property
    def names(self) -> list[str]:
        return list(self.predictors)

    @property
    def retrieval(self) -> list[str]:
        """The retrieval (k-NN) experiments, which also show their nearest gallery crops."""
        return [n for n, p in self.predictors.items() if p.kind == P.KNN_KIND]

    # ------------------------------------------------------------------------- a photo
    def crop(self, photo: str | Path, box: Optional[str] = None) -> np.ndarray:
        """uint8 ``(1, S, S, 3)`` crop of the photo (``box``: ``"x1,y1,x2,y2"``, 1-based inclusive; empty or
        None: the whole photo), as the crop stage makes crops; UserError (one line) for a photo or box refused."""
        parsed = P.parse_box(box) if box and box.strip() else None
        return P.crop_photo(photo, parsed, self.meta)

    def answer(self, name: str, crop: np.ndarray) -> Answer:
        """Experiment ``name``'s top-5 (and nearest gallery crops) for one crop."""
        predictor = self.predictors[name]
        neighbours = P.nearest_crops(predictor, crop, self.crops_dir) if predictor.kind == P.KNN_KIND else []
        return Answer(name, predictor.kind, P.rank(predictor, crop), neighbours,
                      P.synthetic_warning(name, predictor) or "")

    def predict_all(self, photo: str | Path, box: Optional[str] = None) -> tuple[np.ndarray, list[Answer]]:
        """The crop the models see (``(S, S, 3)``) and every experiment's answer for it."""
        crop = self.crop(photo, box)
        return crop[0], [self.answer(name, crop) for name in self.predictors]

    # ------------------------------------------------------------------------- test mistakes
    def _example_rows(self) -> dict[int, list[int]]:
        """Class id -> its first train crops' rows (read once)."""
        from ..data.store import load_split

        if self._examples is None:
            labels = load_split(self.crops_dir, EXAMPLE_SPLIT, mmap=True).labels
            self._examples = {}
            for row, label in enumerate(np.asarray(labels)):
                rows = self._examples.setdefault(int(label), [])
                if len(rows) < EXAMPLES_PER_CLASS:
                    rows.append(row)
        return self._examples

    def mistakes(self, name: str, page: int = 1, per_page: int = MISTAKES_PER_PAGE) -> Mistakes:
        """Page ``page`` (1-based, clamped to the pages there are) of experiment ``name``'s misclassified test
        photos, in the crop store's order."""
        from ..data.store import load_split
        from ..report.stats import read_predictions

        if name not in self.predictors:
            raise UserError(f"unknown experiment {name!r} (known: {', '.join(self.predictors)})")
        if self.meta.disjoint:
            raise UserError(f"{self.crops_dir} holds a class-disjoint split: evaluate scores retrieval among test "
                            "classes never trained, so there are no classification mistakes to show")
        table = read_predictions(self.eval_dir / name / PREDICTIONS_FILE)
        wrong = table[table["correct"] == 0]
        pages = max(1, -(-len(wrong) // per_page))
        page = min(max(1, int(page)), pages)
        start = (page - 1) * per_page
        test = load_split(self.crops_dir, TEST_SPLIT, mmap=True)
        rows = {image: i for i, image in enumerate(test.names)}
        missing = [image for image in wrong["image"] if image not in rows]
        if missing:
            raise UserError(f"{self.eval_dir / name / PREDICTIONS_FILE} names test photos the crop store "
                            f"{self.crops_dir} does not have (e.g. {missing[0]}): rerun evaluate@{name} (dvc repro)")
        train = load_split(self.crops_dir, EXAMPLE_SPLIT, mmap=True).images
        examples, classes = self._example_rows(), self.meta.class_names
        items = []
        for image, true, predicted in wrong[["image", "true", "predicted"]].iloc[start:start + per_page].itertuples(
                index=False):
            items.append(Mistake(image, np.asarray(test.images[rows[image]]), classes[int(true)],
                                 classes[int(predicted)],
                                 [np.asarray(train[r]) for r in examples.get(int(true), [])],
                                 [np.asarray(train[r]) for r in examples.get(int(predicted), [])]))
        return Mistakes(name, len(wrong), len(table), start + 1, items)
