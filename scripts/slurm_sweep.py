"""A sweep of DVC experiments as SLURM jobs, one per run, shared through the git remote and the DVC remote.

Usage (docs/cluster.md):
    git push origin HEAD                                   # the jobs clone this commit from the git remote
    python scripts/slurm_sweep.py submit -S 'experiments.cnn_basic.train.lr=0.001,0.003' \
        --targets evaluate@cnn_basic --cpus 8 --gpus 1 --mem 32G --time 04:00:00 --partition gpu --wait
    python scripts/slurm_sweep.py collect sweep-20250101-120000   # dvc exp pull origin + the sweep table

Each job clones the commit into <workdir>/<sweep>/runs/<run>, runs `dvc exp run --pull --allow-missing -n <run>
-S ...`, then `dvc exp push --run-cache origin <run>`; its log is <workdir>/<sweep>/logs/<run>-<job id>.out. A job
near its time limit or preempted is requeued and continues from its last finished stage and epoch.
Every run's params (the commit's params.yaml with its -S applied) are checked before anything is submitted, as
scripts/exp_run.py checks them: a bad key, value or model name, or a -S that no stage reads (--allow-unused: a
warning instead), is refused here rather than in each job. Bad input or a failing tool prints one `error: ...` line
and exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from carbench.core import cli
from carbench.workshop import runner
from carbench.workshop.cluster import slurm
from carbench.workshop import sweep_report


def add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="one SLURM job per run of the -S grid")
    p.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUES",
                   help="as `dvc exp run --queue -S`: key=a,b / key=range(0,3) / file:key=v; repeatable (grid)")
    p.add_argument("--targets", nargs="*", default=[], help="stages to run with their upstream (default: all)")
    p.add_argument("--name", help="sweep name: its runs are <name>-1, <name>-2, ... (default: sweep-<date-time>)")
    p.add_argument("--rev", default="HEAD", help="commit the jobs run (must be on --git-remote; default HEAD)")
    p.add_argument("--git-remote", default="origin", help="git remote the jobs clone from and push to")
    p.add_argument("--dvc-remote", help="DVC remote URL for the jobs (default: the committed .dvc/config's)")
    p.add_argument("--workdir", default=".cache/cluster",
                   help="where clones, scripts and logs go; on a filesystem every node sees (default .cache/cluster)")
    r = slurm.Resources()
    p.add_argument("--cpus", type=int, default=r.cpus, help=f"CPUs per task (default {r.cpus})")
    p.add_argument("--gpus", type=int, default=r.gpus,
                   help=f"GPUs per node (default {r.gpus}); > 1 adds -S base.gpus=<gpus> (DDP)")
    p.add_argument("--nodes", type=int, default=r.nodes,
                   help=f"nodes per job (default {r.nodes}); > 1 adds -S base.nodes and an srun launcher")
    p.add_argument("--mem", default=r.mem, help=f"memory per node (default {r.mem})")
    p.add_argument("--time", default=r.time, help=f"time limit per attempt (default {r.time})")
    p.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    p.add_argument("--account", help="SLURM account (default: yours)")
    p.add_argument("--grace", type=int, default=r.grace_s,
                   help=f"seconds before the time limit at which a job stops and requeues itself (default {r.grace_s})")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="any other sbatch option, e.g. --sbatch-arg=--qos=long; repeatable")
    p.add_argument(runner.ALLOW_UNUSED, action="store_true",
                   help="submit even when a -S sets a key no stage reads (a warning instead)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and exit")
    p.add_argument("--wait", action="store_true", help="wait for the jobs; exit 1 unless all completed")


def submit(args: argparse.Namespace) -> int:
    resources = slurm.Resources(cpus=args.cpus, gpus=args.gpus, nodes=args.nodes, mem=args.mem, time=args.time,
                                partition=args.partition, account=args.account, grace_s=args.grace,
                                extra=tuple(args.sbatch_arg))
    name = args.name or slurm.default_sweep_name()
    runs = slurm.plan(args.overrides, name, resources)
    for run in runs:    # here, not after each job cloned the commit and started DVC on the cluster
        runner.check_params_at(Path.cwd(), args.rev, list(run.overrides), allow_unused=args.allow_unused)
    if args.dry_run:
        for run in runs:
            print(f"{run.name}: -S {' -S '.join(run.overrides) or '(none)'}")
        return 0
    manifest = slurm.submit(runs, args.targets, Path(args.workdir), name, resources, git_remote=args.git_remote,
                            rev=args.rev, dvc_remote=args.dvc_remote)
    root = Path(args.workdir).resolve() / name
    for run in manifest["runs"]:
        print(f"{run['name']}: job {run['job']}, log {root}/logs/{run['name']}-{run['job']}.out")
    print(f"sweep {name}: {len(runs)} job(s) at commit {manifest['commit'][:12]}; when done: "
          f"python scripts/slurm_sweep.py collect {name}")
    if not args.wait:
        return 0
    names = {run["job"]: run["name"] for run in manifest["runs"]}
    states = slurm.wait(list(names), on_change=lambda job, s: print(
        f"{names[job]} (job {job}): {s.get('JobState', 'gone')}", flush=True))
    failed = {job: s for job, s in states.items() if s.get("JobState") != "COMPLETED"}
    for job, state in failed.items():
        print(f"error: {names[job]} (job {job}) ended {state.get('JobState', 'unknown')} exit "
              f"{state.get('ExitCode', '?')}: see its log", file=sys.stderr)
    return 1 if failed else 0


def collect(args: argparse.Namespace) -> int:
    runs = slurm.collect(args.name, git_remote=args.git_remote, rev=args.rev)
    rows = sweep_report.summarize(runs)
    print(json.dumps(rows, indent=2) if args.json else sweep_report.to_markdown(rows, runs), end="")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_submit(sub)
    c = sub.add_parser("collect", help="dvc exp pull a sweep's experiments and print the sweep table")
    c.add_argument("name", help="the sweep name (its runs are <name>-1, <name>-2, ...)")
    c.add_argument("--git-remote", default="origin", help="git remote the jobs pushed to")
    c.add_argument("--rev", default="HEAD", help="the sweep's commit (default HEAD)")
    c.add_argument("--json", action="store_true", help="print the rows as JSON instead of markdown")
    args = parser.parse_args()
    return submit(args) if args.command == "submit" else collect(args)


if __name__ == "__main__":
    cli.run_command(main)
