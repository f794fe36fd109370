"""End to end: the real `dvc repro` / `dvc exp run` of the whole DAG on synthetic data, offline.

One tiny project is built and reproduced once per module; the tests then ask DVC about it.
Order matters only in that tests restore params.yaml (git checkout) after changing it.
"""
from __future__ import annotations

import csv
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.docs import md_table, printed, table
from support.params import ROOT
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
from support.scripts import load_script

pytestmark = pytest.mark.e2e

TRAINED = ["tl_resnet50_frozen", "tl_resnet50_finetune", "tl_densenet121_progressive",
           "cnn_basic", "cnn_bn_dropout", "cnn_residual"]
RETRIEVAL = ["knn_resnet50_k3", "knn_resnet50_k10", "knn_densenet121_cosine"]
#: The untrained-ImageNet baseline (dag.pretrained): embed_pretrained@ and knn_pretrained@, no train@.
PRETRAINED = ["knn_imagenet_baseline"]
ALL = TRAINED + RETRIEVAL + PRETRAINED
NUM_CLASSES = 6
#: The trained experiment that takes `train.lr` from the section (the others set their own lr).
TAKE_SECTION_LR = ["tl_densenet121_progressive"]
#: The retrieval experiment it embeds for (dag.retrieval).
EMBEDDED_BY_IT = ["knn_densenet121_cosine"]
#: At most this many columns in README's `dvc exp show` call after its two runs (readable in a terminal).
EXP_SHOW_COLUMNS = 4
#: README's `dvc exp show` call (a command line of its own in an indented block).
EXP_SHOW_CALL = re.compile(r"^    (?:\$ )?(dvc exp show .+)$", re.M)
#: README's sentence naming the files a user commits after a run.
COMMIT_LINE = re.compile(r"What a user commits after a run(.+?)DVC keeps", re.S)
#: The README's knob run on the demo (`python scripts/offline.py -n lr3e-4 -S train.lr=3e-4`).
KNOB_RUN, KNOB = "lr3e-4", "train.lr=3e-4"
#: What `-S train.lr=...` must rerun: resolve, that experiment, the retrieval experiment it embeds for, their
#: evaluations, aggregate. Nothing else.
LR_RERUN = ({"resolve", "aggregate"} | {f"train@{n}" for n in TAKE_SECTION_LR}
            | {f"{stage}@{n}" for n in EMBEDDED_BY_IT for stage in ("embed", "knn")}
            | {f"{stage}@{n}" for n in TAKE_SECTION_LR + EMBEDDED_BY_IT for stage in ("evaluate", "export")}
            | {"cards"})


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
    expected |= {f"{stage}_pretrained@{n}" for n in PRETRAINED for stage in ("embed", "knn")}
    expected |= {f"export@{n}" for n in ALL} | {"cards"}
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


def test_aggregate_has_a_row_per_experiment_and_metrics_show_lists_the_headline(project):
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
        # cards print the interval level (aggregate.confidence); nothing before aggregate reruns
        assert status_stages(path, environ) == {"aggregate", "cards"}
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
        # params reach train@/knn@ through their resolved config files: first resolve, then exactly those two (and
        # the model cards, which print each recipe from those files)
        assert status_stages(path, environ) == {"resolve"}
        run(["dvc", "repro", "resolve"], path, environ)
        assert status_stages(path, environ) == {"train@cnn_basic", "knn@knn_resnet50_k3", "cards"}
        ran = ran_stages(run(["dvc", "repro"], path, environ).stdout)
        assert ran == {"train@cnn_basic", "evaluate@cnn_basic", "export@cnn_basic", "knn@knn_resnet50_k3",
                       "evaluate@knn_resnet50_k3", "export@knn_resnet50_k3", "aggregate", "cards"}
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
        assert status_stages(path, environ) == {f"train@{n}" for n in TAKE_SECTION_LR} | {"cards"}   # the recipe
    finally:
        _restore(path, environ)
        run(["dvc", "repro", "resolve"], path, environ)
    assert status_stages(path, environ) == set()


@pytest.mark.parametrize("module, changed", [
    ("src/carbench/train/augment.py", {f"train@{name}" for name in TRAINED}),     # mixup: only what trains
    ("src/carbench/download/layouts.py", {"download"}),       # a download-only reader: what follows waits for data/raw
])
def test_a_code_edit_marks_only_the_stages_that_import_it(project, module, changed):
    """dvc.yaml's folder deps, as `dvc status` reads them after a run (Python's caches beside the code included)."""
    path, environ, _ = project
    original = (path / module).read_bytes()
    try:
        (path / module).write_bytes(original + b"# an edit\n")
        assert status_stages(path, environ) == changed
    finally:
        (path / module).write_bytes(original)
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


def test_the_demo_command_runs_twice_in_a_row_and_echoes_one_short_line(demo):
    """The README's command again: the experiment of that name is replaced (DVC alone refuses the name), and
    nothing reruns; the echo is the user's arguments and a count, not the ~2,000 characters of overrides."""
    path, environ, overrides, _, output = demo
    count = len(load_script("offline").flatten(yaml.safe_load(overrides.read_text())))
    assert output.splitlines()[0] == f"+ dvc exp run -n base (with {count} overrides from {overrides})"
    again = run([sys.executable, "scripts/offline.py", "--overrides", str(overrides), "-n", "base"], path, environ)
    assert "(experiment 'base' exists on this commit: this run replaces it)" in again.stdout.splitlines()
    assert ran_stages(again.stdout) == set()
    assert run(["dvc", "exp", "list", "--name-only"], path, environ).stdout.split().count("base") == 1


def test_demo_models_leave_as_checked_exports_cards_and_artifacts(demo, tmp_path):
    """Every model: ONNX and TorchScript that match PyTorch on the test crops, a card the stage regenerates byte
    for byte, a DVC artifact that `dvc artifacts get` fetches here and, from the DVC remote, in a fresh clone."""
    path, environ, _, _, _ = demo
    for name in ALL:
        parity = json.loads((path / "metrics" / "export" / f"{name}.json").read_text())
        for runtime in ("onnx", "torchscript"):
            assert parity[runtime]["top1_agreement"] == 1.0 and parity[runtime]["max_abs_diff"] <= 1e-3, name
        assert (path / "exports" / name / "model.onnx").is_file() and (path / "exports" / name / "model.ts").is_file()
    regenerated = tmp_path / "cards"
    run([sys.executable, "stages/cards.py", "--params", "params.yaml", "--data", "metrics/data.json", "--resolved",
         "data/resolved", "--summary", "metrics/summary", "--eval", "metrics/eval", "--exports", "exports",
         "--export-metrics", "metrics/export", "--out", str(regenerated)], path, environ)
    assert sorted(p.name for p in regenerated.iterdir()) == sorted(f"{n}.md" for n in ALL)
    for card in regenerated.iterdir():
        assert card.read_text() == (path / "cards" / card.name).read_text(), card.name
    assert "**Stand-in**: `tl_resnet50_frozen` is named after `resnet50`, but this recipe ran `mobilenet_v2`" in \
        (path / "cards" / "tl_resnet50_frozen.md").read_text()

    run([sys.executable, "scripts/artifacts.py", "register", "base"], path, environ)
    listing = run([sys.executable, "scripts/artifacts.py", "list"], path, environ).stdout.splitlines()
    assert sorted(line.split()[0] for line in listing) == sorted(ALL)
    assert all("v0.0.1" in line and "top1" in line for line in listing), listing
    frozen = next(line for line in listing if line.startswith("tl_resnet50_frozen"))
    assert "transfer,mobilenet_v2,protocol-official" in frozen   # the labels of the version: the stand-in ran
    run(["dvc", "artifacts", "get", ".", "cnn_basic", "-o", str(tmp_path / "got")], path, environ)
    assert (tmp_path / "got" / "model.onnx").read_bytes() == (path / "exports/cnn_basic/model.onnx").read_bytes()

    remote, clone = tmp_path / "remote", tmp_path / "clone"
    # A remote of this test's own: the demo's default remote stays as committed for the other tests.
    run(["dvc", "remote", "add", "--local", "artifacts_test", str(remote)], path, environ)
    run(["dvc", "push", "-r", "artifacts_test", "--all-tags"], path, environ)   # the registered versions' files
    run(["git", "clone", "-q", str(path), str(clone)], tmp_path, environ)
    run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], clone, environ)
    run(["dvc", "artifacts", "get", ".", "knn_resnet50_k3", "-o", str(tmp_path / "fetched")], clone, environ)
    fetched = tmp_path / "fetched"
    assert {"model.onnx", "model.ts", "contract.json", "knn.npz", "knn.json"} <= {p.name for p in fetched.iterdir()}

    # the fetched folder predicts on its own, as the pipeline's model does, from the contract it carries
    from PIL import Image

    import numpy as np

    Image.fromarray(np.load(path / "data" / "crops" / "test.npy", mmap_mode="r")[0]).save(tmp_path / "car.png")
    predict = [sys.executable, "-m", "carbench.predict.predict", str(tmp_path / "car.png")]
    mine = run([*predict, "--model", str(fetched / "model.onnx")], path, environ).stdout
    theirs = run([*predict, "--experiment", "knn_resnet50_k3"], path, environ).stdout
    ranked = [line.split("  (")[0] for line in mine.splitlines()]   # rank, vote share, class (not the distances)
    assert len(ranked) == 5 and ranked == [line.split("  (")[0] for line in theirs.splitlines()]


@pytest.fixture(scope="module")
def knob(demo):
    """The README's second run on the demo: `python scripts/offline.py -n lr3e-4 -S train.lr=3e-4` (tiny).
    Returns (deterministic metrics before it, its output)."""
    path, environ, overrides, _, _ = demo
    metrics_before = deterministic_metrics(path)
    cmd = [sys.executable, "scripts/offline.py", "--overrides", str(overrides), "-n", KNOB_RUN, "-S", KNOB]
    return metrics_before, run(cmd, path, environ).stdout


def test_demo_knob_reruns_only_what_it_changes_and_the_review_report_shows_it(demo, knob):
    path, environ, overrides, before, _ = demo
    metrics_before, output = knob
    assert ran_stages(output) == LR_RERUN
    assert (path / "params.yaml").read_bytes() == before
    metrics_after = deterministic_metrics(path)
    for name in TRAINED:
        key = f"metrics/train/{name}/metrics.json"
        if name in TAKE_SECTION_LR:
            assert metrics_after[key] != metrics_before[key], f"{name} ignored train.lr"
        else:
            assert metrics_after[key] == metrics_before[key], name
    report = run([sys.executable, "scripts/review_report.py", "base", KNOB_RUN], path, environ).stdout
    assert max(len(line) for line in report.splitlines()) <= 120, report
    assert "| params.yaml | train.lr | 0.01 " in report and "0.0003" in report
    metrics_table = report.split("Headline test metrics")[1].split("Params that changed")[0]
    rows = [line.split("|")[1].strip() for line in metrics_table.splitlines() if line.startswith("| ")]
    changed = {Path(row).stem for row in rows[1:] if row.startswith("metrics/headline/")}   # rows[0]: header
    assert changed and changed <= set(TAKE_SECTION_LR + EMBEDDED_BY_IT), report
    # Its drill-down commands show what it leaves out: every experiment, every test metric of one that moved.
    commands = re.findall(r"`([^`]+)`", report.split("Drill down:")[1])
    side_by_side = next(c for c in commands if c.startswith("python scripts/runs.py "))
    side_by_side = run([sys.executable, *shlex.split(side_by_side)[1:]], path, environ).stdout
    assert all(f"  {name} " in side_by_side for name in ALL), side_by_side
    detail = run(shlex.split(next(c for c in commands if "--targets metrics/eval/" in c)), path, environ).stdout
    assert {"loss", "top5"} & {row[1] for row in table(detail.splitlines()[1:])}, detail


def _as_readme_runs_it(command: str, path: Path, environ: dict) -> list[str]:
    """The lines ``command`` (as README.md prints it, `python ...` or `dvc ...`) prints in the project."""
    args = shlex.split(command)
    args[0] = sys.executable if args[0] == "python" else args[0]
    return run(args, path, {**environ, "COLUMNS": "200"}, timeout=300).stdout.splitlines()


def _runs_of(rows: list[list[str]]) -> list[str]:
    """The first column of `dvc exp show`'s rows without the commits (a run's commit differs from clone to clone)."""
    return [re.sub(r"\b[0-9a-f]{7} ", "", row[0]) for row in rows]


def _moves(rows: list[list[str]]) -> list[tuple[str, bool]]:
    """(label, whether its values differ between the runs) of each row of a table with a column per run."""
    return [(row[0], len(set(row[1:])) > 1) for row in rows]


def test_readme_examples_are_what_its_commands_print_after_its_two_runs(demo, knob):
    """README.md's printed outputs, against the same commands after the same two runs on the tiny demo. The numbers
    differ (other data, other CPU); the columns, the rows, their order and which rows move do not."""
    path, environ, _, _, _ = demo
    blocks = printed("README.md")
    diff, params, runs, show = (f"dvc metrics diff base {KNOB_RUN}", f"dvc params diff base {KNOB_RUN}",
                                f"python scripts/runs.py base {KNOB_RUN}", "dvc metrics show")
    assert {diff, params, runs, show} <= set(blocks), list(blocks)
    got = {command: table(_as_readme_runs_it(command, path, environ)) for command in (diff, params, runs, show)}
    want = {command: table(blocks[command]) for command in got}
    # DVC lists the files of `metrics diff` in no fixed order (it changes from call to call): compare the rows as a
    # set. On the tiny demo a metric of the retrieval experiment may stay put where README's moved: a subset.
    assert got[diff][0] == want[diff][0], got[diff]
    moved = {tuple(r[:2]) for r in got[diff][1:]}
    assert moved <= {tuple(r[:2]) for r in want[diff][1:]}, got[diff]
    assert {(f"metrics/headline/{n}.json", m) for n in TAKE_SECTION_LR for m in ("top1", "f1_macro")} <= moved
    assert got[params] == want[params]
    assert [label for label, _ in _moves(got[runs])] == [label for label, _ in _moves(want[runs])], got[runs]
    assert {label for label, move in _moves(got[runs]) if move} <= {label for label, move in _moves(want[runs]) if move}
    assert got[show][0] == want[show][0] and [r[0] for r in got[show]] == [r[0] for r in want[show]], got[show]
    # The one `dvc exp show` call README offers: a run per row, the few columns it names, within 120 characters.
    (exp_show,) = EXP_SHOW_CALL.findall((ROOT / "README.md").read_text())
    printed_lines = _as_readme_runs_it(exp_show, path, environ)
    shown = table(printed_lines)
    assert shown[0] == ["Experiment", "metrics/headline/tl_densenet121_progressive.json:top1", "train.lr"], shown
    assert len(shown[0]) <= EXP_SHOW_COLUMNS and max(map(len, printed_lines)) <= 120, printed_lines
    assert _runs_of(shown[1:]) == ["main", f"├── [{KNOB_RUN}]", "└── [base]"], shown
    assert [row[2] for row in shown[1:]] == ["0.01", "0.0003", "0.01"], shown


def test_results_demo_table_has_the_run_s_columns_and_rows(demo, knob):
    """docs/results.md's demo table is the aggregate table of a run: its columns are the summary's, its rows the
    experiments in the summary's order (its numbers are README's base run: tests/test_docs_examples.py)."""
    path, _, _, _, _ = demo
    summary = md_table((path / "metrics" / "summary" / "summary.md").read_text(), "# Stanford Cars benchmark")
    shown = md_table((ROOT / "docs" / "results.md").read_text(), "## The offline demo")
    derived = {"top1 95% CI", "p vs best"}      # from top1_ci_low/high and p_vs_best
    assert set(shown[0]) - derived <= set(summary[0]), set(shown[0]) - derived - set(summary[0])
    assert [row[0] for row in shown[1:]] == [row[0] for row in summary[1:]]


def test_after_the_readme_s_runs_dvc_push_leaves_no_remote_or_cache_for_git(demo, knob):
    """The committed default remote is a folder beside the clone: `dvc push` fills it, and `git status` lists only
    what README says a user commits, never the remote or DVC's cache."""
    path, environ, _, _, _ = demo
    pushed = run(["dvc", "push"], path, environ).stdout
    remotes = run(["dvc", "remote", "list"], path, environ).stdout
    assert any(p.is_file() for p in (path.parent / "carbench-dvc-remote").rglob("*")), (pushed, remotes)
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], path, environ).stdout
    changed = [line[3:] for line in status.splitlines()]
    assert not [p for p in changed if p.startswith(("carbench-dvc-remote", ".dvc/cache", ".dvc/tmp"))], status
    commit = COMMIT_LINE.search((ROOT / "README.md").read_text()).group(1)
    listed = re.findall(r"`([^`]+)`", commit)
    assert all(any(p == f or p.startswith(f) or p.endswith("/" + f) for f in listed) for p in changed), (listed, status)


def test_failed_demo_run_restores_params_yaml(demo):
    path, environ, overrides, before, _ = demo
    cmd = [sys.executable, "scripts/offline.py", "--overrides", str(overrides), "-S", "++train.lrr=1"]
    result = run(cmd, path, environ, check=False)
    assert result.returncode != 0
    assert "unknown key train.lrr" in result.stdout + result.stderr
    assert (path / "params.yaml").read_bytes() == before
