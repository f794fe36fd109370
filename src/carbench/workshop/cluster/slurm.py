"""A grid of ``-S`` overrides as SLURM jobs, one per run, and the collector of their experiments.

:func:`plan` expands the grid with DVC's own parser (the syntax of ``dvc exp run --queue -S``: ``key=a,b``,
``key=range(0,3)``, ``file:key=v``) into named runs; :func:`submit` writes, per run, a spec (what
:mod:`carbench.workshop.cluster.job` does) and a batch script (the resources, ``--requeue``, ``--signal=B:USR1@<grace>``, a
log named after the experiment), then ``sbatch``es it; :func:`wait` follows the jobs until SLURM is done with them;
:func:`collect` ``dvc exp pull``s the sweep's experiments into the current clone and returns them as
:mod:`carbench.workshop.sweep_report` runs.

Layout under ``<workdir>/<sweep>/``: ``runs/<name>/`` (the run's clone), ``jobs/<name>.{sh,json}``,
``logs/<name>-<job id>.out``, ``sweep.json`` (the runs, their overrides and job ids). Every node reads and writes
there: it must be on a filesystem the cluster shares (as the submit directory is).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ...core.errors import UserError

#: Job states after which SLURM runs the job no more (squeue lists a requeued job as PENDING again).
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}


@dataclass(frozen=True)
class Resources:
    """What each job asks SLURM for (sbatch options); ``grace_s``: SIGUSR1 comes that long before the time limit."""

    cpus: int = 4
    gpus: int = 0
    nodes: int = 1
    mem: str = "16G"
    time: str = "04:00:00"
    partition: Optional[str] = None
    account: Optional[str] = None
    grace_s: int = 120
    extra: tuple[str, ...] = ()

    def directives(self) -> list[str]:
        out = [f"--nodes={self.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={self.cpus}", f"--mem={self.mem}",
               f"--time={self.time}", "--requeue", f"--signal=B:USR1@{self.grace_s}"]
        if self.gpus:
            out.append(f"--gpus-per-node={self.gpus}")
        out += [f"--partition={self.partition}"] * bool(self.partition) + [f"--account={self.account}"] * bool(self.account)
        return out + list(self.extra)


@dataclass(frozen=True)
class Run:
    name: str
    overrides: tuple[str, ...] = field(default_factory=tuple)


def expand(overrides: list[str]) -> list[list[str]]:
    """The runs of a grid of ``-S`` overrides (DVC's own expansion), each as ``-S`` arguments."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    try:
        sweeps = get_hydra_sweeps(to_path_overrides(list(overrides)))
    except Exception as exc:  # hydra's parse errors have no common base class worth naming
        raise UserError(f"bad -S override: {str(exc).splitlines()[0]}") from None
    return [[o if path == "params.yaml" else f"{path}:{o}" for path, items in sweep.items() for o in items]
            for sweep in sweeps]


def scale_overrides(resources: Resources) -> list[str]:
    """The params a job's shape implies: ``base.gpus`` processes per node, ``base.nodes`` and the srun launcher."""
    out = []
    if resources.gpus > 1:
        out.append(f"base.gpus={resources.gpus}")
    if resources.nodes > 1:
        out += [f"base.nodes={resources.nodes}",
                f"base.launcher='srun --nodes={resources.nodes} --ntasks-per-node=1 "
                f"--cpus-per-task={resources.cpus} python'"]
    return out


def plan(overrides: list[str], prefix: str, resources: Resources = Resources()) -> list[Run]:
    """Named runs (``<prefix>-<i>``) of the grid, each with the overrides its job shape implies appended."""
    extra = scale_overrides(resources)
    return [Run(f"{prefix}-{i}", tuple(run + extra)) for i, run in enumerate(expand(overrides), 1)]


def batch_script(run: Run, spec: Path, log_dir: Path, resources: Resources, python: str = sys.executable) -> str:
    """The sbatch script of one run: its directives, then the job driver in place of the shell (it gets the signals)."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={run.name}", f"#SBATCH --chdir={log_dir.parent}",
             f"#SBATCH --output={log_dir}/{run.name}-%j.out",
             "#SBATCH --open-mode=append"]  # a requeued attempt adds to the same log
    lines += [f"#SBATCH {d}" for d in resources.directives()]
    lines += [f"exec {shlex.quote(python)} -m carbench.workshop.cluster.job {shlex.quote(str(spec))}", ""]
    return "\n".join(lines)


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise UserError(f"git {' '.join(args)} failed: {lines[-1] if lines else f'exit {result.returncode}'}")
    return result.stdout.strip()


def git_source(repo: Path, git_remote: str, rev: str) -> tuple[str, str]:
    """(URL the jobs clone, full commit): the commit must be on the git remote already (the jobs clone it there)."""
    url = _git(repo, "remote", "get-url", git_remote)
    if "://" not in url and ":" not in url.split("/")[0] and not Path(url).is_absolute():
        url = str((repo / url).resolve())  # a local path relative to the repository: absolute for the jobs
    commit = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
    on_remote = [b.strip() for b in _git(repo, "branch", "-r", "--contains", commit).splitlines()]
    if not any(b.startswith(f"{git_remote}/") for b in on_remote):
        raise UserError(f"commit {commit[:12]} is not on git remote {git_remote!r}: git push it first "
                        f"(each job clones it from there)")
    return url, commit


def submit(runs: list[Run], targets: list[str], workdir: Path, sweep: str, resources: Resources,
           git_remote: str = "origin", rev: str = "HEAD", dvc_remote: Optional[str] = None,
           repo: Optional[Path] = None, sbatch: str = "sbatch") -> dict:
    """Write each run's spec and batch script under ``workdir/sweep`` and ``sbatch`` it; returns the manifest
    (also written as ``sweep.json``)."""
    repo = Path(_git(repo or Path.cwd(), "rev-parse", "--show-toplevel"))
    url, commit = git_source(repo, git_remote, rev)
    root = (Path(workdir) / sweep).resolve()
    if dvc_remote and "://" not in dvc_remote and not Path(dvc_remote).is_absolute():
        dvc_remote = str(Path(dvc_remote).resolve())
    for sub in ("runs", "jobs", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    manifest = {"sweep": sweep, "commit": commit, "git_remote": git_remote, "git_url": url, "targets": targets,
                "dvc_remote": dvc_remote, "resources": asdict(resources), "runs": []}
    for run in runs:
        if (root / "runs" / run.name).exists():
            raise UserError(f"{root / 'runs' / run.name} exists: another sweep used the name {sweep!r}; pick --name")
        spec = {"name": run.name, "sweep": sweep, "commit": commit, "git_url": url, "git_remote": git_remote,
                "overrides": list(run.overrides), "targets": targets, "dvc_remote": dvc_remote,
                "clone": str(root / "runs" / run.name), "grace_s": resources.grace_s}
        spec_path, script = root / "jobs" / f"{run.name}.json", root / "jobs" / f"{run.name}.sh"
        spec_path.write_text(json.dumps(spec, indent=2) + "\n")
        script.write_text(batch_script(run, spec_path, root / "logs", resources))
        result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
        if result.returncode != 0:
            raise UserError(f"sbatch {script} failed: {result.stderr.strip()}")
        job = result.stdout.strip().split(";")[0]
        manifest["runs"].append({"name": run.name, "job": job, "overrides": list(run.overrides)})
        (root / "sweep.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def job_state(job: str) -> dict[str, str]:
    """``JobState``, ``ExitCode``, ``Restarts`` of a job SLURM still knows (``scontrol show job``); {} otherwise."""
    result = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True)
    if result.returncode != 0:
        return {}
    fields = dict(part.split("=", 1) for part in result.stdout.split() if "=" in part)
    return {k: fields.get(k, "") for k in ("JobState", "ExitCode", "Restarts", "RunTime")}


def wait(jobs: list[str], poll_s: float = 5.0, timeout_s: Optional[float] = None,
         on_change: Optional[Callable[[str, dict], None]] = None) -> dict[str, dict[str, str]]:
    """Poll until every job reached a final state (a requeued job is pending again, not final); returns their
    states. ``timeout_s``: UserError past it."""
    start, seen, states = time.monotonic(), {}, {}
    while True:
        states = {job: job_state(job) for job in jobs}
        for job, state in states.items():
            if on_change and seen.get(job) != state.get("JobState"):
                on_change(job, state)
            seen[job] = state.get("JobState")
        if all(not s or s.get("JobState") in FINAL for s in states.values()):
            return states
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise UserError(f"jobs still running after {timeout_s:.0f} s: "
                            f"{', '.join(j for j, s in states.items() if s.get('JobState') not in FINAL)}")
        time.sleep(poll_s)


def _dvc(args: list[str], cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        from ..dvc import tool_error

        raise UserError(f"dvc {' '.join(args[:2])} failed: {tool_error(result.stderr)}")
    return result.stdout


def collect(prefix: str, git_remote: str = "origin", rev: str = "HEAD", repo: Optional[Path] = None) -> list[dict]:
    """Pull the experiments named ``<prefix>-*`` of baseline ``rev`` from ``git_remote`` into ``repo`` and return
    them as :func:`carbench.workshop.sweep_report.runs_from_exp_show` runs, ordered by what varies."""
    from .. import sweep_report as report

    repo = repo or Path.cwd()
    listed = _dvc(["exp", "list", "--rev", rev, "--name-only", git_remote], repo).split()
    names = sorted(n for n in listed if n.startswith(f"{prefix}-"))
    if not names:
        raise UserError(f"git remote {git_remote!r} has no experiment named {prefix}-* on {rev} "
                        f"(dvc exp list --rev {rev} {git_remote})")
    _dvc(["exp", "pull", git_remote, *names], repo)
    runs = report.runs_from_exp_show(report.exp_show(["--rev", rev], cwd=repo))
    return report.ordered(report.select(runs, names))


def default_sweep_name() -> str:
    """``sweep-<date>-<time>``: unique per submission, a valid experiment (git ref) prefix."""
    return time.strftime("sweep-%Y%m%d-%H%M%S")

