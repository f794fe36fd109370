"""End to end: the real `dvc repro` / `dvc exp run` of the whole DAG on synthetic data, offline.

One tiny project is built and reproduced once per module; the tests then ask DVC about it.
Order matters only in that tests restore params.yaml (git checkout) after changing it.
"""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.project import (
    deterministic_metrics,
    env,
    make_project,
    merge,
    ran_stages,
    run,
    status_stages,
    strip_timings,
    tiny_overrides,
    tiny_params,
)

pytestmark = pytest.mark.e2e

TRAINED = ["tl_resnet50_frozen", "tl_resnet50_finetune", "tl_densenet121_progressive",
           "cnn_basic", "cnn_bn_dropout", "cnn_residual"]
RETRIEVAL = ["knn_resnet50_k3", "knn_resnet50_k10", "knn_densenet121_cosine"]
ALL = TRAINED + RETRIEVAL
NUM_CLASSES = 6
#: The trained experiment that takes `train.lr` from the section (the others set their own lr).
TAKE_SECTION_LR = ["tl_densenet121_progressive"]
#: The retrieval experiment it embeds for (dag.retrieval).
EMBEDDED_BY_IT = ["knn_densenet121_cosine"]
#: What `-S train.lr=...` must rerun: resolve, that experiment, the retrieval experiment it embeds for, their
#: evaluations, aggregate. Nothing else.
LR_RERUN = ({"resolve", "aggregate"} | {f"train@{n}" for n in TAKE_SECTION_LR}
            | {f"{stage}@{n}" for n in EMBEDDED_BY_IT for stage in ("embed", "knn")}
            | {f"evaluate@{n}" for n in TAKE_SECTION_LR + EMBEDDED_BY_IT})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A reproduced tiny project: (path, environment, output of the first `dvc repro`)."""
    root = tmp_path_factory.mktemp("e2e")
    environ = env(root / "torch_home")
    path = make_project(root / "project", tiny_params())
    result = run(["dvc", "repro"], path, environ)
    # Commit the baseline run, so `dvc metrics diff` later compares against it.
    run(["git", "add", "-A"], path, environ)
    run(["git", "commit", "-qm", "baseline run"], path, environ)
    return path, environ, result.stdout


@pytest.fixture(scope="module")
def baseline(project):
    """Deterministic metrics of the first run, taken before any test changes the project."""
    return deterministic_metrics(project[0])


def _restore(path: Path, environ: dict) -> None:
    run(["git", "checkout", "--", "params.yaml"], path, environ)


def test_repro_runs_every_stage_of_the_dag(project):
    path, _, output = project
    expected = {"download", "split", "crop", "resolve", "aggregate"}
    expected |= {f"train@{n}" for n in TRAINED} | {f"evaluate@{n}" for n in ALL}
    expected |= {f"embed@{n}" for n in RETRIEVAL} | {f"knn@{n}" for n in RETRIEVAL}
    assert ran_stages(output) == expected


def test_crop_store_and_data_metrics(project):
    path, _, _ = project
    meta = json.loads((path / "data/crops/meta.json").read_text())
    assert meta["num_classes"] == NUM_CLASSES and meta["size"] == 40
    split = json.loads((path / "metrics/split.json").read_text())
    assert split  # counts per split were written
    assert (path / "plots/class_distribution.png").stat().st_size > 0
    assert (path / "plots/crops_preview.png").stat().st_size > 0


def test_scratch_cnns_learn_far_above_chance(project):
    path, _, _ = project
    chance = 1.0 / NUM_CLASSES
    for name in ["cnn_basic", "cnn_bn_dropout", "cnn_residual"]:
        metrics = json.loads((path / f"metrics/train/{name}/metrics.json").read_text())
        assert metrics["best_val_top1"] >= 2.5 * chance, (name, metrics["best_val_top1"])


def test_aggregate_has_nine_rows_and_metrics_show_lists_the_headline(project):
    path, environ, _ = project
    with open(path / "metrics/summary/summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["experiment"] for r in rows) == sorted(ALL)
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], path, environ).stdout)
    (workspace,) = shown.values()   # DVC 3 keys the workspace as ""
    assert set(workspace["data"]) == {f"metrics/headline/{n}.json" for n in ALL}
    for entry in workspace["data"].values():
        assert set(entry["data"]) == {"top1", "f1_macro"}
    table = run(["dvc", "metrics", "show"], path, {**environ, "COLUMNS": "120"}).stdout
    assert max(len(line) for line in table.splitlines()) <= 120, table


def test_plots_show_renders_one_html_page(project):
    path, environ, _ = project
    run(["dvc", "plots", "show", "-o", "dvc_plots"], path, environ)
    html = (path / "dvc_plots/index.html").read_text()
    for name in TRAINED:
        assert f"plots/curves/top1/{name}.tsv" in html
    assert "Confusion matrix (cnn_basic)" in html   # the confusion template's title from dvc.yaml
    assert "plots/summary/top1_f1.png" in html and "plots/summary/val_top1.png" in html   # summary charts
    assert "Test top-1 per experiment" in html       # DVC's own bar chart of metrics/summary/summary.csv


def test_killed_training_resumes_to_the_same_result(project, baseline, tmp_path):
    """SIGKILL `train@cnn_bn_dropout` after its first epoch, run it again: same weights, same metrics."""
    path, environ, _ = project
    name = "cnn_bn_dropout"
    cmd = [sys.executable, "stages/train.py", "--params", "params.yaml", "--name", name, "--crops", "data/crops",
           "--out", str(tmp_path / "models" / name), "--live", str(tmp_path / "live" / name),
           "--curves", str(tmp_path / "curves"), "--resume-dir", ".cache/resume"]
    resume_file = path / ".cache" / "resume" / f"{name}.pt"
    proc = subprocess.Popen(cmd, cwd=path, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not resume_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be interrupted: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "models" / name).exists(), "a killed run left a half-written model directory"
    assert resume_file.exists()
    resumed = run(cmd, path, environ)
    assert "resum" in (resumed.stdout + resumed.stderr).lower()
    assert not resume_file.exists(), "the resume state outlived a finished run"
    import torch

    reference = torch.load(path / "models" / name / "best.pt", weights_only=True, map_location="cpu")
    got = torch.load(tmp_path / "models" / name / "best.pt", weights_only=True, map_location="cpu")
    assert reference["epoch"] == got["epoch"]
    for key, tensor in reference["state_dict"].items():
        assert torch.equal(tensor, got["state_dict"][key]), key
    metrics = strip_timings(json.loads((tmp_path / "live" / name / "metrics.json").read_text()))
    assert metrics == baseline[f"metrics/train/{name}/metrics.json"]


def test_second_repro_does_nothing(project):
    path, environ, _ = project
    assert status_stages(path, environ) == set()
    assert ran_stages(run(["dvc", "repro"], path, environ).stdout) == set()


def test_evaluate_knob_reruns_no_training(project):
    path, environ, _ = project
    params = yaml.safe_load((path / "params.yaml").read_text())
    (path / "params.yaml").write_text(yaml.safe_dump(merge(params, {"evaluate": {"tta": True}}), sort_keys=False))
    try:
        assert status_stages(path, environ) == {f"evaluate@{n}" for n in ALL}
    finally:
        _restore(path, environ)


def test_aggregate_knob_reruns_only_aggregate(project):
    path, environ, _ = project
    _write_params(path, {"aggregate": {"bootstrap": 200, "confidence": 0.9}})
    try:
        assert status_stages(path, environ) == {"aggregate"}
        summary = json.loads((path / "metrics" / "summary" / "summary.json").read_text())["experiments"]
        for name in ALL:      # every experiment has its interval and (but for the best) its paired test
            assert summary[name]["top1_ci_low"] <= summary[name]["top1"] <= summary[name]["top1_ci_high"]
        assert sum(summary[n]["p_vs_best"] is None for n in ALL) == 1
    finally:
        _restore(path, environ)


def _write_params(path: Path, over: dict) -> None:
    params = yaml.safe_load((path / "params.yaml").read_text())
    (path / "params.yaml").write_text(yaml.safe_dump(merge(params, over), sort_keys=False))


def test_one_experiment_key_reruns_only_that_experiment(project):
    path, environ, _ = project
    _write_params(path, {"experiments": {"cnn_basic": {"train": {"epochs": 3}}, "knn_resnet50_k3": {"knn": {"k": 2}}}})
    try:
        # params reach train@/knn@ through their resolved config files: first resolve, then exactly those two
        assert status_stages(path, environ) == {"resolve"}
        run(["dvc", "repro", "resolve"], path, environ)
        assert status_stages(path, environ) == {"train@cnn_basic", "knn@knn_resnet50_k3"}
        ran = ran_stages(run(["dvc", "repro"], path, environ).stdout)
        assert ran == {"train@cnn_basic", "evaluate@cnn_basic", "knn@knn_resnet50_k3",
                       "evaluate@knn_resnet50_k3", "aggregate"}
    finally:
        _restore(path, environ)
        run(["dvc", "repro"], path, environ)


def test_code_change_marks_the_stages_that_import_it(project):
    """dvc.yaml deps follow the imports (tests/test_dvc_yaml.py): a change to report/plots.py reaches aggregate."""
    path, environ, _ = project
    plots = path / "src" / "carbench" / "report" / "plots.py"
    original = plots.read_bytes()
    plots.write_bytes(original + b"\n# a change\n")
    try:
        changed = status_stages(path, environ)
        assert "aggregate" in changed
        assert {f"evaluate@{n}" for n in ALL} <= changed
        assert not any(s.startswith(("train@", "knn@")) or s == "resolve" for s in changed), changed
    finally:
        plots.write_bytes(original)
    assert status_stages(path, environ) == set()


def test_lr_knob_marks_only_the_experiments_that_take_it(project):
    """`dvc status` after `train.lr` changes: resolve, then only the train@ stage without its own lr.
    (The `dvc exp run -S train.lr=...` itself runs in the demo test below: exactly LR_RERUN reruns.)"""
    path, environ, _ = project
    _write_params(path, {"train": {"lr": 0.02}})
    try:
        assert status_stages(path, environ) == {"resolve"}
        run(["dvc", "repro", "resolve"], path, environ)
        assert status_stages(path, environ) == {f"train@{n}" for n in TAKE_SECTION_LR}
    finally:
        _restore(path, environ)
        run(["dvc", "repro", "resolve"], path, environ)
    assert status_stages(path, environ) == set()


# ----------------------------------------------------------------------------- the offline demo
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's flow in a clone with the committed params.yaml: `python scripts/offline.py -n base` with the
    offline overrides made tiny. Returns (path, environment, overrides file, params.yaml bytes, output)."""
    root = tmp_path_factory.mktemp("demo")
    environ = env(root / "torch_home")
    path = make_project(root / "project", None)
    overrides = root / "tiny.yaml"
    overrides.write_text(yaml.safe_dump(tiny_overrides(), sort_keys=False))
    before = (path / "params.yaml").read_bytes()
    result = run([sys.executable, "scripts/offline.py", "--overrides", str(overrides), "-n", "base"], path, environ)
    return path, environ, overrides, before, result.stdout


def test_demo_runs_everything_and_leaves_tracked_files_as_found(demo):
    path, environ, _, before, output = demo
    assert "download" in ran_stages(output) and "aggregate" in ran_stages(output)
    assert (path / "params.yaml").read_bytes() == before
    assert run(["git", "diff", "--stat"], path, environ).stdout == ""
    assert len(list((path / "metrics" / "headline").glob("*.json"))) == len(ALL)


def test_demo_in_a_fresh_copy_gives_the_same_metrics_as_the_same_params(demo, baseline):
    """Same effective params and seed (params.yaml + overrides vs. the merged file), another clone: same numbers."""
    again = deterministic_metrics(demo[0])
    assert again.keys() == baseline.keys()
    for key in baseline:
        assert again[key] == baseline[key], key


def test_demo_knob_reruns_only_what_it_changes_and_the_review_report_shows_it(demo):
    path, environ, overrides, before, _ = demo
    metrics_before = deterministic_metrics(path)
    cmd = [sys.executable, "scripts/offline.py", "--overrides", str(overrides), "-n", "lr", "-S", "train.lr=0.02"]
    assert ran_stages(run(cmd, path, environ).stdout) == LR_RERUN
    assert (path / "params.yaml").read_bytes() == before
    metrics_after = deterministic_metrics(path)
    for name in TRAINED:
        key = f"metrics/train/{name}/metrics.json"
        if name in TAKE_SECTION_LR:
            assert metrics_after[key] != metrics_before[key], f"{name} ignored train.lr"
        else:
            assert metrics_after[key] == metrics_before[key], name
    report = run([sys.executable, "scripts/review_report.py", "base", "lr"], path, environ).stdout
    assert max(len(line) for line in report.splitlines()) <= 120, report
    assert "| params.yaml | train.lr | 0.01 " in report and "0.02" in report
    metrics_table = report.split("Headline test metrics")[1].split("Params that changed")[0]
    rows = [line.split("|")[1].strip() for line in metrics_table.splitlines() if line.startswith("| ")]
    changed = {Path(row).stem for row in rows[1:] if row.startswith("metrics/headline/")}   # rows[0]: header
    assert changed and changed <= set(TAKE_SECTION_LR + EMBEDDED_BY_IT), report


def test_failed_demo_run_restores_params_yaml(demo):
    path, environ, overrides, before, _ = demo
    cmd = [sys.executable, "scripts/offline.py", "--overrides", str(overrides), "-S", "++train.lrr=1"]
    result = run(cmd, path, environ, check=False)
    assert result.returncode != 0
    assert "unknown key train.lrr" in result.stdout + result.stderr
    assert (path / "params.yaml").read_bytes() == before
