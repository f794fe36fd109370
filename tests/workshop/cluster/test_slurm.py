"""carbench.workshop.cluster.slurm: a sweep grid expanded into runs as `dvc exp run -S` expands it, and the batch script of
one run (resources, requeue, the warning signal before the time limit)."""
from __future__ import annotations

import pytest

from carbench.workshop.cluster import slurm


def test_plan_expands_the_grid_as_dvc_does_and_names_the_runs():
    runs = slurm.plan(["train.lr=0.1,0.2", "base.seed=range(0,2)", "crop.size=40"], "s")
    assert [r.name for r in runs] == ["s-1", "s-2", "s-3", "s-4"]
    assert runs[0].overrides == ("train.lr=0.1", "base.seed=0", "crop.size=40")
    assert {r.overrides[:2] for r in runs} == {(f"train.lr={lr}", f"base.seed={s}") for lr in ("0.1", "0.2")
                                               for s in (0, 1)}
    assert [r.overrides for r in slurm.plan([], "s")] == [()]
    multi = slurm.plan(["train.lr=0.1"], "m", slurm.Resources(cpus=8, gpus=4, nodes=2))
    assert multi[0].overrides == ("train.lr=0.1", "base.gpus=4", "base.nodes=2",
                                  "base.launcher='srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=8 python'")
    with pytest.raises(Exception, match="bad -S override"):
        slurm.plan(["train.lr=0.1=0.2"], "s")


def test_batch_script_asks_for_the_resources_a_requeue_and_the_warning_signal(tmp_path):
    resources = slurm.Resources(cpus=6, gpus=2, mem="20G", time="02:00:00", partition="gpu", account="lab",
                                grace_s=90, extra=("--qos=long",))
    text = slurm.batch_script(slurm.Run("s-1", ("a=1",)), tmp_path / "s-1.json", tmp_path / "logs", resources,
                              python="/env/bin/python")
    directives = [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert directives == ["--job-name=s-1", f"--chdir={tmp_path}", f"--output={tmp_path}/logs/s-1-%j.out",
                          "--open-mode=append",
                          "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=6", "--mem=20G", "--time=02:00:00",
                          "--requeue", "--signal=B:USR1@90", "--gpus-per-node=2", "--partition=gpu",
                          "--account=lab", "--qos=long"]
    assert text.splitlines()[-1] == f"exec /env/bin/python -m carbench.workshop.cluster.job {tmp_path}/s-1.json"
