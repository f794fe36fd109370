"""scripts/review_report.py: the report's drill-down commands show what the report itself leaves out."""
from __future__ import annotations

from support.scripts import fake_dvc, run_script

#: What `dvc metrics diff --md` prints when two experiments moved (the fake dvc prints it for both diffs).
DIFF = """| Path                                              | Metric   | base   | new    | Change  |
|---------------------------------------------------|----------|--------|--------|---------|
| metrics/headline/tl_densenet121_progressive.json  | top1     | 0.75   | 0.2431 | -0.5069 |
| metrics/headline/knn_densenet121_cosine.json      | top1     | 0.8194 | 0.8542 | 0.0348  |
"""


def _footer(report: str) -> str:
    return report[report.index("Drill down:"):]


def test_drill_down_names_commands_that_add_to_the_report_not_the_same_table(tmp_path):
    result = run_script("review_report.py", "base", "new", env=fake_dvc(tmp_path, stdout=DIFF))
    assert result.returncode == 0, result.stderr
    footer = _footer(result.stdout)
    # every experiment, the unchanged ones too; every metric of the first experiment that changed; the plots
    assert "`python scripts/runs.py base new`" in footer
    assert "`dvc metrics diff base new --targets metrics/eval/tl_densenet121_progressive.json`" in footer
    assert "`dvc plots diff base new`" in footer
    # `dvc metrics diff base new` alone prints the report's own table again
    assert "`dvc metrics diff base new`" not in footer
    assert max(len(line) for line in result.stdout.splitlines()) <= 120


def test_with_no_changed_metric_the_drill_down_leaves_the_experiment_to_fill_in(tmp_path):
    result = run_script("review_report.py", "base", "new", env=fake_dvc(tmp_path, stdout=""))
    assert result.returncode == 0, result.stderr
    assert "No headline metric changed." in result.stdout
    assert "--targets metrics/eval/<experiment>.json" in _footer(result.stdout)
