"""The hint a params error gets under ``dvc exp run -S``/``dvc repro`` in the workspace: how to put back the
params.yaml that DVC rewrote before any stage checked it."""
from __future__ import annotations

import os
import subprocess

from .signals import STOP_FILE_ENV


def params_hint() -> str:
    """What to add to a stage's params error under a plain ``dvc repro`` / ``dvc exp run`` in the workspace when
    params.yaml differs from the last commit: ``dvc exp run -S`` has already written the refused value there, and a
    user who did not edit the file by hand wants the committed one back. Empty elsewhere: outside DVC, under the
    scripts that check params before DVC starts (they put params.yaml back themselves), and in a queued run's
    temporary copy (the user's params.yaml is untouched)."""
    root = os.environ.get("DVC_ROOT")
    if not root or "DVC_STAGE" not in os.environ or os.environ.get(STOP_FILE_ENV) \
            or f"{os.sep}.dvc{os.sep}tmp{os.sep}" in root:
        return ""
    try:
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "params.yaml"], cwd=root,
                                 capture_output=True, timeout=30).returncode == 1
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if not changed:
        return ""
    return ("; params.yaml differs from the last commit (`dvc exp run -S` writes its values there before any stage "
            "checks them): `git diff params.yaml` shows how, `git checkout params.yaml` puts the committed file back")
