"""Run the whole DAG offline: `dvc exp run` with the overrides in configs/overrides/offline.yaml.

Usage: python scripts/offline.py [--overrides FILE] [extra `dvc exp run` arguments...]
Extra arguments come last, so `python scripts/offline.py -n lr3e-4 -S train.lr=3e-4` wins over the file.

The run is a DVC experiment (`dvc exp show` lists it with its params; compare runs by name with
`dvc metrics diff A B`). The params it will run with are checked before DVC starts, so a bad value
deletes no output. `dvc exp run -S` writes the overrides into params.yaml; this script puts params.yaml,
HEAD and the git index back as they were afterwards, also when the run fails, is interrupted (Ctrl-C,
SIGTERM) or DVC is killed; run the same command again to continue (docs/recovery.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from carbench import cli, exprun
from carbench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

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
    parser.add_argument("--overrides", metavar="FILE", default=str(ROOT / "configs" / "overrides" / "offline.yaml"),
                        help="YAML of params overrides, passed as `-S` (default: configs/overrides/offline.yaml)")
    args, extra = parser.parse_known_args()
    overrides = read_overrides(Path(args.overrides))
    cmd = ["dvc", "exp", "run"]
    for pair in flatten(overrides):
        cmd += ["-S", pair]
    cmd += extra
    # Refused here, bad params never reach DVC, which would write them into params.yaml and delete the outputs
    # of the first stage before that stage refuses them.
    exprun.check_params(ROOT, exprun.set_params(cmd))
    return run_keeping_params(cmd, ROOT)


def run_keeping_params(cmd: list[str], cwd: Path) -> int:
    """Run ``cmd`` in ``cwd``; then put params.yaml (byte for byte), HEAD and the git index back as they were
    before the run, whatever happened (carbench.exprun.run_guarded)."""
    return exprun.run_guarded(cmd, cwd)


if __name__ == "__main__":
    cli.run_command(main)
