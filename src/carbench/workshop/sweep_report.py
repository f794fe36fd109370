"""Mean +/- std over repeated runs: a k-fold sweep (``split.fold``) or a seed sweep (``base.seed``).

A sweep is a set of DVC experiments (``dvc exp run --queue -S split.fold=0,1,2``, then ``dvc queue start``).
:func:`runs_from_exp_show` reads ``dvc exp show --json``; :func:`summarize` groups the runs' test metrics per
benchmark experiment from its ``metrics/headline/<name>.json``, which ``evaluate@<name>`` writes (so a sweep may
run only ``evaluate@<name>``). ``scripts/sweep.py`` is the CLI.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional

from ..core.errors import UserError

METRICS = ("top1", "f1_macro")
HEADLINE_PREFIX, HEADLINE_SUFFIX = "metrics/headline/", ".json"


def exp_show(extra: list[str], cwd: Optional[Path] = None) -> list:
    """The parsed output of ``dvc exp show --json`` (plus ``extra`` arguments, e.g. ``-A``)."""
    from .dvc import run_dvc, tool_error

    result = run_dvc(["exp", "show", "--json", *extra], cwd)
    if result.returncode != 0:
        raise UserError(f"dvc exp show failed: {tool_error(result.stderr)}")
    try:
        return json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        raise UserError("dvc exp show --json printed no JSON; is this a DVC project?") from None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _data(node: dict) -> tuple[dict[str, Any], dict[str, dict]]:
    """(flat params of params.yaml, {metrics file: its data}) of one exp-show revision."""
    data = node.get("data") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    metrics = {path: (entry or {}).get("data") or {} for path, entry in (data.get("metrics") or {}).items()}
    return _flatten(params), metrics


def runs_from_exp_show(entries: list[dict]) -> list[dict[str, Any]]:
    """Every experiment (not the workspace or a commit) of ``dvc exp show --json``:
    ``{"name", "rev", "baseline", "params": {dotted: value}, "metrics": {path: data}}``."""
    runs = []
    for commit in entries:
        if commit.get("rev") == "workspace":
            continue
        for group in commit.get("experiments") or []:
            for rev in group.get("revs") or []:
                params, metrics = _data(rev)
                runs.append({"name": rev.get("name") or rev.get("rev"), "rev": rev.get("rev"),
                             "baseline": commit.get("rev"), "params": params, "metrics": metrics})
    return runs


def scores(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{benchmark experiment: {top1, f1_macro}}`` of one run."""
    out = {}
    for path, data in run["metrics"].items():
        rest = path[len(HEADLINE_PREFIX):]
        if path.startswith(HEADLINE_PREFIX) and path.endswith(HEADLINE_SUFFIX) and "/" not in rest:
            out[rest[:-len(HEADLINE_SUFFIX)]] = {m: data[m] for m in METRICS if isinstance(data.get(m), (int, float))}
    return out


def select(runs: Iterable[dict], names: Optional[list[str]] = None,
           where: Optional[dict[str, str]] = None) -> list[dict]:
    """The runs named in ``names`` (all when empty) whose params match every ``where`` key=value (as text)."""
    chosen = []
    for run in runs:
        if names and run["name"] not in names:
            continue
        if where and any(str(run["params"].get(k)) != v for k, v in where.items()):
            continue
        chosen.append(run)
    return chosen


def varied(runs: list[dict]) -> dict[str, list[Any]]:
    """The params whose values differ between the runs (e.g. ``split.fold: [0, 1, 2]``)."""
    keys = sorted({k for r in runs for k in r["params"]})
    out = {}
    for key in keys:
        values = [r["params"].get(key) for r in runs]
        if len({repr(v) for v in values}) > 1:
            out[key] = values
    return out


def ordered(runs: list[dict]) -> list[dict]:
    """The runs sorted by the params that vary between them (fold 0, 1, 2 ...), then by name."""
    keys = list(varied(runs))

    def key(run: dict) -> tuple:
        values = [run["params"].get(k) for k in keys]
        return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values) + (run["name"],)

    return sorted(runs, key=key)


def summarize(runs: list[dict]) -> list[dict[str, Any]]:
    """Per benchmark experiment: ``runs``, and ``<metric>_mean`` / ``<metric>_std`` (sample std, n-1)."""
    per: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for name, values in scores(run).items():
            for metric, value in values.items():
                per.setdefault(name, {}).setdefault(metric, []).append(float(value))
    rows = []
    for name, values in per.items():
        row: dict[str, Any] = {"experiment": name, "runs": max(len(v) for v in values.values())}
        for metric in METRICS:
            xs = values.get(metric, [])
            row[f"{metric}_mean"] = statistics.fmean(xs) if xs else math.nan
            row[f"{metric}_std"] = statistics.stdev(xs) if len(xs) > 1 else math.nan
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]], runs: list[dict]) -> str:
    """The sweep table (mean +/- std per experiment) and the params that varied, as markdown."""
    lines = ["| experiment | runs | top-1 mean +/- std | macro-F1 mean +/- std |", "|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[f'{m}_mean']:.4f} +/- {row[f'{m}_std']:.4f}" for m in METRICS]
        lines.append(f"| {row['experiment']} | {row['runs']} | {cells[0]} | {cells[1]} |")
    changes = varied(runs)
    note = "; ".join(f"{k}: {', '.join(str(v) for v in vs)}" for k, vs in changes.items()) or "none"
    return "\n".join(lines) + f"\n\nruns: {', '.join(r['name'] for r in runs)}\nvaried: {note}\n"
