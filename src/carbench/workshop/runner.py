"""`dvc exp run` that leaves the repository as it found it: params checked before DVC touches an output, and after a
failure, Ctrl-C, SIGTERM or a killed DVC, params.yaml, HEAD, the git index and DVC's experiment refs put back
(scripts/offline.py, scripts/exp_run.py). :func:`recover` clears what a hand-run `dvc exp run` left behind
(scripts/recover.py). The user-facing side is docs/recovery.md.

What a workspace `dvc exp run` changes in git while it runs (DVC 3): it detaches HEAD, writes
``refs/exps/exec/EXEC_*``, stages params.yaml, dvc.lock and every uncached output in the index, and records itself
in ``.dvc/tmp/exps/run/workspace``. Its own clean-up (HEAD back, index reset) runs only when it ends normally or by
Ctrl-C between stages; SIGTERM or SIGKILL ends it on the spot and leaves all of that behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.signals import STOP_FILE_ENV, STOP_SIGNALS, interrupted_line, interrupted_status
from ..config import ConfigError, parse_params, read_yaml
from ..core.errors import UserError

PARAMS = "params.yaml"
EXEC_REFS = "refs/exps/exec/"
#: Where DVC records the running workspace experiment (its pid and state).
WORKSPACE_RUN = Path(".dvc") / "tmp" / "exps" / "run" / "workspace"
#: How long interrupted stages get to clean up (temporary outputs, resume state) before they are killed.
STAGE_GRACE_S = 30.0
POLL_S = 0.2


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one rename, so a reader (git) never sees half a file."""
    tmp = path.with_name(path.name + ".carbench-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _exec_refs(root: Path) -> dict[str, str]:
    out = _git(root, "for-each-ref", "--format=%(refname) %(objectname)", EXEC_REFS).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


@dataclass
class RepoState:
    """What a run must not change in git: params.yaml bytes, HEAD, the index file, DVC's exec refs."""

    root: Path
    params: Optional[bytes]
    git_dir: Optional[Path] = None
    head: Optional[bytes] = None
    index: Optional[bytes] = None
    exec_refs: dict[str, str] = field(default_factory=dict)
    locks: set[str] = field(default_factory=set)

    @classmethod
    def capture(cls, root: Path) -> "RepoState":
        params = root / PARAMS
        state = cls(root, params.read_bytes() if params.is_file() else None)
        found = _git(root, "rev-parse", "--absolute-git-dir")
        if found.returncode != 0:       # not a git repository: only params.yaml to keep
            return state
        state.git_dir = Path(found.stdout.strip())
        state.head = (state.git_dir / "HEAD").read_bytes()
        index = state.git_dir / "index"
        state.index = index.read_bytes() if index.is_file() else None
        state.exec_refs = _exec_refs(root)
        state.locks = {p.name for p in state.git_dir.glob("*.lock")}
        return state

    def restore(self) -> list[str]:
        """Put everything captured back (the process that changed it must be gone); returns what differed."""
        changed = []
        params = self.root / PARAMS
        if self.params is not None and (not params.is_file() or params.read_bytes() != self.params):
            _write_atomic(params, self.params)
            changed.append(PARAMS)
        if self.git_dir is None:
            return changed
        for lock in self.git_dir.glob("*.lock"):   # left by a git write that was killed half-way
            if lock.name not in self.locks:
                lock.unlink(missing_ok=True)
        head = self.git_dir / "HEAD"
        if head.read_bytes() != self.head:
            _write_atomic(head, self.head)
            changed.append("HEAD")
        now = _exec_refs(self.root)
        for ref, sha in now.items():
            if self.exec_refs.get(ref) != sha:
                _git(self.root, *(["update-ref", ref, self.exec_refs[ref]] if ref in self.exec_refs
                                  else ["update-ref", "-d", ref]))
                changed.append(ref)
        index = self.git_dir / "index"
        current = index.read_bytes() if index.is_file() else None
        if current != self.index:
            if self.index is None:
                index.unlink()
            else:
                _write_atomic(index, self.index)
            changed.append("index")
        _forget_dead_workspace_run(self.root)
        return changed


def _forget_dead_workspace_run(root: Path) -> bool:
    """Remove DVC's record of a workspace experiment whose process is gone (DVC itself does not when killed)."""
    import json

    import psutil

    run_dir = root / WORKSPACE_RUN
    info = run_dir / "workspace.json"
    try:
        pid = int(json.loads(info.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        pid = None
    if pid is not None and pid != os.getpid() and psutil.pid_exists(pid):
        return False
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        return True
    return False


# ---------------------------------------------------------------------------------------------- params check
def set_params(args: list[str]) -> list[str]:
    """The ``-S``/``--set-param`` values among `dvc exp run` arguments, in order."""
    found, it = [], iter(args)
    for arg in it:
        if arg in ("-S", "--set-param"):
            found.append(next(it, ""))
        elif arg.startswith("--set-param="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-S") and not arg.startswith("--"):
            found.append(arg[2:])
    return found


def effective_params(root: Path, overrides: list[str]) -> dict:
    """params.yaml with the ``-S`` overrides applied exactly as `dvc exp run` applies them (DVC's own code), on a
    copy: the file itself is never written."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    source = root / PARAMS
    if not source.is_file():
        raise UserError(f"{source} not found: run from the project root")
    with tempfile.TemporaryDirectory(prefix="carbench-params-") as scratch:
        copy = Path(scratch) / PARAMS
        shutil.copyfile(source, copy)
        for path, pairs in to_path_overrides(overrides).items():
            if Path(path).name != PARAMS or (root / path).resolve() != source.resolve():
                continue    # another params file: DVC checks those itself
            try:
                apply_overrides(copy, pairs)
            except InvalidArgumentError:
                # Hydra applies overrides in order: one at a time, the first that fails is the one to name.
                shutil.copyfile(source, copy)
                for pair in pairs:
                    try:
                        apply_overrides(copy, [pair])
                    except InvalidArgumentError as exc:
                        cause = " ".join(line.strip() for line in str(exc.__cause__ or exc).splitlines()
                                         if line.strip() and not line.startswith("See "))   # Hydra's doc link
                        raise UserError(f"-S {pair} refused: {cause.rstrip('.')}; "
                                        "nothing ran and params.yaml is unchanged") from None
                raise
        return read_yaml(copy)


#: The end of every refusal of the params check.
UNCHANGED = "nothing ran and params.yaml is unchanged"
#: The option of scripts/offline.py and scripts/exp_run.py that lets a knob which reaches nothing through.
ALLOW_UNUSED = "--allow-unused"


def _knobs(overrides: list[str]) -> dict[str, str]:
    """Dotted key -> the ``-S`` text (``key=value``) of each override of params.yaml that sets a value."""
    from dvc.utils.cli_parse import to_path_overrides
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = {}
    for path, pairs in to_path_overrides(overrides).items():
        if Path(path).name != PARAMS:
            continue
        for pair in pairs:
            try:
                parsed = OverridesParser.create().parse_overrides([pair])[0]
            except Exception:   # noqa: BLE001 (Hydra's parse errors share no base class; effective_params named it)
                continue
            if not parsed.is_delete():
                out[parsed.key_or_group] = pair.lstrip("+")
    return out


def check_params(root: Path, overrides: list[str], *, knobs: Optional[list[str]] = None,
                 allow_unused: bool = False, folders: bool = True) -> None:
    """Refuse, before DVC runs anything, params that a stage would refuse after DVC deleted its outputs: every key
    and value (the stages' own validation), ``model.arch``/``model.weights`` names (the resolve stage's check), and
    a local data folder that is not there.

    ``knobs`` (default: all ``overrides``): the ``-S`` the user typed. Each must reach a stage under the params in
    force (:mod:`carbench.config.reach`): one that reaches nothing is refused, or with ``allow_unused`` one
    ``warning:`` line on stderr says so and the run goes on. ``folders=False``: data folders are not looked for
    (the run happens on another machine).
    """
    from ..config.reach import unread
    from ..preflight import check_names

    raw = effective_params(root, overrides)
    try:
        params = parse_params(raw)
    except ConfigError as exc:
        raise UserError(f"{exc}; {UNCHANGED}") from None
    typed = _knobs(overrides if knobs is None else knobs)
    for key, reason in unread(raw, list(typed)).items():
        line = f"{typed[key]} {reason}"
        if not allow_unused:
            raise UserError(f"{line}; {UNCHANGED} ({ALLOW_UNUSED} runs it anyway)")
        print(f"warning: {line}", file=sys.stderr, flush=True)
    try:
        check_names(params)     # last: it imports torchvision (seconds)
    except ConfigError as exc:
        raise UserError(f"{exc}; {UNCHANGED}") from None
    for key, value in (("data.path", params.data.path if params.data.source == "local" else None),
                       ("data.extra", params.data.extra)):
        if folders and value and not (root / value).exists():
            raise UserError(f"{key} names {value!r}, which does not exist; {UNCHANGED}")


def check_params_at(root: Path, rev: str, overrides: list[str], *, allow_unused: bool = False) -> None:
    """:func:`check_params` against params.yaml of commit ``rev`` of the repository at ``root`` (what a job that
    clones that commit runs with, scripts/slurm_sweep.py); data folders are the cluster's, not looked for here."""
    shown = _git(root, "show", f"{rev}:{PARAMS}")
    if shown.returncode != 0:
        raise UserError(f"no {PARAMS} at {rev}: {shown.stderr.strip().splitlines()[-1] if shown.stderr else ''}")
    with tempfile.TemporaryDirectory(prefix="carbench-params-") as scratch:
        (Path(scratch) / PARAMS).write_text(shown.stdout)
        check_params(Path(scratch), overrides, allow_unused=allow_unused, folders=False)


# ---------------------------------------------------------------------------------------------- a named run again
def experiment_name(args: list[str]) -> Optional[str]:
    """The ``-n``/``--name`` among `dvc exp run` arguments (the last one wins, as in argparse), or None."""
    name, it = None, iter(args)
    for arg in it:
        if arg in ("-n", "--name"):
            name = next(it, None)
        elif arg.startswith("--name="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-n") and not arg.startswith("--"):
            name = arg[2:]
    return name or None


def existing_experiment(root: Path, args: list[str]) -> Optional[tuple[str, str, str]]:
    """(name, ref, commit) of the experiment that `dvc exp run ARGS` would refuse to overwrite: one of the same name
    on the current commit (DVC's ref ``refs/exps/<commit>/<name>``); None when there is none, or the run is
    queued or forced (DVC's own rules apply then)."""
    from dvc.repo.experiments.refs import ExpRefInfo

    name = experiment_name(args)
    if name is None or {"-f", "--force", "--queue", "--temp"} & set(args):
        return None
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD").stdout.strip()
    if not head:
        return None
    ref = str(ExpRefInfo(baseline_sha=head, name=name))
    commit = _git(root, "rev-parse", "--verify", "-q", ref).stdout.strip()
    return (name, ref, commit) if commit else None


# ---------------------------------------------------------------------------------------------- the guarded run
def _stage_processes(stop_file: Path, dvc_pid: int) -> list:
    """Every stage command of this run (and its children): processes whose environment carries this run's stop file
    and DVC's stage name. Found by environment, not parentage, because a killed DVC leaves its stages orphaned."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid in (os.getpid(), dvc_pid):
                continue
            environ = proc.environ()
        except (psutil.Error, OSError):
            continue
        if environ.get(STOP_FILE_ENV) == str(stop_file) and "DVC_STAGE" in environ:
            found.append(proc)
    return found


def run_guarded(cmd: list[str], cwd: Path, *, what: str = "dvc exp run", shown: Optional[str] = None,
                replace: bool = False) -> int:
    """Run ``cmd`` (a `dvc exp run`) in ``cwd``; whatever happens, put :class:`RepoState` back afterwards.

    SIGINT/SIGTERM: the running stage gets the same signal and stops cleanly, a stage DVC starts afterwards stops
    before doing anything (see ``carbench.core.signals.STOP_FILE_ENV``), so DVC stops at a stage boundary; then the repository is put
    back and one ``interrupted:`` line says to run the same command again. Returns the exit status.

    ``shown``: the line echoed for the command (default: the whole command). ``replace``: an experiment of the
    same name on this commit (:func:`existing_experiment`) is replaced by this run, with one line saying so, instead
    of DVC's refusal; if the run does not produce a new one, the old one is put back.
    """
    import psutil

    state = RepoState.capture(cwd)
    scratch = Path(tempfile.mkdtemp(prefix="carbench-run-"))
    stop_file = scratch / "stop"
    caught: list[int] = []
    dvc_pid: list[int] = [0]      # set once DVC started

    def stop_stages(signum: int) -> None:
        for proc in _stage_processes(stop_file, dvc_pid[0]):
            try:
                proc.send_signal(signum)
            except psutil.Error:
                pass

    def on_signal(signum, frame):  # noqa: ANN001 (signal's signature)
        if caught:
            return
        caught.append(signum)
        stop_file.touch()       # first, so a stage found by the scan below or started later stops too
        stop_stages(signum)     # only the stages running now: one starting later could be hit before it has
                                # its handler, and the stop file stops it cleanly instead

    print("+", shown or " ".join(cmd), flush=True)
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    existing = existing_experiment(cwd, cmd[3:]) if replace and cmd[1:3] == ["exp", "run"] else None
    status = None
    try:
        if existing:
            name, ref, commit = existing
            # DVC refuses a name it has on this commit unless forced, and --force would rerun every stage.
            _git(cwd, "update-ref", "-d", ref, commit)
            print(f"(experiment {name!r} exists on this commit: this run replaces it)", flush=True)
        # Before DVC starts: a signal from here on must find the repair below waiting for DVC, not skip to it.
        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)
        try:
            # Its own process group: Ctrl-C (which the terminal sends to the whole foreground group) and a
            # SIGTERM to our group reach this wrapper only, never DVC, which a signal between stages could stop
            # in the middle of writing dvc.lock or the cache. DVC ends at a stage boundary instead (see above).
            child = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, STOP_FILE_ENV: str(stop_file)},
                                     stdin=subprocess.DEVNULL, process_group=0)
        except FileNotFoundError:
            raise UserError(f"{cmd[0]} not found: install the requirements (pip install -r requirements.txt) "
                            "or activate their environment") from None
        dvc_pid[0] = child.pid
        while True:
            try:
                status = child.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass                    # wake up for signals: Python runs handlers between waits
        for sig in STOP_SIGNALS:        # a second Ctrl-C must not cut the repair short
            signal.signal(sig, signal.SIG_IGN)
        if caught:                      # a killed DVC leaves its stages running: let them finish cleaning up
            stages = _stage_processes(stop_file, child.pid)
            _, alive = psutil.wait_procs(stages, timeout=STAGE_GRACE_S)
            for proc in alive:
                proc.kill()
    finally:
        if existing and status != 0 and not _git(cwd, "rev-parse", "--verify", "-q", existing[1]).stdout.strip():
            _git(cwd, "update-ref", existing[1], existing[2])   # no new run under that name: the old one stays
        changed = state.restore()
        shutil.rmtree(scratch, ignore_errors=True)
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
    if caught:
        print(interrupted_line(what, caught[0], "params.yaml and the git index are as before it, finished stages "
                               "are kept"), file=sys.stderr, flush=True)
        return interrupted_status(caught[0])
    if status == 0 and PARAMS in changed:
        print("(params.yaml restored; the experiment keeps the values it ran with: "
              "`dvc exp show`, `dvc params diff A B`)", flush=True)
    elif status != 0 and changed:
        print(f"(the run failed; put back as before it: {', '.join(_plain(c) for c in changed)})", flush=True)
    return status


def _plain(what: str) -> str:
    return {"index": "the git index"}.get(what, what)


# ---------------------------------------------------------------------------------------------- recovery
def _branch_dvc_detached(root: Path, head: str, dvc_was_here: bool) -> Optional[str]:
    """The branch a `dvc exp run` detached HEAD from, or None when HEAD was detached by the user.

    A killed run leaves HEAD detached; the next `dvc exp run` then "restores" HEAD to that commit and keeps it
    detached (its reflog: ``dvc: Restore HEAD to '<sha>'``), so the newest reflog entry is DVC's or the exec
    refs are still there. The branch is the one the last non-DVC checkout left, if it still points at HEAD."""
    log = _git(root, "reflog", "--format=%gs", "-n", "50", "HEAD").stdout.splitlines()
    if not (dvc_was_here or (log and log[0].startswith("dvc: "))):
        return None
    for entry in log:
        if entry.startswith(("dvc: ", "commit: dvc: commit experiment")):
            continue
        if entry.startswith("checkout: moving from ") and entry.endswith(f" to {head}"):
            branch = entry[len("checkout: moving from "):-len(f" to {head}")]
            tip = _git(root, "rev-parse", "--verify", "-q", f"refs/heads/{branch}").stdout.strip()
            return branch if tip == head else None
        return None
    return None


def recover(root: Path) -> list[str]:
    """Clear what an interrupted or killed hand-run `dvc exp run` left in ``root``; returns one line per repair.

    The same as DVC's own clean-up after a normal run: HEAD re-attached to its branch, ``refs/exps/exec/*`` gone,
    the index reset to HEAD (DVC resets it after every run), DVC's record of a dead workspace run removed. The
    workspace files, params.yaml included, are not touched: they may hold the user's own edits.
    """
    done = []
    found = _git(root, "rev-parse", "--absolute-git-dir")
    if found.returncode != 0:
        raise UserError(f"{root} is not a git repository")
    git_dir = Path(found.stdout.strip())
    if (git_dir / "index.lock").exists() and time.time() - (git_dir / "index.lock").stat().st_mtime > 60:
        (git_dir / "index.lock").unlink()   # a killed git write; a live one would have finished within a minute
        done.append("removed a stale .git/index.lock")
    refs = _exec_refs(root)
    baseline = refs.get(EXEC_REFS + "EXEC_BASELINE")
    head = (git_dir / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        branch = _branch_dvc_detached(root, head, dvc_was_here=bool(baseline))
        if branch:
            _git(root, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
            done.append(f"HEAD re-attached to {branch}")
    for ref in refs:
        if not ref.endswith("/EXEC_HEAD"):     # DVC keeps EXEC_HEAD after a normal run too
            _git(root, "update-ref", "-d", ref)
            done.append(f"removed {ref}")
    staged = _git(root, "diff", "--cached", "--name-only").stdout.split()
    if baseline and staged:
        _git(root, "reset", "-q")
        done.append(f"unstaged {len(staged)} path(s) the experiment had staged")
    if _forget_dead_workspace_run(root):
        done.append(f"removed DVC's record of a dead workspace run ({WORKSPACE_RUN})")
    if _git(root, "diff", "--quiet", "--", PARAMS).returncode == 1:
        done.append(f"note: {PARAMS} differs from the last commit (`dvc exp run -S` writes its values there); "
                    f"`git checkout {PARAMS}` puts the committed one back")
    return done
