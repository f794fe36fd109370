"""scripts/device_plan.py, the two-phase GPU plan (docs/gpu_plan.md): its full-scale extrapolation on made-up
figures (carbench.workshop.bench.extrapolate), its budget and wheel plumbing (carbench.workshop.bench.processes, .repro), and both
phases run on CPU at the tiny size without a `dvc` command."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from support.data import SYNTHETIC_TOTAL
from support.params import ROOT
from support.scripts import load_script

from carbench.workshop.bench import extrapolate as X
from carbench.workshop.bench import processes, repro

HAS_DVC = importlib.util.find_spec("dvc") is not None and shutil.which("git") is not None


def test_extrapolation_arithmetic():
    records = [
        # a data stage: 2 s of start-up (fixed), the other 4 s scale with the photos
        {"stage": "crop", "seconds": 6.0},
        # a training stage: 5 s to the first batch, then 2*100 train + 1*120 refit + 80 val images in 10 s (40 img/s)
        {"stage": "train@a", "seconds": 15.0, "first_batch_s": 5.0, "epochs": 2, "train_per_epoch": 100,
         "refit_epochs": 1, "refit_per_epoch": 120, "val_images": 80, "feature_images": 0},
        # an evaluation: 3 s to the first batch, then 50 test images in 1 s
        {"stage": "evaluate@a", "seconds": 4.0, "first_batch_s": 3.0, "images": 50},
        # a start-up shorter than the measured start-up: all fixed
        {"stage": "resolve", "seconds": 1.5},
    ]
    ext = X.extrapolate(records, ratio=4.0, startup_s=2.0, dvc_wall_s=30.0, floor_s=5.0,
                                  expected=["crop", "resolve", "train@a", "evaluate@a", "aggregate"])
    rows = {r["stage"]: r for r in ext["stages"]}
    assert rows["crop"]["fixed_s"] == 2.0 and rows["crop"]["rate"] is None
    assert rows["crop"]["full_s"] == pytest.approx(2.0 + 4.0 * 4)                   # 18
    assert rows["train@a"]["images"] == 400 and rows["train@a"]["rate"] == pytest.approx(40.0)
    assert rows["train@a"]["full_s"] == pytest.approx(5.0 + 1600 / 40.0)            # 45
    assert rows["evaluate@a"]["full_s"] == pytest.approx(3.0 + 200 / 50.0)          # 7
    assert rows["resolve"]["full_s"] == pytest.approx(1.5)
    assert ext["stage_sum_s"] == pytest.approx(26.5)
    assert ext["stage_sum_full_s"] == pytest.approx(18 + 45 + 7 + 1.5)               # 71.5
    assert ext["dvc_overhead_s"] == pytest.approx(3.5) and ext["dvc_overhead_full_s"] == pytest.approx(14.0)
    assert ext["total_full_s"] == pytest.approx(85.5)
    assert ext["total_full_s_dvc_overhead_fixed"] == pytest.approx(75.0)
    assert ext["floor_full_s"] == pytest.approx(20.0) and ext["sum_over_floor_full"] == pytest.approx(71.5 / 20)
    assert ext["missing_stages"] == ["aggregate"] and not ext["complete"]
    assert "fixed + images_full / rate" in ext["method"]
    # a run stopped by the budget: no dvc time, partial
    partial = X.extrapolate(records[:1], ratio=4.0, startup_s=2.0)
    assert partial["total_full_s"] == pytest.approx(18.0) and partial["dvc_overhead_full_s"] is None
    assert not partial["complete"]


def test_flags_checks_size_and_stage_list():
    rows = [{"stage": "train@a", "seconds": 30.0, "first_batch_s": 9.0, "floor_s": 20.0},
            {"stage": "evaluate@a", "seconds": 5.0, "first_batch_s": 2.0, "floor_s": 4.5},
            {"stage": "crop", "seconds": 3.0, "first_batch_s": None, "floor_s": None}]
    problems = [(f["stage"], f["problem"].split()[0]) for f in X.flags(rows)]
    assert problems == [("train@a", "9.0"), ("train@a", "wall")]           # 9 s > 8 s; 1.5x > 1.25x
    ext = {"total_full_s": 500.0, "sum_over_floor_full": 1.3, "stages": [{"stage": "evaluate@a", "full_s": 7.0}]}
    checks = X.full_checks(ext, rows)
    assert [met for _, met in checks.values()] == [True, False, False, True]
    size = X.plan_size(0.125, tiny=False)
    assert (size["data"]["train_per_class"], size["data"]["test_per_class"], size["photos"]) == (5, 5, 1960)
    assert size["data"]["min_size"] == 300 and size["full_photos"] == 16268
    assert size["ratio"] == pytest.approx(16268 / 1960)
    from support.params import repo_params

    stages = X.expected_stages(repo_params())
    assert len(stages) == 40 and stages[-1] == "cards" and "evaluate@knn_resnet50_k3" in stages
    # the baseline's embed_pretrained@/knn_pretrained@ by the names their scripts log (embed.py, knn.py)
    assert "embed@knn_imagenet_baseline" in stages and "knn@knn_imagenet_baseline" in stages
    assert not [s for s in stages if "_pretrained@" in s]
    assert "aggregate" in stages and "export@knn_resnet50_k3" in stages


def test_run_logged_stops_a_command_at_its_timeout():
    start = time.perf_counter()
    code, seconds, output = processes.run_logged(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], timeout=1.5)
    assert code is None and "started" in output
    assert time.perf_counter() - start < 20


def _wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel of module ``name``."""
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as whl:
        for f, text in {**files, f"{info}/RECORD": record}.items():
            whl.writestr(f, text)
    return path


def test_missing_packages_come_from_the_wheels(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("PATH", os.environ["PATH"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert processes.ensure_packages(tmp_path, tmp_path / "site", names=("json",))["source"] == "importable"
    with pytest.raises(SystemExit, match="no wheels in"):
        processes.ensure_packages(tmp_path / "none", tmp_path / "site0", names=("carbench_fake_pkg",))
    # without --wheels: what a user does about it (install the project, or bring the wheels)
    with pytest.raises(SystemExit, match=r"no --wheels folder given: install the project on this machine "
                                         r"\(`pip install -r requirements.txt`\), or.*--wheels DIR"):
        processes.ensure_packages(None, tmp_path / "site0", names=("carbench_fake_pkg",))
    _wheel(tmp_path, "carbench_fake_pkg")
    got = processes.ensure_packages(tmp_path, tmp_path / "site", names=("carbench_fake_pkg",))
    assert "1 wheels" in got["source"] and (tmp_path / "site" / "carbench_fake_pkg").is_dir()
    # child processes see it too (the stages dvc starts)
    child = subprocess.run([sys.executable, "-c", "import carbench_fake_pkg as m; print(m.VALUE)"],
                           capture_output=True, text=True)
    assert child.stdout.strip() == "42"


def test_overrides_files_then_sets(tmp_path):
    """--overrides FILE (a recipe, timed on its own target) merges over the defaults, --set over both; the data
    location stays the plan's (carbench.workshop.bench.workspace.scale_params)."""
    plan = load_script("device_plan")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("crop: {size: 512}\nexperiments:\n  tl_resnet50_finetune:\n    train: {image_size: 448, lr: 0.1}\n")
    over = plan.plan_overrides(False, ["experiments.tl_resnet50_finetune.train.lr=0.2"], (str(recipe),))
    assert over == {"crop": {"size": 512}, "experiments": {"tl_resnet50_finetune": {"train": {"image_size": 448,
                                                                                          "lr": 0.2}}}}
    tiny = plan.plan_overrides(True, [], (str(recipe),))
    assert tiny["crop"]["size"] == 512 and tiny["experiments"]["tl_resnet50_finetune"]["train"]["epochs"] == 2


def test_the_photo_count_comes_from_the_runs_manifest(synthetic_raw, tmp_path):
    """The figures are scaled by the photos the download stage read: a user's folder is counted there, and a run
    that read other photos than the generated ones stops instead of scaling by the wrong count."""
    plan = load_script("device_plan")
    repo = tmp_path / "repo"
    shutil.copytree(synthetic_raw, repo / "data" / "raw")
    phase = plan.Phase(1, tmp_path, 60.0, ["device_plan.py"])
    phase.save(size=None, data="/my/cars")
    size = plan.photo_size(phase, repo)
    assert size["photos"] == SYNTHETIC_TOTAL and size["ratio"] == pytest.approx(16268 / SYNTHETIC_TOTAL)
    assert json.loads((tmp_path / "plan1.json").read_text())["size"]["photos"] == SYNTHETIC_TOTAL
    assert plan.data_label(phase.result).startswith(f"/my/cars: {SYNTHETIC_TOTAL} photos")
    phase.save(size=X.plan_size(0.125, tiny=True), data="generated")
    with pytest.raises(SystemExit, match=f"read {SYNTHETIC_TOTAL} photos where 48 were generated"):
        plan.photo_size(phase, repo)
    assert plan.photo_size(phase, tmp_path / "no-run")["photos"] == 48       # no manifest yet: the planned size


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_DVC, reason="needs dvc (importable) and git")
def test_repro_stops_at_its_timeout_with_the_stages_done(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    record = "{'stage': 'quick', 'seconds': 0.1, 'status': 'ok'}"
    (repo / "quick.py").write_text("import json, os\nwith open(os.environ['CARBENCH_STAGE_LOG'], 'a') as f:\n"
                                   f"    f.write(json.dumps({record}) + '\\n')\nopen('q', 'w').close()\n")
    (repo / "slow.py").write_text("import time\ntime.sleep(120)\n")
    (repo / "dvc.yaml").write_text("stages:\n  quick:\n    cmd: python quick.py\n    outs: [q]\n"
                                   "  slow:\n    cmd: python slow.py\n    deps: [q]\n")
    start = time.perf_counter()
    with pytest.raises(repro.ReproTimeout) as stopped:
        repro.run_repro(repo, tmp_path, ("slow",), timeout=15.0, tag="-t")
    assert time.perf_counter() - start < 60
    assert [r["stage"] for r in stopped.value.records] == ["quick"]
    assert (tmp_path / "dvc-repro-t.log").is_file() and (tmp_path / "stages-t.jsonl").is_file()


def _plan(phase: int, out: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    # no `dvc` command on PATH (an environment not activated): it runs as `python -m dvc`
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "dvc").exists())
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    cmd = [sys.executable, "scripts/device_plan.py", "--phase", str(phase), "--out", str(out), "--tiny",
           "--device", "cpu", "--workdir", str(work), "--workers", "1", "--budget", "240",
           "--site", str(work / "site"), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**env, "PATH": path}, timeout=400)


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_DVC, reason="needs dvc (importable) and git")
def test_both_phases_on_cpu_at_the_tiny_size(tmp_path):
    # phase 1: the stages a k-NN evaluation needs (the nine defaults take ~3 min on 2 cores; the same code)
    out1 = tmp_path / "out1"
    done = _plan(1, out1, tmp_path / "w1", "--target", "evaluate@knn_resnet50_k3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out1.iterdir()) == ["dvc-repro.log", "plan1.json", "plan1.log", "stages.jsonl"]
    one = json.loads((out1 / "plan1.json").read_text())
    assert one["status"] == "done" and one["packages"]["source"] == "importable"
    assert one["environment"]["device_type"] == "cpu" and one["environment"]["dvc"]
    assert one["size"]["photos"] == 48 and one["size"]["ratio"] == pytest.approx(16268 / 48)
    manifest = (tmp_path / "w1" / "repo" / "data" / "raw" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 48 and one["data"] == "generated"        # the run read the generated photos
    stages = {r["stage"]: r for r in one["scale"]["stages"]}
    assert set(stages) == {"download", "split", "crop", "resolve", "train@tl_resnet50_finetune",
                           "embed@knn_resnet50_k3", "knn@knn_resnet50_k3", "evaluate@knn_resnet50_k3"}
    assert stages["train@tl_resnet50_finetune"]["bare_images_per_second"] > 0
    assert stages["train@tl_resnet50_finetune"]["steady_images_per_second"] > 0      # 2 epochs
    ext = one["extrapolation"]
    assert ext["complete"] and ext["total_full_s"] > ext["stage_sum_full_s"] > ext["stage_sum_s"] > 0
    assert len(ext["stages"]) == 8 and ext["method"].startswith("full-scale stage seconds = fixed")
    assert set(one["checks_full_scale"]) == {"full-scale dvc repro wall <= 600 s",
                                              "full-scale stage sum / floor <= 1.25", "max time to first batch <= 8 s",
                                              "full-scale max evaluate@ <= 8 s"}
    log = (out1 / "plan1.log").read_text()
    assert "extrapolation to Stanford Cars' 16268 photos" in log and "bare-compute floor" in log
    assert "phase 1 done" in log

    # phase 2: ddp_check x1 against plain, the fine-tune with train.compile off and on
    out2 = tmp_path / "out2"
    done = _plan(2, out2, tmp_path / "w2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out2.iterdir()) == [
        "dvc-repro-compile-off.log", "dvc-repro-compile-on.log", "plan2.json", "plan2.log",
        "stages-compile-off.jsonl", "stages-compile-on.jsonl"]
    two = json.loads((out2 / "plan2.json").read_text())
    assert two["status"] == "done"
    ddp = two["ddp_check"]
    assert ddp["exit_status"] == 0 and ddp["equal_within_tolerance"]
    assert set(ddp["val_top1"]) == {"plain", "torchrun x1"} and ddp["difference"] == 0.0   # the same model on CPU
    comp = two["compile"]
    assert comp["off"]["seconds"] > 0 and comp["on"]["seconds"] > 0 and comp["wall_on_over_off"] > 0
    assert comp["on_reran"] == ["resolve", "train@tl_resnet50_finetune"]        # only the params change reran
    assert comp["effective"] is False and "no effect on CPU" in comp["note"]    # said, not hidden
    assert "no effect on CPU" in (out2 / "plan2.log").read_text()
