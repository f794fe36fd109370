"""Run the whole DAG offline: `dvc exp run` with the overrides in configs/overrides/offline.yaml.

Usage: python scripts/offline.py [--overrides FILE] [extra `dvc exp run` arguments...]
Extra arguments come last, so `python scripts/offline.py -n lr3e-4 -S train.lr=3e-4` wins over the file.

The run is a DVC experiment (`dvc exp show` lists it with its params; compare runs by name with
`dvc metrics diff A B`); running the same command again replaces the experiment of that name on this
commit (DVC itself would refuse the name). The params it will run with are checked before DVC starts, so
a bad value or model name deletes no output, and a `-S` of yours that no stage reads under those params
(e.g. train.epochs while every experiment sets its own) is refused. `dvc exp run -S` writes the overrides
into params.yaml; this script puts params.yaml, HEAD and the git index back as they were afterwards, also
when the run fails, is interrupted (Ctrl-C, SIGTERM) or DVC is killed; run the same command again to
continue (docs/recovery.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from carbench.core import cli
from carbench.workshop import runner
from carbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

EPILOG = """\
Every other argument passes through to `dvc exp run`, after the overrides (so it wins over the file):
  -n NAME          name the experiment (`dvc metrics diff A B` compares runs by name); one of that name
                   on this commit is replaced
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
    parser.add_argument(runner.ALLOW_UNUSED, action="store_true",
                        help="run even when one of your -S sets a key no stage reads (a warning instead)")
    args, extra = parser.parse_known_args()
    path = Path(args.overrides)
    overrides = flatten(read_overrides(path))
    cmd = ["dvc", "exp", "run"]
    for pair in overrides:
        cmd += ["-S", pair]
    cmd += extra
    # Refused here, bad params never reach DVC, which would write them into params.yaml and delete the outputs
    # of the first stage before that stage refuses them. Only the user's own -S must each reach a stage: the
    # file is a setting as a whole (its section defaults also serve experiments that do not set a key).
    runner.check_params(ROOT, runner.set_params(cmd), knobs=runner.set_params(extra), allow_unused=args.allow_unused)
    return run_keeping_params(cmd, ROOT, shown=echo(extra, len(overrides), path))


def echo(extra: list[str], count: int, path: Path) -> str:
    """The command as echoed: the user's own arguments and how many overrides the file adds (every `-S` of the
    demo's file is a line of some 1,600 characters; `dvc exp show` lists what ran)."""
    try:
        path = path.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["dvc exp run", *extra, f"(with {count} overrides from {path})"])


def run_keeping_params(cmd: list[str], cwd: Path, shown: str | None = None) -> int:
    """Run ``cmd`` in ``cwd``; then put params.yaml (byte for byte), HEAD and the git index back as they were
    before the run, whatever happened (carbench.workshop.runner.run_guarded). An experiment of the same name on this commit
    is replaced."""
    return runner.run_guarded(cmd, cwd, shown=shown, replace=True)


if __name__ == "__main__":
    cli.run_command(main)
