"""Run the whole DAG offline: `dvc exp run` with the overrides in configs/offline.yaml.

Usage: python scripts/offline.py [--overrides FILE] [extra `dvc exp run` arguments...]
Extra arguments come last, so `python scripts/offline.py -S train.lr=0.003` wins over the file.
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
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
