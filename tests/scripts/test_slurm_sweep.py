"""scripts/slurm_sweep.py: every run's params are checked before anything is submitted."""
from __future__ import annotations

import subprocess
import sys

from support.params import ROOT


def test_a_run_whose_knob_reaches_no_stage_is_refused_before_any_job_is_submitted():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "slurm_sweep.py"), "submit", "--dry-run",
                             "-S", "train.epochs=1,2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (1, "")     # not even the --dry-run listing
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: train.epochs=1 reaches no experiment: every trained experiment sets its own "
                           "epochs")
