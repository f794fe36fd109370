"""The download stage: get Stanford Cars from mirrors, a local copy or the synthetic generator, then pack it.

Mirrors (``data.source: mirrors``): each official file is tried on every mirror that lists it, in order.
A download streams into ``<cache_dir>/<file>.<mirror>.part`` with a progress bar and resumes an interrupted
one with an HTTP ``Range`` request; the md5 must match before the file is renamed into ``cache_dir``
(a cached file with the right md5 is not fetched again). When no mirror delivers a file, the stage fails
with a message naming the three ways forward; no URL is ever presented as working unless it was fetched.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from .config import DataConfig, Mirror, MirrorFile
from .errors import DataError
from .io import file_md5, write_json
from .layouts import Source, open_local
from .manifest import build_raw

OFFICIAL_FILES = ("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz", "cars_test_annos_withlabels.mat")
KAGGLE_DATASETS = ("jessicali9530/stanford-cars-dataset", "eduardo4jesus/stanford-cars-dataset")
CHUNK_BYTES = 1 << 20
HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
PROGRESS_MIN_INTERVAL_S = 1.0


def _open_url(url: str, start: int, timeout: float):
    """Open ``url``, asking for bytes from ``start`` on; None when the part file is already complete."""
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == HTTP_RANGE_NOT_SATISFIABLE and start:
            return None  # nothing left to send: the md5 check decides whether the part is whole
        raise


def fetch_url(url: str, part: Path, timeout: float, desc: str) -> None:
    """Download ``url`` into ``part``, resuming from its current size when the server honours Range.

    Network errors propagate (the partial file stays, for the next attempt to resume).
    """
    from tqdm import tqdm

    start = part.stat().st_size if part.exists() else 0
    response = _open_url(url, start, timeout)
    if response is None:
        return
    with response:
        if start and response.status != HTTP_PARTIAL_CONTENT:
            start = 0  # the server ignored Range and sends the whole file: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else None
        with open(part, "ab" if start else "wb") as out, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=desc,
                     mininterval=PROGRESS_MIN_INTERVAL_S, file=sys.stderr) as bar:
            received = 0
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if length and received < int(length):
        # http.client does not raise on a short body; keep the part file so the next run resumes it.
        raise ConnectionError(f"connection closed after {start + received} of {total} bytes")


def fetch_file(name: str, candidates: Sequence[tuple[str, MirrorFile]], cache_dir: Path, timeout: float) -> Path:
    """Get ``cache_dir/name`` with the right md5, trying each ``(mirror name, file)`` in order.

    Raises DataError listing every attempt and the ways forward when none succeeds.
    """
    final = cache_dir / name
    md5s = {entry.md5.lower() for _, entry in candidates}
    if final.is_file() and file_md5(final) in md5s:
        print(f"{name}: cached in {final}", file=sys.stderr)
        return final
    failures = []
    for mirror, entry in candidates:
        part = cache_dir / f"{name}.{mirror}.part"
        try:
            fetch_url(entry.url, part, timeout, desc=f"{name} ({mirror})")
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            # HTTP errors, refused/reset connections, timeouts, truncated bodies, malformed URLs
            failures.append(f"{mirror} ({entry.url}): {exc}")
            continue
        got = file_md5(part)
        if got != entry.md5.lower():
            part.unlink()
            failures.append(f"{mirror} ({entry.url}): md5 mismatch, got {got}, expected {entry.md5}")
            continue
        os.replace(part, final)
        return final
    raise DataError(f"could not download {name}: " + "; ".join(failures or ["no mirror lists it"])
                    + "\n" + ways_forward())


def ways_forward() -> str:
    """What a user without a working mirror can do (no URL is claimed to work)."""
    kaggle = " or ".join(f'"{name}"' for name in KAGGLE_DATASETS)
    return ("No mirror delivered a valid copy. Ways forward:\n"
            "  1. a local copy: set data.source: local and data.path: <folder> (torchvision's stanford_cars "
            "folder, a folder holding the official archives, or Kaggle class folders);\n"
            f"  2. fetch by hand one of the Kaggle datasets {kaggle} (e.g. with the kaggle CLI, which needs "
            "an account), unpack it and use it as in 1.;\n"
            "  3. set data.source: synthetic to run the whole pipeline on generated data.")


def fetch_official(mirrors: Sequence[Mirror], cache_dir: str | Path, timeout: float) -> Path:
    """Fetch the four official files into ``cache_dir`` (a folder of archives :func:`open_local` reads)."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for name in OFFICIAL_FILES:
        candidates = [(m.name, m.files[name]) for m in mirrors if name in m.files]
        fetch_file(name, candidates, cache, timeout)
    return cache


@contextlib.contextmanager
def acquire_source(data: DataConfig, seed: int) -> Iterator[Source]:
    """Yield the :class:`Source` that ``data.source`` names (temporary files live until exit)."""
    scratch = Path(data.cache_dir)
    if data.source == "local":
        with open_local(Path(data.path or ""), scratch) as source:
            yield source
    elif data.source == "synthetic":
        from .synthetic import generate

        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="synthetic-", dir=scratch) as tmp:
            generate(tmp, data.synthetic, seed)
            with open_local(tmp, scratch) as source:
                source.kind = "synthetic"
                yield source
    else:
        folder = fetch_official(data.mirrors, scratch, data.timeout_s)
        with open_local(folder, scratch) as source:
            yield source


def run_download(data: DataConfig, seed: int, out_dir: str | Path, metrics_path: Optional[str | Path]) -> dict[str, Any]:
    """The download stage: acquire ``data.source``, pack it into ``out_dir`` and write the metrics.

    Returns the metrics dict (counts per split, classes, source, skipped images, seconds).
    """
    started = time.perf_counter()
    with acquire_source(data, seed) as source:
        metrics = build_raw(source, out_dir, data.skip_bad_images)
    metrics["source"] = data.source
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    counts = metrics["counts"]
    print(f"download: {counts['train']} train + {counts['test']} test images, {metrics['num_classes']} classes "
          f"({data.source}, {metrics['seconds']:.1f} s) -> {out_dir}")
    return metrics
