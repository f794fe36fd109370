"""carbench.download.archives: members escaping the target and corrupt archives are refused, nothing left behind."""
from __future__ import annotations

import io
import tarfile

import pytest
from support.data import (
    assert_no_download_output,
    download_local,
    make_official_archives,
)

from carbench.core.errors import DataError


def _tar_with(path, member: tarfile.TarInfo, data: bytes = b"x") -> None:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)


@pytest.mark.parametrize("name, kind, link", [("../evil.txt", tarfile.REGTYPE, ""),
                                              ("/tmp/evil-carbench.txt", tarfile.REGTYPE, ""),
                                              ("cars_train/link", tarfile.SYMTYPE, "../../evil.txt"),
                                              ("cars_train/hard", tarfile.LNKTYPE, "../evil.txt")])
def test_archive_member_escaping_the_target(synthetic_source, tmp_path, name, kind, link):
    archives = make_official_archives(synthetic_source, tmp_path / "archives")
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    _tar_with(archives["cars_train.tgz"], member)
    with pytest.raises(DataError, match=rf"cars_train\.tgz: .*{name.split('/')[-1]}.*(outside|escapes)"):
        download_local(tmp_path / "archives", tmp_path)
    assert_no_download_output(tmp_path)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cache" / "evil.txt").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # the extraction folder is gone


def test_corrupt_archive(synthetic_source, tmp_path):
    archives = make_official_archives(synthetic_source, tmp_path / "archives")
    archives["cars_test.tgz"].write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=r"cars_test\.tgz: cannot extract"):
        download_local(tmp_path / "archives", tmp_path)
    assert_no_download_output(tmp_path)
