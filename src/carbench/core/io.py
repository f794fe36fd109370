"""Atomic file and directory output, so a failing stage never leaves half-written results."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target``.

    On any exception the temporary directory is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    # mkdtemp creates 0700; give the final output the permissions a plain mkdir would.
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``target`` for writing; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp creates 0600; match a plain open()
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, target: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``target`` through :func:`atomic_file`, with Ctrl-C and SIGTERM held until the file
    is whole and in place (:func:`carbench.core.signals.stop_signals_deferred`): the stop then ends the run with its one
    line, and the file written (a checkpoint, a resume state) is complete; the previous one is replaced only by it."""
    import torch

    from .signals import stop_signals_deferred

    with stop_signals_deferred(), atomic_file(target, "wb") as handle:
        torch.save(obj, handle)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (sorted keys, so reruns are byte-identical)."""
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error naming it when missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected file not found: {path}")
    return json.loads(path.read_text())


_HASH_BLOCK_BYTES = 1 << 20   # read in 1 MiB blocks: constant memory for multi-GB archives


def _file_digest(path: str | os.PathLike, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def file_md5(path: str | os.PathLike) -> str:
    """Hex md5 of a file's bytes (archive checksums; pinning an embedder checkpoint)."""
    return _file_digest(path, "md5")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in blocks (pretrained weights files of ~100 MB)."""
    return _file_digest(path, "sha256")
