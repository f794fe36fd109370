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
sys.path.insert(0, str(ROOT / "src"))

from carbench import cli  # noqa: E402
from carbench.errors import UserError  # noqa: E402

EPILOG = """\
Every other argument passes through to `dvc exp run`, after the overrides (so it wins over the file):
  -n NAME          name the experiment (`dvc metrics diff A B` compares runs by name)
  -S KEY=VALUE     one more params override, e.g. -S train.lr=3e-4
  STAGE ...        run only these stages and what they depend on, e.g. train@cnn_basic
  any other `dvc exp run` option (see `dvc exp run --help`)
example: python scripts/offline.py -n lr3e-4 -S train.lr=3e-4"""


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


def read_overrides(path: Path) -> dict:
    """The overrides file as a nested mapping (empty file: no overrides)."""
    if not path.is_file():
        raise UserError(f"overrides file not found: {path} (see --overrides)")
    try:
        overrides = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(overrides, dict):
        raise UserError(f"{path} must be a mapping of params sections, e.g. train: {{lr: 0.01}}")
    return overrides


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG,
                                     usage="%(prog)s [-h] [--overrides FILE] [dvc exp run arguments ...]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overrides", metavar="FILE", default=str(ROOT / "configs" / "offline.yaml"),
                        help="YAML of params overrides, passed as `-S` (default: configs/offline.yaml)")
    args, extra = parser.parse_known_args()
    overrides = read_overrides(Path(args.overrides))
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
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: install the requirements (pip install -r requirements.txt) "
                        "or activate their environment") from None
    finally:
        if params.read_bytes() != before:
            params.write_bytes(before)
            print("(params.yaml restored; the experiment keeps the values it ran with: "
                  "`dvc exp show`, `dvc params diff A B`)", flush=True)


if __name__ == "__main__":
    cli.run_command(main)
