"""Run the whole DAG offline: `dvc exp run` with the overrides in configs/offline.yaml.

Usage: python scripts/offline.py [--overrides FILE] [extra `dvc exp run` arguments...]
Extra arguments come last, so `python scripts/offline.py -n lr3e-4 -S train.lr=3e-4` wins over the file.

The run is a DVC experiment (`dvc exp show` lists it with its params; compare runs by name with
`dvc metrics diff A B`). `dvc exp run -S` writes the overrides into params.yaml; this script puts
params.yaml back byte for byte afterwards (also when the run fails), so the demo leaves the tracked
files as it found them and a later `dvc repro` runs the real settings again.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def flatten(tree: dict, prefix: str = "") -> list[str]:
    """Turn a nested mapping into `++dotted.key=value` strings (values as JSON/YAML flow).

    `++` is Hydra's add-or-override, which `dvc exp run -S` needs for keys params.yaml lacks
    (e.g. an experiment's `image_size` when only the `train` section sets it).
    """
    pairs = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs.extend(flatten(value, dotted + "."))
        else:
            pairs.append(f"++{dotted}={json.dumps(value)}")
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", default=str(ROOT / "configs" / "offline.yaml"))
    args, extra = parser.parse_known_args()
    overrides = yaml.safe_load(Path(args.overrides).read_text()) or {}
    cmd = ["dvc", "exp", "run"]
    for pair in flatten(overrides):
        cmd += ["-S", pair]
    cmd += extra
    return run_keeping_params(cmd, ROOT)


def run_keeping_params(cmd: list[str], cwd: Path) -> int:
    """Run ``cmd`` in ``cwd``; then restore ``cwd/params.yaml`` to its bytes before the run, whatever happened."""
    params = cwd / "params.yaml"
    before = params.read_bytes()
    print("+", " ".join(cmd), flush=True)
    try:
        return subprocess.call(cmd, cwd=cwd)
    finally:
        if params.read_bytes() != before:
            params.write_bytes(before)
            print("(params.yaml restored; the experiment keeps the values it ran with: "
                  "`dvc exp show`, `dvc params diff A B`)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
