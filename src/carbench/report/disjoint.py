"""The summary under the class-disjoint protocol (``split.strategy: disjoint``): leave-one-out retrieval, no top-1.

The aggregate stage (:mod:`carbench.report.aggregate`) hands over here when the evaluations say so (the
``protocol`` of ``metrics/eval/<name>.json``). Every experiment was scored by leave-one-out retrieval among the test
photos (:mod:`carbench.retrieval.loo`): Recall@K, MAP@R and P@1 come from ``metrics/eval/<name>.json``, their
percentile bootstrap intervals over the query photos from ``metrics/eval/<name>/retrieval.csv``
(:func:`carbench.report.stats.bootstrap_mean_ci`, ``aggregate.bootstrap`` / ``confidence`` / ``seed``), and each row's
paired tests against the best row on the same queries (:func:`carbench.report.stats.paired_retrieval`: McNemar on
the Recall@1 hits, Wilcoxon signed-rank on AP@R; columns ``p_r1_vs_best``, ``p_map_vs_best``). Test-set
classification is undefined (the test classes were never trained): one line says so where its numbers would stand.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd

from . import plots, stats
from ..config import CONFIGURATIONS, AggregateConfig, Params, TrainedExperiment
from ..core.errors import UserError
from ..core.io import atomic_dir, read_json, write_json

DISJOINT = "disjoint"
#: The row label of the protocol (the summary's ``protocol`` column).
PROTOCOL_LABEL = "class-disjoint, leave-one-out"
#: The one line that stands where a classification number would (the same text as carbench.retrieval.loo's, which
#: evaluate writes; read from the evaluations so aggregate does not import the retrieval code).
UNDEFINED_KEY = "classification"
#: Per experiment, besides the retrieval scores and their intervals.
OTHER_COLUMNS = ("params_count", "size_mb", "latency_ms", "images_per_second")
BAR_COLUMNS = ("recall_at_1", "map_at_r")
#: Each row against the best one (stats.paired_retrieval): McNemar on Recall@1, Wilcoxon signed-rank on AP@R.
PAIRED_COLUMNS = ("p_r1_vs_best", "p_map_vs_best")
FLOAT_DIGITS = 4


def protocol_of(params: Params, eval_dir: Path) -> str:
    """The protocol the evaluations in ``eval_dir`` followed (``classification`` for files written before it was
    recorded); a UserError when they disagree (a half-rerun pipeline)."""
    found = {}
    for name in params.experiments:
        path = Path(eval_dir) / f"{name}.json"
        if path.is_file():
            found[name] = read_json(path).get("protocol", "classification")
    if len(set(found.values())) > 1:
        raise UserError(f"{eval_dir}: the evaluations follow different protocols ({found}); run `dvc repro` so every "
                        "evaluate@ stage reruns on the current split")
    return next(iter(found.values()), "classification")


def _ks(evaluations: dict[str, dict]) -> list[int]:
    return sorted({int(key.rsplit("_", 1)[1]) for e in evaluations.values() for key in e
                   if key.startswith("recall_at_") and key.rsplit("_", 1)[1].isdigit()})


def table_columns(ks: list[int]) -> list[str]:
    """The summary's columns: each score followed by its interval, then P@1 and the cost columns."""
    scored = [f"recall_at_{k}" for k in ks] + ["map_at_r"]
    return ["experiment", "config", "protocol", *[c for s in scored for c in (s, f"{s}_ci_low", f"{s}_ci_high")],
            "precision_at_1", *PAIRED_COLUMNS, *OTHER_COLUMNS, "best_val_top1", "k"]


def _read(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"missing {what}: {path} (run `dvc repro` so the stage that writes it runs first)")
    return read_json(path)


def build_table(params: Params, eval_dir: Path, train_dir: Path, cfg: AggregateConfig) -> tuple[pd.DataFrame, str]:
    """One row per experiment (grouped by configuration as the classification summary), and the undefined line.
    The paired tests against the best row are in :func:`paired_tests`."""
    rank = {c: i for i, c in enumerate(CONFIGURATIONS)}
    names = sorted(params.experiments, key=lambda n: rank[params.experiments[n].config])
    evaluations = {n: _read(Path(eval_dir) / f"{n}.json", f"evaluation metrics of {n!r}") for n in names}
    ks = _ks(evaluations)
    rows, per_query = [], {}
    for name in names:
        exp, evaluated = params.experiments[name], evaluations[name]
        row: dict[str, Any] = {"experiment": name, "config": exp.config, "protocol": PROTOCOL_LABEL}
        row.update({key: evaluated.get(key) for key in [f"recall_at_{k}" for k in ks] + ["map_at_r", "precision_at_1",
                                                                                          *OTHER_COLUMNS]})
        scores = stats.read_retrieval(Path(eval_dir) / name / stats.RETRIEVAL_CSV)
        per_query[name] = scores
        columns = {c: s for c, s in [(f"recall_at_{k}", f"recall_at_{k}") for k in ks] + [("map_at_r", "ap_at_r")]
                   if s in scores.columns}
        intervals = stats.bootstrap_mean_ci(scores[list(columns.values())], cfg.bootstrap, cfg.confidence, cfg.seed)
        for col, source in columns.items():
            row[f"{col}_ci_low"], row[f"{col}_ci_high"] = intervals[source].low, intervals[source].high
        if isinstance(exp, TrainedExperiment):
            row["best_val_top1"] = _read(Path(train_dir) / name / "metrics.json",
                                         f"training metrics of {name!r}").get("best_val_top1")
        else:
            row["k"] = exp.knn.k
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=table_columns(ks))
    tests = paired_tests(table, per_query)
    table.attrs["paired"] = tests    # the details for the summary's paired-tests section
    for result in tests.values():
        i = table.index[table["experiment"] == result["experiment"]][0]
        table.loc[i, "p_r1_vs_best"], table.loc[i, "p_map_vs_best"] = result["p_r1"], result["p_map"]
    for col in ("params_count", "k"):
        table[col] = pd.to_numeric(table[col]).round().astype("Int64")
    undefined = next((e[UNDEFINED_KEY] for e in evaluations.values() if e.get(UNDEFINED_KEY)), "")
    return table, undefined


def best_experiment(table: pd.DataFrame) -> Optional[dict[str, Any]]:
    """The row with the highest leave-one-out Recall@1 (first in table order on ties)."""
    r1 = pd.to_numeric(table["recall_at_1"], errors="coerce")
    if r1.notna().sum() == 0:
        return None
    i = int(r1.fillna(-1.0).to_numpy().argmax())
    return {"experiment": table["experiment"].iloc[i], "config": table["config"].iloc[i],
            "recall_at_1": float(r1.iloc[i])}


def paired_tests(table: pd.DataFrame, per_query: dict[str, pd.DataFrame]) -> dict[str, dict[str, Any]]:
    """Per experiment other than the best (:func:`best_experiment`): its paired tests against the best row on the
    same query photos (:func:`carbench.report.stats.paired_retrieval`, the experiment as A, the best as B)."""
    best = best_experiment(table)
    if best is None:
        return {}
    out = {}
    for name in table["experiment"]:
        if name == best["experiment"]:
            continue
        test = stats.paired_retrieval(per_query[name], per_query[best["experiment"]], f"{name} vs {best['experiment']}")
        out[name] = {"experiment": name, "best": best["experiment"], "test": test, "p_r1": test.p_recall_at_1,
                     "p_map": test.p_map_at_r}
    return out


def paired_markdown(tests: dict[str, dict[str, Any]]) -> str:
    """The paired-tests section: each experiment against the best row on the same query photos."""
    if not tests:
        return ""
    best = next(iter(tests.values()))["best"]
    lines = [f"## Paired tests against the best row ({best})\n",
             "Same query photos. Recall@1: exact McNemar test on the queries where exactly one of the two finds a "
             "same-class photo first. MAP@R: Wilcoxon signed-rank test on the per-query AP@R (zero differences "
             "dropped).\n",
             "| experiment | R@1: only it / only best | McNemar p | mean AP@R difference (it - best) | Wilcoxon W "
             "| Wilcoxon p |", "|---|---|---|---|---|---|"]
    for name, result in tests.items():
        t = result["test"]
        lines.append(f"| {name} | {t.only_a} / {t.only_b} | {t.p_recall_at_1:.3g} | {t.ap_mean_diff:+.4f} | "
                     f"{t.wilcoxon_statistic:.1f} | {t.p_map_at_r:.3g} |")
    return "\n".join(lines) + "\n"


def _with_ci(row: pd.Series, metric: str) -> str:
    value, low, high = row.get(metric), row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if pd.isna(value):
        return ""
    return f"{value:.4f}" + ("" if pd.isna(low) else f" [{low:.4f}, {high:.4f}]")


def scores_markdown(table: pd.DataFrame, confidence: float) -> str:
    """Recall@K and MAP@R with their intervals, and P@1: the protocol's numbers, a row per experiment."""
    scored = [c for c in table.columns if c.startswith("recall_at_") and not c.endswith(("_ci_low", "_ci_high"))]
    scored.append("map_at_r")
    level = f"{100 * confidence:g}%"
    heads = [f"R@{c.rsplit('_', 1)[1]}" if c.startswith("recall_at_") else "MAP@R" for c in scored]
    lines = ["| experiment | config | " + " | ".join(f"{h} [{level} CI]" for h in heads) + " | P@1 |",
             "|" + "---|" * (len(scored) + 3)]
    for _, row in table.iterrows():
        p1 = "" if pd.isna(row.get("precision_at_1")) else f"{row['precision_at_1']:.4f}"
        lines.append(f"| {row['experiment']} | {row['config']} | " + " | ".join(_with_ci(row, c) for c in scored)
                     + f" | {p1} |")
    return "\n".join(lines) + "\n"


def summary_markdown(table: pd.DataFrame, undefined: str, cfg: AggregateConfig) -> str:
    """The text of summary.md under this protocol."""
    from .aggregate import to_markdown

    return ("# Stanford Cars benchmark: class-disjoint retrieval (leave-one-out)\n\n"
            f"Classification: {undefined}.\n\n"
            "Every test photo is a query against all the other test photos (docs/retrieval_eval.md). Recall@K: a "
            "photo of the query's class among its K nearest; MAP@R: Musgrave et al. (2020), R = the other photos of "
            "its class; P@1 equals Recall@1 by definition. Retrieval experiments are scored in their k-NN space, "
            "trained ones on their L2-normalised backbone features.\n\n"
            + scores_markdown(table, cfg.confidence)
            + f"\n{100 * cfg.confidence:g}% percentile bootstrap intervals over the query photos ({cfg.bootstrap} "
              f"resamples, seed {cfg.seed}).\n\n" + paired_markdown(table.attrs.get("paired", {}))
            + "\n## All columns\n\n" + to_markdown(table))


def write_summary(table: pd.DataFrame, undefined: str, out_dir: str | Path, cfg: AggregateConfig) -> None:
    """``summary.{md,csv,json}`` into ``out_dir`` (replaced atomically)."""
    from .aggregate import _json_value

    records = {r["experiment"]: {k: _json_value(v) for k, v in r.items() if k != "experiment"}
               for r in table.to_dict(orient="records")}
    with atomic_dir(out_dir) as tmp:
        (tmp / "summary.md").write_text(summary_markdown(table, undefined, cfg))
        table.to_csv(tmp / "summary.csv", index=False, float_format=f"%.{2 * FLOAT_DIGITS}g")
        write_json(tmp / "summary.json", {"columns": list(table.columns), "protocol": DISJOINT,
                                          "classification": undefined, "best": best_experiment(table),
                                          "experiments": records})


def write_plots(params: Params, table: pd.DataFrame, train_dir: str | Path, plots_dir: str | Path) -> None:
    """Bar chart of leave-one-out Recall@1 / MAP@R with their intervals, and the validation curves."""
    from .aggregate import read_val_curve

    curves = {n: read_val_curve(Path(train_dir), n) for n in params.trained}
    with atomic_dir(plots_dir) as tmp:
        errors = {col: (table[f"{col}_ci_low"], table[f"{col}_ci_high"]) for col in BAR_COLUMNS}
        plots.plot_bars(table.set_index("experiment"), BAR_COLUMNS, tmp / "recall1_map.png",
                        "Leave-one-out Recall@1 and MAP@R on the unseen test classes (error bars: bootstrap CI)",
                        errors)
        plots.plot_curves(curves, tmp / "val_top1.png", "validation top-1",
                          "Validation top-1 of the trained experiments (train-half classes)")


def build_summary(params: Params, eval_dir: str | Path, train_dir: str | Path, out_dir: str | Path,
                  plots_dir: str | Path) -> pd.DataFrame:
    """The aggregate stage's work under this protocol: the table, summary files and plots."""
    table, undefined = build_table(params, Path(eval_dir), Path(train_dir), params.aggregate)
    write_plots(params, table, train_dir, plots_dir)
    write_summary(table, undefined, out_dir, params.aggregate)
    return table
