"""One sweep run inside its SLURM job: ``python -m carbench.workshop.cluster.job <spec.json>`` (the job's batch script).

Steps, each a subprocess whose failure ends the job with its exit status (non-zero):

1. clone the git remote at the sweep's commit into the run's own directory (kept across requeues: an attempt
   after the first continues in it);
2. point the DVC remote at the sweep's (``dvc remote modify --local``), when the spec names one;
3. on the first attempt, the results of a run of the same sweep already pushed to the git remote seed the clone
   (its dvc.lock and git-tracked outputs; params.yaml stays the commit's): DVC's run-cache skips every stage that
   has a ``cache: false`` output, as each stage here does, so an earlier run's lock is what tells DVC that a stage
   whose deps and params are the same is unchanged;
4. ``dvc exp run --pull --allow-missing -n <name> -S ... <targets>``: unchanged stages are skipped and the outputs
   that changed stages need are pulled from the DVC remote instead of recomputed; skipped when an earlier attempt
   already made the experiment;
5. ``dvc exp push --run-cache <git remote> <name>``: the experiment's git ref to the git remote, its outputs and
   run-cache to the DVC remote (the next job restores them from there).

Time limit and preemption: the batch script asks SLURM for ``--signal=B:USR1@<grace>``; on SIGUSR1 this process
interrupts the running step (SIGINT to its process group: the train stage keeps its last finished epoch in
``.cache/resume``, dvc.lock its finished stages), then ``scontrol requeue``s its own job, whose next attempt
continues from there. On SIGTERM (preemption, scancel) it interrupts the step the same way and exits; SLURM
requeues a preempted ``--requeue`` job itself.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

#: Exit status after a stop signal (128 + SIGTERM, as a shell reports it).
STOPPED = 128 + signal.SIGTERM


def say(message: str) -> None:
    print(f"[carbench-job {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Stopped(Exception):
    """A stop signal arrived; ``requeue``: SIGUSR1 (time limit near), so the job asks to run again."""

    def __init__(self, requeue: bool) -> None:
        super().__init__("requeue" if requeue else "stop")
        self.requeue = requeue


class Driver:
    """Runs the steps one subprocess at a time and turns SIGUSR1/SIGTERM/SIGINT into an interrupt of the running one."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.child: Optional[subprocess.Popen] = None
        self.stop: Optional[Stopped] = None

    def install(self) -> None:
        signal.signal(signal.SIGUSR1, lambda *_: self._on_signal(True))
        signal.signal(signal.SIGTERM, lambda *_: self._on_signal(False))
        signal.signal(signal.SIGINT, lambda *_: self._on_signal(False))

    def _on_signal(self, requeue: bool) -> None:
        if self.stop is not None:  # SLURM signals again while we stop (requeue, time limit): one stop is enough
            return
        self.stop = Stopped(requeue)
        say(f"{'SIGUSR1 (time limit near): stopping to requeue' if requeue else 'SIGTERM: stopping'}")
        if self.child is not None and self.child.poll() is None:
            try:  # the whole group: dvc and the stage it runs stop at once, as on Ctrl-C
                os.killpg(self.child.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def run(self, cmd: list[str], cwd: Optional[Path] = None, env: Optional[dict] = None,
            capture: bool = False) -> subprocess.CompletedProcess:
        """Run ``cmd`` in its own process group; raise :class:`Stopped` if a stop signal came, SystemExit on failure."""
        if self.stop is not None:
            raise self.stop
        say("$ " + " ".join(cmd))
        self.child = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, text=True,
                                      stdout=subprocess.PIPE if capture else None)
        out = None
        try:
            if capture:
                out, _ = self.child.communicate()
            returncode = self._wait()
        finally:
            self.child = None
        if self.stop is not None:
            raise self.stop
        if returncode != 0:
            say(f"error: {cmd[0]} {' '.join(cmd[1:3])} ... exited {returncode}")
            raise SystemExit(returncode)
        return subprocess.CompletedProcess(cmd, returncode, out, None)

    def _wait(self) -> int:
        child = self.child
        while True:
            try:
                return child.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            if self.stop is not None:  # interrupted: give it most of the grace time, then kill it
                try:
                    return child.wait(timeout=max(5.0, self.grace_s - 15))
                except subprocess.TimeoutExpired:
                    say("the interrupted step did not stop in time: killing it")
                    os.killpg(child.pid, signal.SIGKILL)
                    return child.wait()


def _clone(driver: Driver, spec: dict, clone: Path) -> bool:
    """The run's directory at the sweep's commit: cloned on the first attempt (True), reused (and checked)
    afterwards (False)."""
    if (clone / ".git").is_dir():
        head = driver.run(["git", "rev-parse", "HEAD"], cwd=clone, capture=True).stdout.strip()
        if head != spec["commit"]:
            say(f"error: {clone} is at {head}, not the sweep's commit {spec['commit']}; remove it or use another "
                f"--workdir")
            raise SystemExit(1)
        say(f"continuing in {clone} (an earlier attempt's clone)")
        return False
    partial = clone.with_name(clone.name + ".partial")
    if partial.exists():
        driver.run(["rm", "-rf", str(partial)])
    clone.parent.mkdir(parents=True, exist_ok=True)
    driver.run(["git", "clone", "-q", "--no-checkout", spec["git_url"], str(partial)])
    driver.run(["git", "checkout", "-q", "--detach", spec["commit"]], cwd=partial)
    partial.rename(clone)  # only a complete checkout gets the run's name (a requeue may land mid-clone)
    return True


def _seed_from_earlier_run(driver: Driver, spec: dict, clone: Path) -> None:
    """Take dvc.lock and the git-tracked outputs of a run of this sweep that the git remote has already (same
    baseline commit), keeping the commit's params.yaml: see step 3 of the module doc."""
    prefix = f"{spec['sweep']}-" if spec.get("sweep") else None
    if prefix is None:
        return
    driver.run(["git", "fetch", "-q", spec["git_remote"], "+refs/exps/*:refs/exps/*"], cwd=clone)
    # DVC names an experiment's ref refs/exps/<baseline[:2]>/<baseline[2:]>/<name>
    baseline = f"refs/exps/{spec['commit'][:2]}/{spec['commit'][2:]}/"
    refs = driver.run(["git", "for-each-ref", "--format=%(refname) %(objectname)", baseline], cwd=clone,
                      capture=True).stdout.split("\n")
    earlier = sorted((ref[len(baseline):], sha) for ref, _, sha in (line.partition(" ") for line in refs if line)
                     if ref[len(baseline):].startswith(prefix) and ref[len(baseline):] != spec["name"])
    if not earlier:
        say("no earlier run of this sweep on the git remote: every stage's outputs come from this job or the DVC remote")
        return
    name, sha = earlier[0]
    say(f"seeding from {name} (already pushed): its dvc.lock marks the stages whose deps and params match as done")
    driver.run(["git", "checkout", "-q", sha, "--", "."], cwd=clone)
    driver.run(["git", "checkout", "-q", "HEAD", "--", "params.yaml"], cwd=clone)


def _use_dvc_remote(driver: Driver, dvc: list[str], clone: Path, url: str, env: dict) -> None:
    name = driver.run([*dvc, "remote", "default"], cwd=clone, env=env, capture=True).stdout.strip()
    if name:
        driver.run([*dvc, "remote", "modify", "--local", name, "url", url], cwd=clone, env=env)
    else:
        driver.run([*dvc, "remote", "add", "--local", "--force", "-d", "cluster", url], cwd=clone, env=env)


def run_job(spec: dict, driver: Driver) -> None:
    clone = Path(spec["clone"])
    name = spec["name"]
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
    say(f"experiment {name}: attempt {attempt}, job {os.environ.get('SLURM_JOB_ID', '-')} on {socket.gethostname()}, "
        f"commit {spec['commit'][:12]}, -S {' '.join(spec['overrides']) or '(none)'}, "
        f"targets {' '.join(spec['targets']) or '(all)'}")
    fresh = _clone(driver, spec, clone)
    # Stages import the clone's own src/ (the code of the sweep's commit), not the package this driver came from.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(clone / "src"),
                                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    dvc = [sys.executable, "-m", "dvc"]
    if spec.get("dvc_remote"):
        _use_dvc_remote(driver, dvc, clone, spec["dvc_remote"], env)
    if fresh:
        _seed_from_earlier_run(driver, spec, clone)
    made = driver.run([*dvc, "exp", "list", "--name-only"], cwd=clone, env=env, capture=True).stdout.split()
    if name in made:
        say(f"experiment {name} was made by an earlier attempt: pushing it")
    else:
        sets = [arg for override in spec["overrides"] for arg in ("-S", override)]
        driver.run([*dvc, "exp", "run", "--pull", "--allow-missing", "-n", name, *sets, *spec["targets"]],
                   cwd=clone, env=env)
    driver.run([*dvc, "exp", "push", "--run-cache", spec["git_remote"], name], cwd=clone, env=env)
    say(f"experiment {name}: done and pushed")


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m carbench.workshop.cluster.job <spec.json>", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    driver = Driver(float(spec.get("grace_s", 120)))
    driver.install()
    try:
        run_job(spec, driver)
    except Stopped as stop:
        if not stop.requeue:
            return STOPPED
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            say("error: SIGUSR1 outside a SLURM job: nothing to requeue")
            return STOPPED
        say(f"requeueing job {job}: the next attempt continues from the last finished stage and epoch")
        # After the stop, no signal handler may cut this short: scontrol must reach the controller.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode != 0:
            say(f"error: scontrol requeue {job} failed: {result.stderr.strip()}")
        return STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
