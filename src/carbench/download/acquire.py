"""The download stage: get Stanford Cars (a route, a local copy or the generator), check it, pack it.

``data.source``:

- ``auto``: try the routes of ``src/carbench/resources/sources.yaml`` in order (:mod:`carbench.download.sources`,
  :mod:`carbench.download.routes`). The first route whose data matches the file's pinned fingerprint ``expected``
  (:mod:`carbench.download.fingerprint`) wins; a route whose annotations differ
  (a wrong label, a missing image, an unlabelled test set) is rejected with what differs, and the next one
  is tried. When none delivers, the stage fails naming every attempt and the ways forward.
- ``local``: ``data.path`` in any layout :mod:`carbench.download.layouts` reads. A subset (raw300, dev98, a user's own
  selection) is accepted: its fingerprint is recorded in the metrics, not enforced.
- ``synthetic``: the generated dataset (fingerprint recorded).

``base.offline`` (or ``CARBENCH_OFFLINE``/``HF_HUB_OFFLINE``) forbids every download: ``auto`` then fails at
once with the ways forward. ``metrics/data.json`` records the route, the fingerprint, the counts, whether
the fingerprint matched, every attempt and the duration.

``data.extra`` (:mod:`carbench.download.extra`): a user's own class folders, merged in as new classes after the
fingerprint was checked on the official images only, and listed under ``extra`` in the metrics.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from ..config import DataConfig, Params
from ..core.errors import DataError
from .fingerprint import differences, fingerprint, read_reference
from ..core.io import write_json
from .extra import merge_extra
from .layouts import Source, open_local
from .manifest import build_raw
from .routes import RouteFailed, describe, fetch
from .sources import SOURCES, ExpectedData, Sources, load_sources, shown
from ..core.runtime import configure, is_offline


def ways_forward(offline: bool) -> str:
    """What a user can do when no route delivered (no URL is claimed to work)."""
    lines = ["Ways forward:"]
    if offline:
        lines.append("  - downloads are off (base.offline: true, or CARBENCH_OFFLINE / HF_HUB_OFFLINE set): "
                     "turn that off on a machine with internet, or use a copy as below;")
    lines += [
        "  - with internet, Kaggle routes need no account for public datasets; if Kaggle refuses, set "
        "KAGGLE_USERNAME and KAGGLE_KEY (an API token from kaggle.com, Settings > API) and run again;",
        "  - a copy you already have: data.source: local and data.path: <folder> (torchvision's stanford_cars "
        "folder, the all-in-one car_ims/ + cars_annos.mat, a folder of the official archives, Kaggle's "
        "download unpacked, or Hugging Face parquet files);",
        f"  - add a working URL or mirror as a route in {shown(SOURCES)} "
        "(the fingerprint checks what it delivers);",
        "  - data.source: synthetic runs the whole pipeline on generated data.",
    ]
    stage = os.environ.get("DVC_STAGE")   # DVC sets both for the stage it runs
    lock = Path(os.environ.get("DVC_ROOT", ".")) / "dvc.lock"
    if stage and lock.is_file() and f"\n  {stage}:\n" in lock.read_text():   # an earlier run recorded outputs
        lines.append(f"DVC removed this stage's previous outputs before it ran (it does so for every stage it "
                     f"reruns): `dvc checkout {stage}` brings back the ones dvc.lock records (the offline demo's, "
                     "say), without a network.")
    return "\n".join(lines)


def _reference(expected: ExpectedData) -> Optional[list[str]]:
    if expected.annotations and Path(expected.annotations).is_file():
        return read_reference(expected.annotations)
    return None


def check_source(source: Source, expected: ExpectedData, reference: Optional[list[str]]) -> list[str]:
    """What differs between ``source`` and the expected dataset (empty: it is the dataset)."""
    return differences(source.images, expected.sha256, expected.labels_sha256,
                       {"train": expected.train, "test": expected.test}, reference)


def _fingerprint_metrics(source: Source, problems: list[str], enforced: bool) -> dict[str, Any]:
    return {**fingerprint(source.images).as_dict(), "matches_expected": not problems,
            "enforced": enforced, "boxes": source.boxes}


@contextlib.contextmanager
def _local_source(data: DataConfig, seed: int) -> Iterator[Source]:
    scratch = Path(data.cache_dir)
    if data.source == "local":
        with open_local(Path(data.path or ""), scratch) as source:
            yield source
        return
    from .synthetic import generate

    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="synthetic-", dir=scratch) as tmp:
        generate(tmp, data.synthetic, seed)
        with open_local(tmp, scratch) as source:
            source.kind = "synthetic"
            yield source


def _build_with_extra(source: Source, data: DataConfig, seed: int, out_dir: str | Path) -> dict[str, Any]:
    """Pack ``source`` plus ``data.extra``'s own classes (merged after the fingerprint check); the metrics."""
    extra = None
    if data.extra:
        source, extra = merge_extra(source, data.extra, seed)
    metrics = build_raw(source, out_dir, data.skip_bad_images)
    if extra is not None:
        metrics["extra"] = extra
    return metrics


def _pack_first_route(data: DataConfig, sources: Sources, offline: bool, out_dir: str | Path,
                      seed: int = 0) -> dict[str, Any]:
    """Try every route in order; pack the first that matches the fingerprint. Returns the metrics."""
    attempts: list[dict[str, str]] = []
    if offline:
        attempts = [{"route": r.name, "result": "skipped: downloads are off"} for r in sources.routes]
    reference = _reference(sources.expected)
    cache = Path(data.cache_dir)
    for route in [] if offline else sources.routes:
        started = time.perf_counter()
        try:
            folder, labels = fetch(route, cache, data.timeout_s)
            with open_local(folder, cache, test_labels=labels) as source:
                problems = check_source(source, sources.expected, reference)
                if problems:
                    attempts.append({"route": route.name, "result": "rejected: " + "; ".join(problems)})
                    continue
                metrics = _build_with_extra(source, data, seed, out_dir)
                metrics["fingerprint"] = _fingerprint_metrics(source, problems, enforced=True)
        except RouteFailed as exc:
            attempts.append({"route": route.name, "result": f"failed: {exc}"})
            continue
        except DataError as exc:
            attempts.append({"route": route.name, "result": f"rejected: {exc}"})
            continue
        attempts.append({"route": route.name, "result": f"ok in {time.perf_counter() - started:.1f} s"})
        metrics.update(route=route.name, route_ref=describe(route), attempts=attempts)
        return metrics
    described = {r.name: describe(r) for r in sources.routes}
    listing = "\n".join(f"  - {described[a['route']]}: {a['result']}" for a in attempts)
    raise DataError(f"could not get Stanford Cars from any route:\n{listing}\n"
                    + ways_forward(offline))


def acquire(data: DataConfig, seed: int, out_dir: str | Path, metrics_path: Optional[str | Path],
            offline: bool = False, sources: Optional[Sources] = None) -> dict[str, Any]:
    """The download stage's work: acquire ``data.source``, pack it into ``out_dir`` and write the metrics.

    ``offline``: ``base.offline`` (the environment variables are honoured as well). ``sources``: the routes and
    fingerprint (tests pass their own; None: the shipped :data:`~carbench.download.sources.SOURCES`). Returns the
    metrics (counts per split, classes, route, fingerprint, skipped images, seconds).
    """
    started = time.perf_counter()
    if sources is None:
        sources = load_sources()
    if data.source == "auto":
        metrics = _pack_first_route(data, sources, is_offline(offline), out_dir, seed)
    else:
        with _local_source(data, seed) as source:
            problems = check_source(source, sources.expected, None)
            metrics = _build_with_extra(source, data, seed, out_dir)
            metrics["fingerprint"] = _fingerprint_metrics(source, problems, enforced=False)
        metrics["route"] = data.source
    metrics["source"] = data.source
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    counts = metrics["counts"]
    print(f"download: {counts['train']} train + {counts['test']} test images, {metrics['num_classes']} classes "
          f"({metrics['route']}, {metrics['seconds']:.1f} s) -> {out_dir}")
    return metrics


def run(params: Params, out_dir: str | Path, metrics_path: str | Path) -> dict[str, Any]:
    """Stage entry point (stages/download.py): seed, then :func:`acquire` with the ``data`` section."""
    configure(params.base.seed, params.base.threads, use_torch=False)
    return acquire(params.data, params.base.seed, out_dir, metrics_path, offline=params.base.offline)
