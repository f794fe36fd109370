"""Sweeps as SLURM jobs (scripts/slurm_sweep.py, carbench.workshop.cluster) on a real one-node SLURM cluster started here
(tests/support/slurm.py; skipped with the reason where it cannot start).

The tiny project's commit is pushed to a bare git repository (``origin``); the DVC remote is a local folder. A
two-run sweep of ``evaluate@cnn_basic`` runs as two jobs of 2 CPUs on the 2-CPU node (so one after the other): both
finish, the second takes the first's data stages (its dvc.lock from the git remote, the crops from the DVC remote)
instead of running them, and a fresh clone
sees both experiments with their metrics after the collector's ``dvc exp pull``. A run given a 1-minute time limit
is stopped near it, requeued, continues from its last stage and epoch, and ends with the uninterrupted run's
metrics.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.project import (
    deterministic_metrics,
    env,
    make_project,
    ran_stages,
    run,
    tiny_params,
)
from support.slurm import LocalSlurm, Unavailable

from carbench.workshop.cluster import slurm
from carbench.workshop import sweep_report as report

pytestmark = pytest.mark.e2e

from support.params import ROOT

SCRIPT = ROOT / "scripts" / "slurm_sweep.py"
TARGET = "evaluate@cnn_basic"
DATA_STAGES = {"download", "split", "crop"}
LRS = ("0.001", "0.003")
#: Long enough that a 1-minute job is still training when SLURM warns it (20-50 s in with --grace 10: the
#: controller checks limits every 30 s and warns up to 30 s early) on an idle 2-core machine, where 60 epochs took
#: 15 s and the whole job 34 s (too short: it finished unwarned); short enough for the suite (about 75 s a job).
EPOCHS, IMAGE_SIZE = 240, 64
#: The reference run of the requeue test is the sweep's first run: the same overrides.
REQUEUED_OVERRIDE = f"experiments.cnn_basic.train.lr={LRS[0]}"
COMPARED = ("metrics/headline/cnn_basic.json", "metrics/eval/cnn_basic.json", "metrics/train/cnn_basic/metrics.json")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        local = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield local
    local.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory, cluster):
    """The tiny project committed and pushed to a bare ``origin``; the environment the user's shell would have."""
    base = tmp_path_factory.mktemp("sweep")
    params = tiny_params()
    params["experiments"]["cnn_basic"]["train"].update({"epochs": EPOCHS, "image_size": IMAGE_SIZE})
    work = make_project(base / "work", params)
    environ = env(base / "torch_home")
    # The jobs import the installed carbench (the driver) and each clone's own src/ (the stages): no PYTHONPATH.
    environ = cluster.env({k: v for k, v in environ.items() if k != "PYTHONPATH"})
    run(["git", "-c", "init.defaultBranch=main", "init", "-q", "--bare", str(base / "origin.git")], base, environ)
    run(["git", "remote", "add", "origin", str(base / "origin.git")], work, environ)
    run(["git", "push", "-q", "origin", "HEAD:main"], work, environ)
    run(["git", "fetch", "-q", "origin"], work, environ)  # origin/main: the submit check sees the commit pushed
    return {"base": base, "work": work, "env": environ, "remote": base / "dvc-remote", "workdir": base / "cluster"}


def submit(project: dict, name: str, overrides: list[str], *extra: str, remote: Path) -> tuple[subprocess.CompletedProcess, float]:
    args = [sys.executable, str(SCRIPT), "submit", *[a for o in overrides for a in ("-S", o)], "--targets", TARGET,
            "--name", name, "--workdir", str(project["workdir"]), "--dvc-remote", str(remote), "--cpus", "2",
            "--mem", "1G", *extra, "--wait"]
    start = time.monotonic()
    result = run(args, project["work"], project["env"], check=False, timeout=900)
    return result, time.monotonic() - start


def job_log(project: dict, name: str) -> str:
    logs = sorted((project["workdir"] / name.rsplit("-", 1)[0] / "logs").glob(f"{name}-*.out"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


def attempts(log: str) -> list[str]:
    """The log of each attempt of a job (the driver starts each with 'experiment <name>: attempt <n>')."""
    return re.split(r"(?=\[carbench-job [0-9:]+\] experiment \S+: attempt \d+)", log)[1:]


def finished_stages(log: str) -> set[str]:
    """Stages a dvc output ran to the end: 'Running stage' then 'Updating lock file' before the next stage."""
    parts = re.split(r"Running stage '([^']+)'", log)
    return {name for name, body in zip(parts[1::2], parts[2::2]) if "Updating lock file" in body}


@pytest.fixture(scope="module")
def swept(project):
    result, seconds = submit(project, "sweep", [f"experiments.cnn_basic.train.lr={','.join(LRS)}"],
                             "--time", "15", remote=project["remote"])
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n" + "\n".join(
        job_log(project, f"sweep-{i}") for i in (1, 2) if list((project["workdir"] / "sweep" / "logs").glob("*")))
    return {"seconds": seconds, "submit": result.stdout}


def test_two_run_sweep_runs_as_jobs_and_a_fresh_clone_collects_both(project, swept, tmp_path):
    first, second = job_log(project, "sweep-1"), job_log(project, "sweep-2")
    assert ran_stages(first) >= DATA_STAGES | {"train@cnn_basic", TARGET}
    # The second job took the first one's data stages (its dvc.lock from the git remote, the crops from the DVC
    # remote) instead of running them.
    assert "seeding from sweep-1" in second
    assert not ran_stages(second) & DATA_STAGES, ran_stages(second)
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second, stage
    assert {"train@cnn_basic", TARGET} <= ran_stages(second)
    assert "experiment sweep-2: done and pushed" in second

    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(project["base"] / "origin.git"), str(fresh)], tmp_path, project["env"])
    start = time.monotonic()
    table = run([sys.executable, str(SCRIPT), "collect", "sweep"], fresh, project["env"]).stdout
    collect_s = time.monotonic() - start
    print(f"\nSLURM sweep of 2 runs ({TARGET}, tiny project): {swept['seconds']:.0f} s from submit to both jobs "
          f"done; collect {collect_s:.0f} s\n{swept['submit']}{table}")
    assert "| cnn_basic | 2 |" in table and "runs: sweep-1, sweep-2" in table
    assert f"experiments.cnn_basic.train.lr: {', '.join(str(float(lr)) for lr in LRS)}" in table
    runs = report.runs_from_exp_show(report.exp_show([], cwd=fresh))
    by_name = {r["name"]: r for r in runs}
    assert set(by_name) == {"sweep-1", "sweep-2"}
    for name, lr in zip(("sweep-1", "sweep-2"), LRS):
        assert by_name[name]["params"]["experiments.cnn_basic.train.lr"] == float(lr)
        headline = report.scores(by_name[name])["cnn_basic"]
        assert 0.0 <= headline["top1"] <= 1.0 and "f1_macro" in headline
    # the headline the collector pulled is what the job computed
    computed = json.loads((project["workdir"] / "sweep" / "runs" / "sweep-1" / COMPARED[0]).read_text())
    assert report.scores(by_name["sweep-1"])["cnn_basic"]["top1"] == computed["top1"]


def test_job_past_its_time_limit_is_requeued_and_ends_with_the_uninterrupted_metrics(project, swept, cluster,
                                                                                     monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))  # slurm.job_state's scontrol asks this cluster
    # Its own empty DVC remote: nothing restored from the sweep, every stage runs in this job.
    result, seconds = submit(project, "requeue", [REQUEUED_OVERRIDE], "--time", "1", "--grace", "10",
                             remote=project["base"] / "dvc-remote-requeue")
    log = job_log(project, "requeue-1")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{log}"
    job = json.loads((project["workdir"] / "requeue" / "sweep.json").read_text())["runs"][0]["job"]
    assert int(slurm.job_state(job)["Restarts"]) >= 1
    tries = attempts(log)
    assert len(tries) >= 2, log
    assert "SIGUSR1 (time limit near)" in tries[0] and f"requeueing job {job}" in tries[0]
    assert "train@cnn_basic" in ran_stages(tries[0])  # the first attempt reached training
    assert DATA_STAGES <= finished_stages(tries[0]), tries[0]
    later = "".join(tries[1:])
    assert not ran_stages(later) & DATA_STAGES, ran_stages(later)  # finished stages are not run again
    assert re.search(r"\[cnn_basic\] resuming after epoch [1-9]\d*", later), later  # nor finished epochs
    assert "experiment requeue-1: done and pushed" in later
    print(f"\nrequeued job: {seconds:.0f} s from submit to done, {len(tries)} attempts")

    requeued_dir = project["workdir"] / "requeue" / "runs" / "requeue-1"
    straight_dir = project["workdir"] / "sweep" / "runs" / "sweep-1"
    requeued, straight = deterministic_metrics(requeued_dir), deterministic_metrics(straight_dir)
    for rel in COMPARED:
        # size_mb is the checkpoint file's size: a resumed optimizer state pickles to a few bytes more, with the
        # same values (compared below)
        assert _without(requeued[rel], "size_mb") == _without(straight[rel], "size_mb"), rel
    weights = [torch.load(d / "models" / "cnn_basic" / "best.pt", weights_only=False)["state_dict"]
               for d in (requeued_dir, straight_dir)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[1])


def _without(tree: dict, key: str) -> dict:
    return {k: v for k, v in tree.items() if k != key}
