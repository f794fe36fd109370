"""Safe extraction of the archives Stanford Cars is shipped in (``.tgz``/``.tar``/``.tar.gz`` and ``.zip``).

Every member is checked before anything is written: an absolute path, a ``..`` component, a link leaving the
target folder, a device or a FIFO is a :class:`DataError` naming the archive and the member, and nothing is
extracted from that archive.
"""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ..core.errors import DataError

TAR_SUFFIXES = (".tgz", ".tar.gz", ".tar")
ZIP_SUFFIXES = (".zip",)


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(TAR_SUFFIXES + ZIP_SUFFIXES)


def _check_name(name: str, archive: Path) -> PurePosixPath:
    posix = PurePosixPath(name.replace("\\", "/"))
    drive = bool(posix.parts) and posix.parts[0].endswith(":")   # C:/x from a Windows-made archive
    if posix.is_absolute() or ".." in posix.parts or name.startswith(("\\", "/")) or drive:
        raise DataError(f"{archive}: member {name!r} would be extracted outside the target folder")
    return posix


def _check_member(member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    """Refuse tar members that would land outside ``dest``: absolute, ``..``, links escaping, devices."""
    name = _check_name(member.name, archive)
    if member.isdev() or member.isfifo():
        raise DataError(f"{archive}: member {member.name!r} is a device or FIFO, refusing to extract it")
    if member.issym() or member.islnk():
        base = dest if member.islnk() else (dest / name).parent
        target = (base / member.linkname).resolve()
        if PurePosixPath(member.linkname).is_absolute() or not target.is_relative_to(dest.resolve()):
            raise DataError(f"{archive}: link {member.name!r} -> {member.linkname!r} escapes the target folder")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar or zip archive into ``dest`` after checking every member."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.lower().endswith(ZIP_SUFFIXES):
        _extract_zip(archive, dest)
        return
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, dest, archive)
            # The 'data' filter re-checks the same rules inside tarfile (defence in depth).
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_name(info.filename, archive)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink stored in the zip
                    raise DataError(f"{archive}: member {info.filename!r} is a link, refusing to extract it")
            zf.extractall(dest, members=infos)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from None
