"""The review report of a change: headline metrics and params of two runs, as GitHub markdown.

Usage: python scripts/review_report.py BASE NEW [--out report.md]

BASE and NEW are anything `dvc metrics diff` accepts: experiment names (`python scripts/offline.py -n NAME`
records one), commits or branches. The report holds exactly the output of

    dvc metrics diff BASE NEW --precision 4 --md
    dvc params diff BASE NEW --md

(only what changed; every row fits 120 columns) plus the commands to drill down into what the report leaves out:
every experiment side by side (`scripts/runs.py`), every test metric and timing of a changed experiment
(`dvc metrics diff --targets metrics/eval/<experiment>.json`), the plots of both. CI runs it on the offline
demo of the pull request's base and head (.github/workflows/review.yml) and posts it on the pull request.
A failing `dvc` command or an unwritable `--out` prints one `error: ...` line and exits with status 1.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from carbench.core import cli
from carbench.workshop.dvc import run_dvc, tool_error
from carbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

HEADLINE = "metrics/headline/<experiment>.json"
#: A headline file's path in a `dvc metrics diff` row: the experiment whose numbers changed.
CHANGED = re.compile(r"metrics/headline/([\w.-]+)\.json")


def dvc(args: list[str], cwd: Path) -> str:
    """stdout of one dvc command; a failure stops the report with DVC's own error line."""
    result = run_dvc(args, cwd)
    if result.returncode != 0:
        raise UserError(f"dvc {' '.join(args[:2])} exited {result.returncode}: {tool_error(result.stderr)}")
    return result.stdout.strip()


def metrics_diff(base: str, new: str, cwd: Path) -> str:
    # The headline files are the pipeline's only DVC metrics: no --targets needed.
    return dvc(["metrics", "diff", base, new, "--precision", "4", "--md"], cwd)


def params_diff(base: str, new: str, cwd: Path) -> str:
    return dvc(["params", "diff", base, new, "--md"], cwd)


def report(base: str, new: str, cwd: Path = ROOT) -> str:
    """The markdown report of ``new`` against ``base``."""
    metrics, params = metrics_diff(base, new, cwd), params_diff(base, new, cwd)
    return "\n".join([
        f"## carbench: `{new}` against `{base}`",
        "",
        f"Headline test metrics that changed (`{HEADLINE}`: top-1 and macro-F1 of each experiment):",
        "",
        metrics or "No headline metric changed.",
        "",
        "Params that changed:",
        "",
        params or "No params changed.",
        "",
        *drill_down(base, new, metrics),
        "",
    ])


def drill_down(base: str, new: str, metrics: str) -> list[str]:
    """Commands that show what the report leaves out (a changed experiment named, when one changed)."""
    changed = list(dict.fromkeys(CHANGED.findall(metrics)))
    name = changed[0] if changed else "<experiment>"
    return [
        f"Drill down: `python scripts/runs.py {base} {new}` (every experiment side by side, unchanged ones too),",
        f"`dvc metrics diff {base} {new} --targets metrics/eval/{name}.json`",
        "(every test metric and timing of that experiment),",
        f"`dvc plots diff {base} {new}` (curves, confusion matrices, summary charts).",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="baseline: experiment name, commit or branch")
    parser.add_argument("new", help="the run to review: experiment name, commit or branch")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    text = report(args.base, args.new)
    if args.out:
        try:
            args.out.write_text(text)
        except OSError as exc:
            raise UserError(f"cannot write --out {args.out}: {exc.strerror}") from None
    print(text)
    return 0


if __name__ == "__main__":
    cli.run_command(main)
