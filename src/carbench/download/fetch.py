"""HTTP downloads with resume and checksum: the one place that talks to a URL.

A download streams into ``<folder>/<file>.<label>.part`` with a progress bar and resumes an interrupted one
with an HTTP ``Range`` request; when an md5 is given it must match before the file is renamed into place
(a cached file with the right md5 is not fetched again; without an md5 any cached file is kept, and the
dataset fingerprint checks the content later).
"""
from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from ..core.io import file_md5

CHUNK_BYTES = 1 << 20
HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
PROGRESS_MIN_INTERVAL_S = 1.0


class FetchError(Exception):
    """No URL delivered the file; the message lists every attempt."""


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


def fetch_file(name: str, candidates: Sequence[tuple[str, str]], md5: Optional[str], folder: Path,
               timeout: float) -> Path:
    """Get ``folder/name`` (with the right md5 when given), trying each ``(label, url)`` in order.

    Raises FetchError listing every attempt when none succeeds.
    """
    final = folder / name
    want = md5.lower() if md5 else None
    if final.is_file() and (want is None or file_md5(final) == want):
        print(f"{name}: cached in {final}", file=sys.stderr)
        return final
    failures = []
    for label, url in candidates:
        part = folder / f"{name}.{label}.part"
        try:
            fetch_url(url, part, timeout, desc=f"{name} ({label})")
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            # HTTP errors, refused/reset connections, timeouts, truncated bodies, malformed URLs
            failures.append(f"{label} ({url}): {exc}")
            continue
        got = file_md5(part) if want else None
        if want and got != want:
            part.unlink()
            failures.append(f"{label} ({url}): md5 mismatch, got {got}, expected {md5}")
            continue
        os.replace(part, final)
        return final
    raise FetchError(f"could not download {name}: " + "; ".join(failures or ["no URL lists it"]))
