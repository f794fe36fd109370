"""Helpers for the end-to-end tests: a throw-away git+DVC copy of this project with tiny params."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from support.params import ROOT, committed_params_text

#: Applied on top of configs/overrides/offline.yaml: small enough that a whole `dvc repro` takes about a minute
#: on 2 CPU cores, large enough that the scratch CNNs must learn to pass.
TINY = {
    "data": {"synthetic": {"num_classes": 6, "train_per_class": 24, "test_per_class": 10,
                           "min_size": 64, "max_size": 96}},
    "crop": {"size": 40, "preview": 8},
    "train": {"image_size": 32, "batch_size": 32, "eval_batch_size": 128},
    "evaluate": {"latency_runs": 2, "latency_warmup": 1, "misclassified": 4, "confused_pairs": 3},
    "experiments": {
        "tl_resnet50_frozen": {"train": {"epochs": 4, "image_size": 32}},
        "tl_resnet50_finetune": {"train": {"epochs": 2, "image_size": 32}},
        "tl_densenet121_progressive": {"model": {"unfreeze_every": 1}, "train": {"epochs": 2, "image_size": 32}},
        "cnn_basic": {"train": {"epochs": 12, "image_size": 32}},
        "cnn_bn_dropout": {"train": {"epochs": 12, "image_size": 32}},
        "cnn_residual": {"train": {"epochs": 12, "image_size": 32}},
    },
}

#: Metric keys that measure time or speed: they legitimately differ between two identical runs.
TIMING_MARKERS = ("seconds", "latency", "per_second", "_ms", "time")


def merge(base: dict, over: dict) -> dict:
    """Deep-merge mapping ``over`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_overrides() -> dict:
    """configs/overrides/offline.yaml + TINY: what `scripts/offline.py --overrides` gets in the demo tests."""
    offline = yaml.safe_load((ROOT / "configs" / "overrides" / "offline.yaml").read_text())
    return merge(offline, TINY)


def tiny_params() -> dict:
    """The committed params.yaml + configs/overrides/offline.yaml + TINY (never the workspace's params.yaml)."""
    return merge(yaml.safe_load(committed_params_text()), tiny_overrides())


def project_files() -> list[str]:
    """The files a clone of this repository would have: the git-tracked ones (their working-tree content).

    Untracked files never travel (a `.venv` inside the clone, data, outputs): `git add` a new file first.
    """
    out = subprocess.run(["git", "ls-files", "--cached"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def env(torch_home: Path, stage_log: Path | None = None) -> dict:
    """Environment for dvc/git subprocesses: fixed git identity, private TORCH_HOME (offline weights)."""
    out = {**os.environ, "TORCH_HOME": str(torch_home), "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.com",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.com", "DVC_NO_ANALYTICS": "1",
           # Stages run from the project root: import the copied project's own src/, not whatever checkout
           # `pip install -e .` pointed at (so a test measures the code it copied).
           "PYTHONPATH": os.pathsep.join(["src", *filter(None, [os.environ.get("PYTHONPATH")])])}
    if stage_log is not None:
        out["CARBENCH_STAGE_LOG"] = str(stage_log)
    return out


def make_project(dest: Path, params: dict | None) -> Path:
    """Copy the project to ``dest``, write ``params`` as params.yaml (None: the committed file, byte for
    byte), and commit it in a new git repo."""
    for rel in project_files():
        if rel.startswith("tests/"):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    text = committed_params_text() if params is None else yaml.safe_dump(params, sort_keys=False)
    (dest / "params.yaml").write_text(text)
    git = ["git", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=e2e", "-c", "user.email=e2e@example.com", "commit", "-qm", "init"],
                   cwd=dest, check=True)
    return dest


def run(cmd: list[str], cwd: Path, environ: dict, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run ``cmd``; on an unexpected failure show its whole output in the assertion."""
    result = subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout}\n"
                             f"--- stderr\n{result.stderr}")
    return result


def ran_stages(output: str) -> set[str]:
    """Names of the stages a `dvc repro` / `dvc exp run` output says it ran."""
    stages = set()
    for line in output.splitlines():
        if line.startswith("Running stage '"):
            stages.add(line.split("'")[1])
    return stages


def status_stages(cwd: Path, environ: dict) -> set[str]:
    """Stages `dvc status` reports as changed."""
    out = run(["dvc", "status", "--json"], cwd, environ).stdout
    return set(json.loads(out or "{}"))


def strip_timings(tree):
    """A metrics tree without its timing/speed keys (which differ between identical runs)."""
    if isinstance(tree, dict):
        return {k: strip_timings(v) for k, v in tree.items() if not any(m in k for m in TIMING_MARKERS)}
    if isinstance(tree, list):
        return [strip_timings(v) for v in tree]
    return tree


def deterministic_metrics(project: Path) -> dict[str, object]:
    """Every metrics JSON under metrics/, timing keys removed, keyed by relative path."""
    out = {}
    for path in sorted((project / "metrics").rglob("*.json")):
        rel = str(path.relative_to(project))
        if "summary" in rel:
            continue
        out[rel] = strip_timings(json.loads(path.read_text()))
    return out
