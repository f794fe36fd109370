"""Shared entry-point plumbing for the thin scripts in stages/."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .config import ConfigError
from .errors import UserError


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--params`` option every stage takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a user error becomes one 'error: ...' line and exit status 1."""
    try:
        main()
    except (ConfigError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
