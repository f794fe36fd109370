"""The aggregate stage: collect the nine experiments' metrics into one table and summary plots.

It collects: every metric comes from a file another stage wrote (``metrics/eval/<name>.json``,
``metrics/knn/<name>.json``, dvclive's ``metrics/train/<name>/``). What it adds is their uncertainty, from the
per-test-image predictions evaluate writes (``metrics/eval/<name>/predictions.csv``, :mod:`carbench.report.stats`):
a seeded bootstrap confidence interval of top-1 and macro-F1 per experiment (``aggregate.bootstrap``,
``aggregate.confidence``, ``aggregate.seed``) and the exact McNemar p-value of each experiment against the
best one (highest test top-1) on the same test images (``p_vs_best``; empty for the best itself).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from . import anchors
from . import plots
from . import stats
from ..config import CONFIGURATIONS, AggregateConfig, Params, RetrievalExperiment, TrainedExperiment
from ..core.errors import UserError
from ..core.io import atomic_dir, read_json, write_json
from ..core.runtime import configure

#: Columns from metrics/eval/<name>.json, in table order (every experiment has them).
EVAL_COLUMNS = ("top1", "top5", "loss", "f1_macro", "f1_weighted", "precision_macro", "recall_macro",
                "balanced_accuracy", "params_count", "size_mb", "latency_ms", "images_per_second")
#: From the trainer's dvclive summary (trained experiments; empty for retrieval).
TRAIN_COLUMNS = ("best_val_top1",)
#: From metrics/knn/<name>.json (retrieval experiments; empty for trained); recall_at_K follow.
KNN_COLUMNS = ("k", "precision_at_k", "map_at_r", "query_ms_per_image", "logreg_top1", "random_forest_top1")
#: knn@'s per-query predictions of its classical classifier (``knn.classical``; carbench.retrieval.knn writes them)
#: in ``metrics/knn/<name>/``: the classifier's own row, ``<name>+<classifier>``, after its experiment.
CLASSICAL_CSV = "classical_predictions.csv"
#: Uncertainty columns (carbench.report.stats), after the eval columns: the bootstrap interval of top-1 and macro-F1
#: and the McNemar p-value against the best experiment.
STATS_COLUMNS = ("top1_ci_low", "top1_ci_high", "f1_macro_ci_low", "f1_macro_ci_high", "p_vs_best")
#: Counts: kept as integers (nullable, empty where not applicable) rather than floats like 3.0.
INTEGER_COLUMNS = ("params_count", "k")
BAR_COLUMNS = ("top1", "f1_macro")
#: Where dvclive 3.x writes a logged metric ``val/top1`` under ``Live(dir=...)``.
VAL_CURVE = Path("plots") / "metrics" / "val" / "top1.tsv"
FLOAT_DIGITS = 4


def summary_columns(params: Params) -> list[str]:
    """The declared columns of the summary table, for the experiments in ``params``."""
    ks = sorted({k for e in params.experiments.values() if isinstance(e, RetrievalExperiment)
                 for k in e.knn.retrieval_ks})
    return ["experiment", "config", *EVAL_COLUMNS, *STATS_COLUMNS, *TRAIN_COLUMNS, *KNN_COLUMNS, *[f"recall_at_{k}" for k in ks]]


def _read_required(path: Path, what: str) -> dict:
    """A JSON file another stage must have written; a clear error naming it when missing."""
    if not path.is_file():
        raise UserError(f"missing {what}: {path} (run `dvc repro` so the stage that writes it runs first)")
    return read_json(path)


def collect_row(params: Params, name: str, eval_dir: Path, train_dir: Path, knn_dir: Path) -> dict[str, Any]:
    """One experiment's row: its eval metrics, plus train (trained) or knn (retrieval) metrics."""
    exp = params.experiments[name]
    evaluated = _read_required(eval_dir / f"{name}.json", f"evaluation metrics of {name!r}")
    row: dict[str, Any] = {"experiment": name, "config": exp.config}
    row.update({col: evaluated.get(col) for col in EVAL_COLUMNS})
    if isinstance(exp, TrainedExperiment):
        trained = _read_required(train_dir / name / "metrics.json", f"training metrics of {name!r}")
        row.update({col: trained.get(col) for col in TRAIN_COLUMNS})
    else:
        knn = _read_required(knn_dir / f"{name}.json", f"k-NN metrics of {name!r}")
        row.update({col: v for col, v in knn.items() if col in KNN_COLUMNS or col.startswith("recall_at_")})
    return row


def build_table(params: Params, eval_dir: Path, train_dir: Path, knn_dir: Path) -> pd.DataFrame:
    """Exactly one row per experiment in params, grouped by configuration (transfer, scratch,
    retrieval; params order within a group), each retrieval experiment's classical classifier (``knn.classical``)
    in its own row after it, with the columns of :func:`summary_columns`."""
    rank = {c: i for i, c in enumerate(CONFIGURATIONS)}
    names = sorted(params.experiments, key=lambda n: rank[params.experiments[n].config])
    rows = [collect_row(params, n, Path(eval_dir), Path(train_dir), Path(knn_dir)) for n in names]
    predictions = {n: stats.read_predictions(Path(eval_dir) / n / stats.PREDICTIONS_CSV) for n in names}
    for name in names:
        classical = (read_json(Path(knn_dir) / f"{name}.json").get("classical")
                     if isinstance(params.experiments[name], RetrievalExperiment) else None)
        if classical:   # knn@ scored knn.classical's classifier on the test images
            row, frame = classical_row(name, classical, predictions[name], Path(knn_dir))
            rows.insert([r["experiment"] for r in rows].index(name) + 1, row)
            predictions[row["experiment"]] = frame
    table = pd.DataFrame(rows).reindex(columns=summary_columns(params))
    add_uncertainty(table, predictions, params.aggregate)
    for col in INTEGER_COLUMNS:
        table[col] = pd.to_numeric(table[col]).round().astype("Int64")
    return table


def classical_row(name: str, classical: str, evaluated: pd.DataFrame, knn_dir: Path) -> tuple[dict, pd.DataFrame]:
    """The row of retrieval experiment ``name``'s classical classifier and its per-image predictions, named by
    the test images of ``name``'s own evaluation (``evaluated``: the same test split, in the same order)."""
    path = knn_dir / name / CLASSICAL_CSV
    if not path.is_file():
        raise UserError(f"missing predictions of {name!r}'s knn.classical {classical}: {path} (rerun knn@{name})")
    frame = stats.read_predictions(path)
    if len(frame) != len(evaluated) or (frame["true"].to_numpy() != evaluated["true"].to_numpy()).any():
        raise UserError(f"{path}: its queries are not the test images evaluate@{name} scored; rerun knn@{name}")
    frame = frame.assign(image=evaluated["image"].to_numpy())
    labels, preds = frame["true"].to_numpy(), frame["predicted"].to_numpy()
    return ({"experiment": f"{name}+{classical}", "config": "retrieval", "top1": float((labels == preds).mean()),
             "f1_macro": stats.macro_f1(labels, preds)}, frame)


def add_uncertainty(table: pd.DataFrame, predictions: dict[str, pd.DataFrame], cfg: AggregateConfig) -> None:
    """Fill :data:`STATS_COLUMNS` of ``table`` (one row per key of ``predictions``) in place."""
    for col in STATS_COLUMNS:
        table[col] = table[col].astype(float) if col in table else float("nan")
    index = {name: i for i, name in enumerate(table["experiment"])}
    for name, frame in predictions.items():
        if cfg.bootstrap > 0:
            ci = stats.bootstrap_ci(frame["true"], frame["predicted"], cfg.bootstrap, cfg.confidence, cfg.seed)
            for metric, interval in ci.items():
                table.loc[index[name], [f"{metric}_ci_low", f"{metric}_ci_high"]] = [interval.low, interval.high]
    best = best_experiment(table)
    if best is None:
        return
    reference = predictions[best["experiment"]]
    for name, frame in predictions.items():
        if name != best["experiment"]:
            a, b = stats.paired(frame, reference, f"{name} vs {best['experiment']}")
            table.loc[index[name], "p_vs_best"] = stats.mcnemar(a, b)


def _p_value(p: Any) -> str:
    """A p-value for reading: 4 decimals, or 2 significant digits below 0.001 (never a bare 0.0000)."""
    if _missing(p):
        return ""
    return f"{p:.4f}" if p >= 1e-3 else f"{p:.1e}"


def comparison_markdown(table: pd.DataFrame, confidence: float) -> str:
    """The uncertainty view of the table: metric [CI], and the paired test against the best experiment."""
    best = best_experiment(table)
    level = f"{100 * confidence:g}%"
    lines = [f"| experiment | top-1 [{level} CI] | macro-F1 [{level} CI] | McNemar p vs best |", "|---|---|---|---|"]
    for _, row in table.iterrows():
        def with_ci(metric: str) -> str:
            value, low, high = row[metric], row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
            if _missing(value):
                return ""
            return f"{value:.4f}" + ("" if _missing(low) else f" [{low:.4f}, {high:.4f}]")
        is_best = best is not None and row["experiment"] == best["experiment"]
        p = "best" if is_best else _p_value(row.get("p_vs_best"))
        lines.append(f"| {row['experiment']} | {with_ci('top1')} | {with_ci('f1_macro')} | {p} |")
    return "\n".join(lines) + "\n"


def read_val_curve(train_dir: Path, name: str) -> pd.DataFrame:
    """dvclive's validation top-1 TSV of a trained experiment: columns ``step``, ``top1``."""
    path = Path(train_dir) / name / VAL_CURVE
    if not path.is_file():
        raise UserError(f"missing validation curve of {name!r}: {path} (written by train@{name} via dvclive)")
    return pd.read_csv(path, sep="\t")[["step", "top1"]]


def best_experiment(table: pd.DataFrame) -> Optional[dict[str, Any]]:
    """The row with the highest test top-1 (first in table order on ties), as {experiment, top1}."""
    top1 = pd.to_numeric(table["top1"], errors="coerce")
    if top1.notna().sum() == 0:
        return None
    i = int(top1.fillna(-math.inf).to_numpy().argmax())   # argmax returns the first maximum
    return {"experiment": table["experiment"].iloc[i], "config": table["config"].iloc[i],
            "top1": float(top1.iloc[i])}


def _missing(value: Any) -> bool:
    """None, NaN or pandas' NA (a cell that does not apply to the row's configuration)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _cell(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.{FLOAT_DIGITS}f}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-markdown table (empty cell = not applicable to that configuration)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in row.tolist()) + " |")
    return "\n".join(lines) + "\n"


def _json_value(value: Any) -> Any:
    """NaN / numpy scalars -> JSON-safe Python values (NaN becomes null)."""
    if _missing(value):
        return None
    return value.item() if hasattr(value, "item") else value


def write_summary(table: pd.DataFrame, out_dir: str | Path, cfg: AggregateConfig | None = None) -> None:
    """``summary.{md,csv,json}`` into ``out_dir`` (replaced atomically)."""
    cfg = cfg or AggregateConfig()
    best = best_experiment(table)
    records = {r["experiment"]: {k: _json_value(v) for k, v in r.items() if k != "experiment"}
               for r in table.to_dict(orient="records")}
    honest = (f"\n## Uncertainty\n\n{100 * cfg.confidence:g}% percentile bootstrap intervals over the test images "
              f"({cfg.bootstrap} resamples, seed {cfg.seed}); exact McNemar test of each experiment against the "
              "best one on the same test images (p < 0.05: the difference is unlikely to be chance).\n\n"
              + comparison_markdown(table, cfg.confidence))
    with atomic_dir(out_dir) as tmp:
        (tmp / "summary.md").write_text("# Stanford Cars benchmark: test metrics\n\n" + to_markdown(table) + honest)
        table.to_csv(tmp / "summary.csv", index=False, float_format=f"%.{2 * FLOAT_DIGITS}g")
        write_json(tmp / "summary.json", {"columns": list(table.columns), "best": best, "experiments": records})


def write_summary_plots(params: Params, table: pd.DataFrame, train_dir: str | Path, plots_dir: str | Path) -> None:
    """Bar chart of top-1 / macro-F1 per experiment and overlaid validation top-1 curves."""
    curves = {n: read_val_curve(Path(train_dir), n) for n in params.trained}
    with atomic_dir(plots_dir) as tmp:
        errors = {col: (table[f"{col}_ci_low"], table[f"{col}_ci_high"]) for col in BAR_COLUMNS
                  if f"{col}_ci_low" in table}
        plots.plot_bars(table.set_index("experiment"), BAR_COLUMNS, tmp / "top1_f1.png",
                        "Test top-1 and macro-F1 per experiment (error bars: bootstrap CI)", errors)
        plots.plot_curves(curves, tmp / "val_top1.png", "validation top-1", "Validation top-1 of the trained experiments")


def build_summary(params: Params, eval_dir: str | Path, train_dir: str | Path, knn_dir: str | Path,
                  out_dir: str | Path, plots_dir: str | Path) -> pd.DataFrame:
    """The aggregate stage's work: read every metrics file, write the summary table and plots (under the
    class-disjoint protocol: :mod:`carbench.report.disjoint`'s)."""
    from . import disjoint

    if disjoint.protocol_of(params, Path(eval_dir)) == disjoint.DISJOINT:
        table = disjoint.build_summary(params, eval_dir, train_dir, out_dir, plots_dir)
    else:
        table = build_table(params, Path(eval_dir), Path(train_dir), Path(knn_dir))
        write_summary_plots(params, table, train_dir, plots_dir)
        write_summary(table, out_dir, params.aggregate)
    anchors.append_to_summary(table["experiment"].tolist(), Path(eval_dir), params.split.strategy,
                              Path(out_dir) / "summary.md")
    return table


def read_best(summary_dir: str | Path) -> Optional[str]:
    """The best experiment recorded by :func:`write_summary`, or None when there is no summary."""
    path = Path(summary_dir) / "summary.json"
    if not path.is_file():
        return None
    best = read_json(path).get("best") or {}
    return best.get("experiment")


def run(params: Params, eval_dir: str | Path, train_dir: str | Path, knn_dir: str | Path, out_dir: str | Path,
        plots_dir: str | Path) -> pd.DataFrame:
    """Stage entry point (stages/aggregate.py): seed, then :func:`build_summary`."""
    configure(params.base.seed, params.base.threads, use_torch=False)  # numpy bootstrap only
    return build_summary(params, eval_dir, train_dir, knn_dir, out_dir, plots_dir)
