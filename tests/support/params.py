"""The repository as tests see it: its root, the folder of real photos, and the committed params.yaml.

Tests never read the workspace's params.yaml: that file is the user's to change (`dvc exp run -S ...` writes into
it). They read the committed one (``git show HEAD:params.yaml``) unless ``CARBENCH_TEST_PARAMS`` names a file to
test instead (e.g. ``CARBENCH_TEST_PARAMS=params.yaml`` while editing params.yaml before a commit)."""
from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
#: The folder of real Stanford Cars subsets the real-photo tests read (README, "Test"); they skip where it is absent.
REAL_DATA_ENV = "CARBENCH_REAL_DATA"
REAL_DATA = Path(os.environ.get(REAL_DATA_ENV) or ROOT.parent / "shared" / "data")


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of ``base`` with ``over`` merged in, recursively for nested mappings."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


#: Tests read the committed params.yaml (``git show HEAD:params.yaml``), never the workspace's: that file is
#: the user's to change (`dvc exp run -S ...` writes into it). Set this variable to a params file to test
#: that one instead (e.g. ``CARBENCH_TEST_PARAMS=params.yaml`` while editing params.yaml before a commit).
TEST_PARAMS_ENV = "CARBENCH_TEST_PARAMS"


def committed_params_text() -> str:
    """The text of the committed params.yaml (outside a git checkout: the file shipped beside the tests)."""
    chosen = os.environ.get(TEST_PARAMS_ENV)
    if chosen:
        return Path(chosen).read_text()
    result = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode == 0:
        return result.stdout
    return (ROOT / "params.yaml").read_text()


def committed_params_file(tmp_path_factory) -> Path:
    """The committed params.yaml written into a fresh temporary directory."""
    path = tmp_path_factory.mktemp("committed") / "params.yaml"
    path.write_text(committed_params_text())
    return path


def repo_params(overrides: Optional[dict] = None) -> dict:
    """The repository's committed params.yaml as a dict, with ``overrides`` deep-merged."""
    return deep_merge(yaml.safe_load(committed_params_text()), overrides or {})


def params_with(section: str, **values):
    """The committed params with ``values`` set in ``section``, parsed (:func:`carbench.config.parse_params`)."""
    from carbench.config import parse_params

    raw = repo_params()
    raw[section] = {**raw[section], **values}
    return parse_params(raw)


def with_dotted(raw: dict, dotted: str, value) -> dict:
    """A deep copy of ``raw`` with ``dotted`` set to ``value``."""
    out = copy.deepcopy(raw)
    node = out
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return out
