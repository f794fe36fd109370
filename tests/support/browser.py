"""Debian's Chromium (and its WebDriver) for the browser tests: used where installed; as root with apt-get (CI on a
fresh machine), installed once; otherwise the test skips saying why. Nothing is downloaded at run time besides the
Debian packages."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Debian package -> the program it installs.
PACKAGES = {"chromium": CHROMIUM, "chromium-driver": CHROMEDRIVER}


def debian_program(package: str, why: str) -> str:
    """The program of Debian ``package`` (:data:`PACKAGES`), installed with apt-get when missing and this is root;
    skips the calling test otherwise (``why``: what needs it)."""
    path = PACKAGES[package]
    if os.access(path, os.X_OK):
        return path
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{path} is not installed and this is not root with apt-get: install Debian's `{package}` "
                    f"package to run {why}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900, env=env)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tail = (getattr(exc, "stderr", "") or "")[-500:]
        pytest.skip(f"{path} is not installed and `apt-get install {package}` failed: {exc}\n{tail}")
    if not os.access(path, os.X_OK):
        pytest.skip(f"apt-get installed {package} but {path} is missing")
    return path
