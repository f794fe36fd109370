"""The models as DVC artifacts: register a version of each, or list them with their headline metrics.

Usage:
  python scripts/artifacts.py register REV [--version vX.Y.Z]   tag every artifact of dvc.yaml at REV
  python scripts/artifacts.py list                              name, latest version, labels, top-1 and macro-F1

REV is a Git revision or the name of a `dvc exp run` experiment (e.g. `base` after the offline demo). Then
`dvc artifacts get . NAME` (or `dvc artifacts get <git URL> NAME` elsewhere, after `git push origin --tags` and
`dvc push`) fetches a model's export folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from carbench.workshop import artifacts
from carbench.core import cli

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser("register", help="register a version of every artifact at REV")
    reg.add_argument("rev", help="Git revision or `dvc exp run` experiment name")
    reg.add_argument("--version", help="version to register, e.g. v1.0.0 (default: the next minor version)")
    commands.add_parser("list", help="every artifact with its latest version, labels and headline metrics")
    args = parser.parse_args()
    if args.command == "register":
        for tag in artifacts.register(ROOT, args.rev, args.version):
            print(f"registered {tag}")
        print("share them: git push origin --tags; dvc push")
    else:
        print(artifacts.format_listing(artifacts.listing(ROOT)))


if __name__ == "__main__":
    cli.run_command(main)
