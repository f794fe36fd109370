"""Build a torchvision-layout dataset again in each packaging a download route meets (test fixtures).

Every builder takes the tiny synthetic ``stanford_cars`` folder and writes the same photos and annotations
in another real packaging, renamed and reordered as the real copies are:

- ``kaggle_torchvision``: ``<root>/stanford_cars/...`` (rickyyyyyyy/torchvision-stanford-cars);
- ``kaggle_jessicali``: ``cars_train/cars_train/``, ``cars_test/cars_test/``, ``car_devkit/devkit/`` without
  test labels (jessicali9530/stanford-cars-dataset);
- ``all_in_one``: ``car_ims/000001.jpg ...`` numbered by class (not by split) + ``cars_annos.mat``;
- ``all_in_one_archives``: ``car_ims.tgz`` + ``cars_annos.mat``; ``fastai_tgz``: one ``stanford-cars.tgz``
  holding ``stanford-cars/car_ims/`` and ``stanford-cars/cars_annos.mat``;
- ``parquet``: ``data/train-00000-of-00001.parquet`` / ``data/test-...`` with columns image ({bytes, path})
  and label (0-based) and the Hugging Face ClassLabel names in the schema metadata.
"""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Callable, Optional

from carbench.download.matfiles import (
    AllInOneAnnotation,
    read_annotations,
    read_class_names,
    write_all_in_one,
    write_annotations,
)

TEST_LABELS = "cars_test_annos_withlabels.mat"


def annotations(source: Path) -> list[tuple[str, object]]:
    """``(split, MatAnnotation)`` for every image of a torchvision folder, in file order."""
    return ([("train", a) for a in read_annotations(source / "devkit" / "cars_train_annos.mat")]
            + [("test", a) for a in read_annotations(source / TEST_LABELS)])


def reference_lines(source: Path) -> list[str]:
    """The fingerprint lines, computed here independently of carbench.download.fingerprint."""
    return [f"{split},{a.official_class}," + ",".join(str(v) for v in a.box) for split, a in annotations(source)]


def kaggle_torchvision(source: Path, root: Path) -> Path:
    shutil.copytree(source, root / "stanford_cars")
    return root


def kaggle_jessicali(source: Path, root: Path) -> Path:
    for split in ("train", "test"):
        shutil.copytree(source / f"cars_{split}", root / f"cars_{split}" / f"cars_{split}")
    devkit = root / "car_devkit" / "devkit"
    devkit.mkdir(parents=True)
    for name in ("cars_meta.mat", "cars_train_annos.mat"):
        shutil.copyfile(source / "devkit" / name, devkit / name)
    unlabelled = read_annotations(source / TEST_LABELS)
    write_annotations(devkit / "cars_test_annos.mat", unlabelled, with_class=False)
    return root


def all_in_one(source: Path, root: Path,
               edit: Optional[Callable[[list[AllInOneAnnotation]], list[AllInOneAnnotation]]] = None) -> Path:
    """``root/car_ims/`` + ``root/cars_annos.mat``; images numbered by class, test and train interleaved."""
    rows = annotations(source)
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1].official_class, -i))
    (root / "car_ims").mkdir(parents=True)
    out = []
    for number, i in enumerate(order, start=1):
        split, ann = rows[i]
        name = f"car_ims/{number:06d}.jpg"
        shutil.copyfile(source / f"cars_{split}" / ann.fname, root / name)
        out.append(AllInOneAnnotation(path=name, box=ann.box, official_class=ann.official_class,
                                      test=split == "test", row=number))
    write_all_in_one(root / "cars_annos.mat", read_class_names(source / "devkit" / "cars_meta.mat"),
                     edit(out) if edit else out)
    return root


def all_in_one_archives(source: Path, root: Path, **kwargs) -> Path:
    """``root/car_ims.tgz`` + ``root/cars_annos.mat`` (the official all-in-one files)."""
    loose = all_in_one(source, root.parent / f"{root.name}-loose", **kwargs)
    root.mkdir(parents=True)
    with tarfile.open(root / "car_ims.tgz", "w:gz") as tar:
        tar.add(loose / "car_ims", arcname="car_ims")
    shutil.copyfile(loose / "cars_annos.mat", root / "cars_annos.mat")
    return root


def fastai_tgz(source: Path, root: Path) -> Path:
    """``root/stanford-cars.tgz`` holding ``stanford-cars/car_ims/`` and ``stanford-cars/cars_annos.mat``."""
    loose = all_in_one(source, root.parent / f"{root.name}-loose")
    root.mkdir(parents=True)
    with tarfile.open(root / "stanford-cars.tgz", "w:gz") as tar:
        tar.add(loose, arcname="stanford-cars")
    return root


def parquet(source: Path, root: Path) -> Path:
    """Hugging Face parquet files (image bytes + 0-based label; no boxes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = read_class_names(source / "devkit" / "cars_meta.mat")
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"names": names, "_type": "ClassLabel"}}}}
    (root / "data").mkdir(parents=True)
    for split in ("train", "test"):
        rows = [a for s, a in annotations(source) if s == split]
        table = pa.table({
            "image": [{"bytes": (source / f"cars_{split}" / a.fname).read_bytes(), "path": a.fname} for a in rows],
            "label": [a.official_class - 1 for a in rows],
        })
        table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root
