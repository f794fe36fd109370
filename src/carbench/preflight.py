"""The resolve stage, the pipeline's pre-flight: params.yaml checked as a whole, then one effective config file per
experiment stage (the format and its writer: :mod:`carbench.config.resolved`).

``params.yaml`` keeps section defaults (``model``, ``train``, ``embed``, ``knn``) and per-experiment
overrides; what an experiment actually runs with is their merge. DVC can only track params keys, so a
``train@<name>`` stage tracking the whole ``train`` section would rerun for ``-S train.lr=...`` even when
the experiment sets its own ``lr``. This stage writes the merge instead, one YAML file per stage instance:

    <out>/train/<name>.yaml   base + model + train             (train@<name>)
    <out>/embed/<name>.yaml   base + embedder + embed          (embed@<name>)
    <out>/knn/<name>.yaml     base + knn                       (knn@<name>)

and each of those stages depends on its own file (dvc.yaml), so a knob reruns exactly the experiments
whose effective config it changes. Stages read the file back through :mod:`carbench.config.resolved` (the format),
which applies every check ``params.yaml`` gets. Files whose content is unchanged are still rewritten
byte for byte the same (sorted keys), so DVC sees no change.

Before writing, the stage checks the names the schema cannot (``model.arch``, ``model.weights``: they need
torchvision, :mod:`carbench.model.names`), so a typo stops the pipeline here, before any ``train@`` starts, and
warns about a changed key that reaches no stage (:func:`warn_unread`).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from .config import Params, RetrievalExperiment, TrainedExperiment, read_yaml
from .config.reach import changed_keys, show_value, unread, value_at
from .config.resolved import write_resolved
from .core.signals import STOP_FILE_ENV
from .model.names import check_model_names

def check_names(params: Params) -> None:
    """``model.arch``/``model.weights`` of the ``model`` section and of every trained experiment exist, and so do
    ``arch``/``weights`` of every ``dag.pretrained`` embedder (ConfigError naming the first bad key)."""
    models: dict = {"model": params.model_defaults}
    models.update({f"experiments.{name}.model": exp.model for name, exp in params.experiments.items()
                   if isinstance(exp, TrainedExperiment)})
    models.update({f"dag.pretrained.{name}": exp.embedder for name, exp in params.experiments.items()
                   if isinstance(exp, RetrievalExperiment) and exp.pretrained})
    check_model_names(models)


def warn_unread(params_path: str | Path) -> list[str]:
    """One ``warning:`` line (on stderr, also returned) per key of ``params_path`` whose value differs from the last
    commit's file and that reaches no stage (:mod:`carbench.config.reach`): a plain ``dvc exp run -S`` or a hand edit
    is not refused, but must not pass without a word. Silent under scripts/offline.py and scripts/exp_run.py (they
    refused or warned before DVC started) and outside git."""
    path = Path(params_path)
    if os.environ.get(STOP_FILE_ENV):
        return []
    try:
        shown = subprocess.run(["git", "show", f"HEAD:./{path.name}"], cwd=path.resolve().parent,
                               capture_output=True, text=True, timeout=30)
        committed = yaml.safe_load(shown.stdout) if shown.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, yaml.YAMLError):
        committed = None
    if not isinstance(committed, dict):
        return []
    raw = read_yaml(path)
    lines = [f"warning: {key}={show_value(value_at(raw, key))} {reason}"
             for key, reason in unread(raw, changed_keys(raw, committed)).items()]
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return lines


def run(params: Params, out_dir: str | Path) -> list[str]:
    """Stage entry point (stages/resolve.py): check the names, then write every resolved file into ``out_dir``
    (replaced atomically); returns their relative paths. No seeding: nothing random happens."""
    check_names(params)
    return write_resolved(params, out_dir)
