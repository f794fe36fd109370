"""The committed .dvc/config as a clone reads it: the default remote is a folder beside the clone, never inside it
(DVC resolves a relative URL from .dvc/, so inside the work tree `git add -A` would commit the whole cache)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.params import ROOT


def test_default_remote_resolves_beside_the_work_tree_not_inside_it(tmp_path):
    clone = tmp_path / "carbench"
    (clone / ".dvc").mkdir(parents=True)
    shutil.copy2(ROOT / ".dvc" / "config", clone / ".dvc" / "config")   # never a user's config.local
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    listed = subprocess.run(["dvc", "remote", "list"], cwd=clone, capture_output=True, text=True, check=True,
                            env={**os.environ, "COLUMNS": "1000"}).stdout      # DVC wraps lines to the terminal
    (line,) = [line for line in listed.splitlines() if line.rstrip().endswith("(default)")]
    name, url = line.split()[:2]
    assert name == "shared", listed
    remote = Path(url)
    assert remote.is_absolute() and clone not in remote.parents, listed
    assert remote.parent == tmp_path, listed          # beside the work tree: <parent>/carbench-dvc-remote
