"""The example outputs the docs print: each `    $ command` line of an indented block of README.md or docs/*.md with
the lines under it, and DVC's plain tables split into cells. The tests run the same commands and compare."""
from __future__ import annotations

import re

from support.params import ROOT

PROMPT = "    $ "


def printed(rel: str) -> dict[str, list[str]]:
    """``{command: the lines printed under it}`` for every `$ command` of file ``rel`` (relative to the root)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / rel).read_text().splitlines():
        if line.startswith(PROMPT):
            current = line[len(PROMPT):].strip()
            out[current] = []
        elif current is not None and line.startswith("    ") and line.strip():
            out[current].append(line[4:])
        else:
            current = None
    return out


def cells(line: str) -> list[str]:
    """One row of a plain-text table (DVC's, `scripts/runs.py`'s): cells are two or more spaces apart."""
    return re.split(r"\s{2,}", line.strip())


def table(lines: list[str]) -> list[list[str]]:
    """Every row of a plain-text table as cells (box-drawing rules, as `dvc exp show` draws them, left out)."""
    return [cells(line.strip("┃│ ")) for line in lines if line.strip() and not set(line.strip()) <= set("━─┏┓┡┩└┘┳╇┴ ")]


def md_table(text: str, heading: str) -> list[list[str]]:
    """The first markdown table after ``heading`` in ``text``, header row first, without the `|---|` rule."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.lstrip().startswith("|"):
            break
        row = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not all(set(cell) <= set("-: ") for cell in row):
            rows.append(row)
    return rows
