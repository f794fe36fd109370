"""Runs side by side: the params that differ between DVC experiments and each benchmark experiment's headline.

``dvc exp show`` prints a row per run and a column for every param, dependency and metric DVC tracks (hundreds
here), which no terminal fits. This is the transposed view a reviewer reads: a column per run, a row per param
that differs between the runs shown, then a row per benchmark experiment with its test top-1 (or macro-F1).
``scripts/runs.py`` is the CLI; the data comes from ``dvc exp show --json`` (:func:`sweep_report.exp_show`).
"""
from __future__ import annotations

import json
from typing import Any

from . import sweep_report

#: Width the table keeps within when it can: a terminal's default and what a code-review diff shows.
WIDTH = 120
MISSING = "-"


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def rows(runs: list[dict], metric: str = "top1") -> list[tuple[str, list[str]]]:
    """``(label, one cell per run)``: a row per varied param, a header row, a row per benchmark experiment."""
    out: list[tuple[str, list[str]]] = []
    for key, values in sweep_report.varied(runs).items():
        out.append((key, [_cell(v) for v in values]))
    scores = [sweep_report.scores(run) for run in runs]
    names = list(dict.fromkeys(name for score in scores for name in score))   # dvc.yaml's order: params.yaml's
    out.append((f"test {metric}", [""] * len(runs)))
    for name in names:
        out.append((f"  {name}", [_cell(score.get(name, {}).get(metric)) for score in scores]))
    return out


def table(runs: list[dict], metric: str = "top1") -> str:
    """The plain-text table: a label column, then a column per run headed by its name."""
    body = rows(runs, metric)
    heads = [str(run["name"]) for run in runs]
    label_width = max([len("run")] + [len(label) for label, _ in body])
    widths = [max([len(head)] + [len(cells[i]) for _, cells in body]) for i, head in enumerate(heads)]
    lines = ["  ".join(["run".ljust(label_width), *(h.rjust(w) for h, w in zip(heads, widths))]).rstrip()]
    for label, cells in body:
        lines.append("  ".join([label.ljust(label_width), *(c.rjust(w) for c, w in zip(cells, widths))]).rstrip())
    return "\n".join(lines) + "\n"


def fits(text: str, width: int = WIDTH) -> bool:
    return all(len(line) <= width for line in text.splitlines())
