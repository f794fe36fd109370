"""The repository speaks to its users: its docs, scripts, code, configs and tests name no folder a user does not
have (``../shared``) and nothing of the machinery the project was developed with, and the real-photo tests read the
folder a user names (``CARBENCH_REAL_DATA``, README "Test")."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support.params import ROOT

#: (pattern, where): the README, docs, scripts and code name no folder beside the repository ...
BESIDE = (re.compile(r"\.\./shared"), ("README.md", "docs", "scripts", "src"))
#: ... and nothing anywhere tells how the project was built.
BUILT_WITH = re.compile(r"shared/tools|device-pack|\blent\b|working periods?|\bdevice tool\b|\bpayload helper"
                        r"|minutes of (device|machine) time|\bworkplace\b|\bhelper sessions?\b|\bcarry `?\["
                        r"|\.device/|session's \d+", re.IGNORECASE)
EVERYWHERE = ("README.md", "docs", "scripts", "src", "configs", "stages", "tests", ".github", ".ci",
              "pyproject.toml", "requirements.txt", "dvc.yaml", "params.yaml")
THIS = Path(__file__).resolve()


def _files(tops: tuple[str, ...]) -> list[Path]:
    """The text files under ``tops`` that git tracks or would track (every file outside a git checkout)."""
    done = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *tops], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip():
        paths = [ROOT / line for line in done.stdout.splitlines()]
    else:
        paths = [p for top in tops for p in ([ROOT / top] if (ROOT / top).is_file() else (ROOT / top).rglob("*"))]
    return [p for p in paths if p.is_file() and p.resolve() != THIS and p.suffix not in (".png", ".jpg", ".pt")]


def _hits(pattern: re.Pattern, tops: tuple[str, ...]) -> list[str]:
    hits = []
    for path in _files(tops):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                 if pattern.search(line)]
    return hits


def test_no_folder_beside_the_repository_is_named():
    pattern, tops = BESIDE
    assert _hits(pattern, tops) == []


def test_nothing_tells_how_the_project_was_built():
    assert _hits(BUILT_WITH, EVERYWHERE) == []


def test_the_patterns_find_what_they_are_for():
    assert BESIDE[0].search("bash ../shared/tools/device-pack.sh")
    for line in ("prepare the payload with `bash ../shared/tools/device-pack.sh`", "carry `[\".device\"]`",
                 "a fresh start costs 1-2 minutes of the session's 15", "15 minutes of device time",
                 "run calls of the device tool", "on a lent machine", "beside this workplace's checkout"):
        assert BUILT_WITH.search(line), line
    for line in ("a stage's resume payload", "shape alone must also carry the class", "base.device: cuda:auto"):
        assert not BUILT_WITH.search(line), line


def test_the_real_photo_tests_read_the_folder_a_user_names(tmp_path):
    code = "import sys; sys.path.insert(0, 'tests'); from support.params import REAL_DATA; print(REAL_DATA)"
    env = {**os.environ, "CARBENCH_REAL_DATA": str(tmp_path / "my-cars")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.stdout.strip() == str(tmp_path / "my-cars"), done.stderr
