"""The example outputs README.md and docs/ print agree with one another: they come from one run of the README's two
demo commands (`tests/e2e/test_pipeline.py` checks them against what the commands print: rows, order, columns)."""
from __future__ import annotations

from support.docs import cells, md_table, printed
from support.params import ROOT

BASE, NEW = "base", "lr3e-4"
METRICS_DIFF = f"dvc metrics diff {BASE} {NEW}"
RUNS = f"python scripts/runs.py {BASE} {NEW}"
METRICS_SHOW = "dvc metrics show"


def _headline(path: str) -> str:
    return path.removeprefix("metrics/headline/").removesuffix(".json")


def _runs_columns() -> dict[str, tuple[float, float]]:
    """README's `scripts/runs.py` block: experiment -> (top-1 of BASE, of NEW)."""
    lines = printed("README.md")[RUNS]
    start = lines.index("test top1") + 1
    return {row[0]: (float(row[1]), float(row[2])) for row in map(cells, lines[start:])}


def test_readme_blocks_are_one_run_of_the_two_commands():
    """`dvc metrics diff`, `scripts/runs.py` and `dvc metrics show` (the workspace: the last run) print the same
    numbers for the same experiments."""
    blocks = printed("README.md")
    runs = _runs_columns()
    diff = [cells(line) for line in blocks[METRICS_DIFF][1:]]
    assert diff, "README shows no `dvc metrics diff` rows"
    for path, metric, old, new, change in diff:
        if metric == "top1":
            assert (float(old), float(new)) == runs[_headline(path)], path
        assert round(float(new) - float(old), 4) == float(change), path
    moved = {_headline(row[0]) for row in diff}
    assert moved == {name for name, (old, new) in runs.items() if old != new}
    shown = {_headline(row[0]): row for row in map(cells, blocks[METRICS_SHOW][1:])}
    assert list(shown) == list(runs)
    header = cells(blocks[METRICS_SHOW][0])
    for name, (_, new) in runs.items():
        assert float(shown[name][header.index("top1")]) == new, name
    for path, metric, _, new, _ in diff:
        assert float(shown[_headline(path)][header.index(metric)]) == float(new), (path, metric)


def test_results_and_review_demo_tables_are_the_readme_base_run():
    """docs/results.md's demo table and docs/review.md's interval table are the summary of README's `base` run."""
    runs = _runs_columns()
    results = md_table((ROOT / "docs" / "results.md").read_text(), "## The offline demo")
    column = results[0].index("top1")
    assert {row[0]: float(row[column]) for row in results[1:]} == {n: old for n, (old, _) in runs.items()}
    review = md_table((ROOT / "docs" / "review.md").read_text(), "An example: the table that")
    assert review[0][:2] == ["experiment", "top-1 [95% CI]"]
    assert {row[0]: float(row[1].split()[0]) for row in review[1:]} == {n: old for n, (old, _) in runs.items()}
