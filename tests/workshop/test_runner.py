"""Interrupts, kills and bad params without DVC's time: the stage side of SIGINT/SIGTERM (carbench.core.cli), the params
check and the git repair of carbench.workshop.runner, and the demo's signal handling against a fake `dvc` that misbehaves
like a killed one. The real thing runs in tests/e2e/test_signals.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.params import ROOT

from carbench.workshop import runner
from carbench.core.signals import STOP_FILE_ENV
from carbench.core.errors import UserError

LINE_END = "; run the same command again to continue"


def _default_signals() -> None:
    # A test runner started in the background inherits SIGINT ignored; a terminal's job gets the defaults.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), **extra}


def _wait(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------------ stage side
#: A stage script (it lives in a `stages/` folder, as the real ones): "imports" for a while, then writes into an
#: atomic output directory and sleeps there until signalled.
FAKE_STAGE = """\
import pathlib, sys, time
from carbench.core import cli, io
here = pathlib.Path(sys.argv[1])
(here / "importing").touch()
time.sleep(float(sys.argv[2]))       # stands for the seconds of `import torch`

def main():
    with io.atomic_dir(here / "out") as tmp:
        (tmp / "part").write_text("half")
        (here / "ready").touch()
        time.sleep(60)

cli.run(main)
"""


def _stage(tmp_path: Path, import_seconds: float, **environ: str) -> subprocess.Popen:
    (tmp_path / "stages").mkdir(exist_ok=True)
    script = tmp_path / "stages" / "fake.py"
    script.write_text(FAKE_STAGE)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path), str(import_seconds)], env=_env(**environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_stage_prints_one_line_and_leaves_no_partial_output(tmp_path, sig):
    proc = _stage(tmp_path, 0)
    _wait(tmp_path / "ready", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert err.splitlines() == [f"interrupted: stage fake stopped by {signal.Signals(sig).name}{LINE_END}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["importing", "ready", "stages"], "partial output left"


def test_a_signal_during_the_stage_s_imports_stops_it_before_main_without_a_traceback(tmp_path):
    proc = _stage(tmp_path, 3)
    _wait(tmp_path / "importing", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.splitlines() == [f"interrupted: stage fake stopped by SIGINT{LINE_END}"]
    assert not (tmp_path / "ready").exists(), "main ran although the stage was interrupted before it"


def test_a_stage_started_after_the_wrapper_was_interrupted_does_nothing_and_stays_quiet(tmp_path):
    stop = tmp_path / "stop"
    stop.touch()
    proc = _stage(tmp_path, 0, **{STOP_FILE_ENV: str(stop)})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == ""
    assert not (tmp_path / "ready").exists()


def test_a_signal_while_a_finished_stage_exits_does_not_turn_its_success_into_a_kill(tmp_path):
    """The demo forwards Ctrl-C to a stage that may be ending just then: once its work is done it exits 0, or DVC
    would count a finished stage as failed and run it again."""
    (tmp_path / "stages").mkdir()
    script = tmp_path / "stages" / "done.py"
    script.write_text("from carbench.core import cli\ncli.run(lambda: None)\n")
    log = tmp_path / "stages.jsonl"
    proc = subprocess.Popen([sys.executable, str(script)], env=_env(CARBENCH_STAGE_LOG=str(log)),
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    _wait(log, proc)                          # written after main, as the stage is about to exit
    while proc.poll() is None:                # a signal at every moment of the exit
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            break
        time.sleep(0.001)
    assert (proc.wait(), proc.stderr.read()) == (0, "")


def test_a_process_the_stage_forks_dies_of_sigterm_silently(tmp_path):
    """multiprocessing ends its forked pool workers with SIGTERM: they must die of it, as without our handler, not
    raise the stage's Interrupted (a traceback per worker)."""
    (tmp_path / "stages").mkdir()
    script = tmp_path / "stages" / "fork.py"
    script.write_text("import multiprocessing, time\nfrom carbench.core import cli\n"
                      "def main():\n    child = multiprocessing.get_context('fork').Process(target=time.sleep, "
                      "args=(30,))\n    child.start()\n    time.sleep(0.5)\n    child.terminate()\n"
                      "    child.join()\n    print(child.exitcode)\n"
                      "cli.run(main)\n")
    result = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, text=True, timeout=60,
                            preexec_fn=_default_signals)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{-signal.SIGTERM}\n", "")


# ------------------------------------------------------------------------------------------------ params check
def test_set_params_finds_every_spelling_of_dash_s():
    args = ["-n", "x", "-S", "a=1", "--set-param", "b=2", "--set-param=c=3", "-Sd=4", "train@x", "--queue"]
    assert runner.set_params(args) == ["a=1", "b=2", "c=3", "d=4"]


@pytest.fixture
def project(tmp_path, params_path):
    (tmp_path / "params.yaml").write_bytes(Path(params_path).read_bytes())
    return tmp_path


@pytest.mark.parametrize("overrides,message", [
    (["++train.lrr=1"], "unknown key train.lrr"),
    (["train.lrr=1"], "-S train.lrr=1 refused"),
    (["train.lr=-0.1"], "train.lr must be > 0"),
    (["data.source=local"], "data.path must name a directory"),
    (["data.source=local", "data.path=nowhere"], "data.path names 'nowhere', which does not exist"),
    (["++data.extra=nowhere"], "data.extra names 'nowhere'"),
])
def test_bad_params_are_refused_without_writing_params_yaml(project, overrides, message):
    before = (project / "params.yaml").read_bytes()
    with pytest.raises(UserError, match="nothing ran and params.yaml is unchanged") as caught:
        runner.check_params(project, overrides)
    assert message in str(caught.value)
    assert (project / "params.yaml").read_bytes() == before


def test_good_params_pass_with_the_values_dvc_would_write(project):
    (project / "cars").mkdir()
    runner.check_params(project, ["train.lr=0.02", "data.source=local", "data.path=cars"])
    raw = runner.effective_params(project, ["train.lr=0.02", "++train.epochs=3"])
    assert raw["train"]["lr"] == 0.02 and raw["train"]["epochs"] == 3


@pytest.mark.parametrize("override,message", [
    ("experiments.cnn_basic.model.arch=resnet9000", "got 'resnet9000' (did you mean 'resnet50'?)"),
    ("experiments.tl_resnet50_frozen.model.weights=IMAGENET1K_V9", "'IMAGENET1K_V9' is not a weights name"),
])
def test_a_misspelt_model_name_is_refused_before_dvc_runs(project, override, message):
    with pytest.raises(UserError, match="nothing ran and params.yaml is unchanged") as caught:
        runner.check_params(project, [override])
    assert message in str(caught.value)


@pytest.mark.parametrize("overrides,line", [
    (["train.epochs=3"], "train.epochs=3 reaches no experiment: every trained experiment sets its own epochs "
                         "(tl_resnet50_frozen: 30, "),
    (["data.source=synthetic", "data.path=/no/such"],
     "data.path=/no/such is ignored while data.source=synthetic (read only while it is 'local')"),
])
def test_a_knob_no_stage_reads_is_refused_naming_what_shadows_it(project, overrides, line):
    with pytest.raises(UserError) as caught:
        runner.check_params(project, overrides)
    assert str(caught.value).startswith(line)
    assert str(caught.value).endswith("nothing ran and params.yaml is unchanged (--allow-unused runs it anyway)")


def test_allow_unused_turns_the_refusal_into_one_warning_line(project, capsys):
    runner.check_params(project, ["++train.epochs=3"], allow_unused=True)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: train.epochs=3 reaches no experiment: ")


def test_only_the_knobs_the_user_typed_must_reach_a_stage(project):
    """An overrides file is a setting as a whole: its section defaults may be shadowed, the user's own -S not."""
    runner.check_params(project, ["train.epochs=3", "train.lr=0.02"], knobs=["train.lr=0.02"])


def test_a_sweep_s_params_are_the_commit_s_not_the_workspace_s(project):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=project, check=True)
    (project / "params.yaml").write_text("train: {lr: -1}\n")          # the workspace's: no job sees it
    runner.check_params_at(project, "HEAD", ["train.lr=0.02", "data.source=local", "data.path=on/the/cluster"])
    with pytest.raises(UserError, match="train.epochs=3 reaches no experiment"):
        runner.check_params_at(project, "HEAD", ["train.epochs=3"])


def test_the_local_data_recipe_of_the_docs_keeps_params_yaml_and_passes_the_check(project):
    """docs/data.md's recipe for a local copy goes through scripts/exp_run.py (a plain `dvc exp run -S` rewrites
    params.yaml), and each of its -S is valid and reaches a stage."""
    (recipe,) = [line.strip() for line in (ROOT / "docs" / "data.md").read_text().splitlines()
                 if line.startswith("    ") and "-S data.source=local" in line]
    assert recipe.startswith("python scripts/exp_run.py "), recipe
    (project / "cars").mkdir()
    overrides = [o if not o.startswith("data.path=") else "data.path=cars" for o in runner.set_params(recipe.split())]
    runner.check_params(project, overrides)


def test_experiment_name_finds_every_spelling_of_dash_n():
    assert runner.experiment_name(["-S", "a=1", "-n", "x"]) == "x"
    assert runner.experiment_name(["--name=y", "train@x"]) == "y"
    assert runner.experiment_name(["-nz"]) == "z" and runner.experiment_name(["-S", "n=1"]) is None


# ------------------------------------------------------------------------------------------------ git repair
def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "-c", "init.defaultBranch=main", "init", "-q")
    (tmp_path / "params.yaml").write_text("# kept\ntrain: {lr: 0.01}\n")
    (tmp_path / "a.txt").write_text("a\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "init")
    (tmp_path / "a.txt").write_text("a, staged by the user\n")
    _git(tmp_path, "add", "a.txt")            # the user's own staging must survive
    return tmp_path


def _mess_up_like_a_killed_dvc(repo: Path) -> None:
    """What a workspace `dvc exp run` killed mid-stage leaves: HEAD detached, refs, staged params and outputs."""
    head = _git(repo, "rev-parse", "HEAD").strip()
    _git(repo, "update-ref", "refs/exps/exec/EXEC_BASELINE", head)
    _git(repo, "update-ref", "refs/exps/exec/EXEC_MERGE", head)
    _git(repo, "checkout", "-q", "--detach", head)     # DVC's reflog entry: "moving from main to <sha>"
    (repo / "params.yaml").write_text("train:\n  lr: 0.5\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    _git(repo, "add", "params.yaml", "dvc.lock")
    run_dir = repo / runner.WORKSPACE_RUN
    run_dir.mkdir(parents=True)
    (run_dir / "workspace.json").write_text('{"pid": 999999999}')


def _state(repo: Path) -> tuple:
    return (_git(repo, "status", "--porcelain"), _git(repo, "diff", "--cached"), (repo / ".git" / "HEAD").read_text(),
            (repo / "params.yaml").read_bytes(), _git(repo, "for-each-ref", "refs/exps/"))


def test_repo_state_puts_back_head_index_refs_and_params(repo):
    before = _state(repo)
    state = runner.RepoState.capture(repo)
    _mess_up_like_a_killed_dvc(repo)
    (repo / ".git" / "index.lock").write_text("")
    assert set(state.restore()) >= {"params.yaml", "HEAD", "index", "refs/exps/exec/EXEC_BASELINE"}
    after = _state(repo)
    assert after[1:] == before[1:]
    assert after[0] == before[0] + "?? dvc.lock\n"    # the run's outputs stay, untracked
    assert not (repo / ".git" / "index.lock").exists()
    assert not (repo / runner.WORKSPACE_RUN).exists()


def test_recover_clears_what_a_killed_hand_run_left(repo):
    _git(repo, "reset", "-q")                 # a hand-run `dvc exp run` resets the index anyway
    _mess_up_like_a_killed_dvc(repo)
    done = runner.recover(repo)
    assert "HEAD re-attached to main" in done
    assert (repo / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert _git(repo, "diff", "--cached") == ""
    assert _git(repo, "for-each-ref", "refs/exps/exec/") == ""
    assert not (repo / runner.WORKSPACE_RUN).exists()
    assert any("git checkout params.yaml" in line for line in done)   # reported, not overwritten
    assert (repo / "params.yaml").read_text() == "train:\n  lr: 0.5\n"
    assert runner.recover(repo) == [done[-1]]                          # nothing left but the note


def test_recover_reattaches_head_that_a_later_run_kept_detached(repo):
    """After a killed run, the next `dvc exp run` succeeds but "restores" HEAD to the detached commit and removes
    the exec refs: only the reflog says that DVC, not the user, detached it."""
    _mess_up_like_a_killed_dvc(repo)
    _git(repo, "reset", "-q")
    for ref in ("EXEC_BASELINE", "EXEC_MERGE"):
        _git(repo, "update-ref", "-d", f"refs/exps/exec/{ref}")
    head = _git(repo, "rev-parse", "HEAD").strip()
    with open(repo / ".git" / "logs" / "HEAD", "a") as log:    # what DVC writes; git skips an unchanged ref
        log.write(f"{head} {head} dvc <dvc@example.com> 1700000000 +0000\tdvc: Restore HEAD to '{head}'\n")
    assert "HEAD re-attached to main" in runner.recover(repo)
    assert (repo / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"


def test_recover_leaves_a_head_the_user_detached(repo):
    _git(repo, "checkout", "-q", "--detach", _git(repo, "rev-parse", "HEAD").strip())
    head = (repo / ".git" / "HEAD").read_text()
    assert not any("HEAD" in line for line in runner.recover(repo))
    assert (repo / ".git" / "HEAD").read_text() == head
    assert _git(repo, "diff", "--cached", "--name-only") == "a.txt\n"    # the user's staging untouched


# ------------------------------------------------------------------------------------------------ the wrapper
#: A `dvc exp run` that misbehaves like a killed one: it detaches HEAD, stages params.yaml, starts a stage (the fake
#: stage script, with DVC_STAGE set) and, when that stage fails, exits without any clean-up. It records whether a
#: signal reached it (it must not: the wrapper keeps DVC out of the terminal's process group).
FAKE_DVC = """\
import os, pathlib, signal, subprocess, sys
here = pathlib.Path(sys.argv[1])
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, f: (here / "dvc_signalled").touch())
run = lambda *a: subprocess.run(["git", *a], check=True, capture_output=True)
run("update-ref", "refs/exps/exec/EXEC_BASELINE", "HEAD")
run("checkout", "-q", "--detach")
pathlib.Path("params.yaml").write_text("train:\\n  lr: 0.5\\n")
run("add", "params.yaml")
(here / "between_stages").touch()
while (here / "hold").exists():         # the test holds DVC "between two stages" until it removes this
    pass
stage = subprocess.run([sys.executable, str(here / "stages" / "fake.py"), str(here), "0"],
                       env={**os.environ, "DVC_STAGE": "fake"})
(here / "stage_status").write_text(str(stage.returncode))
sys.exit(1)
"""


def _wrapper(repo: Path, work: Path) -> subprocess.Popen:
    """The demo's run_guarded around the fake DVC, as its own process group (a terminal's foreground job)."""
    (work / "stages").mkdir()
    (work / "stages" / "fake.py").write_text(FAKE_STAGE)
    (work / "dvc.py").write_text(FAKE_DVC)
    wrapper = ("import sys; from pathlib import Path; from carbench.core import cli; from carbench.workshop import runner; "
               f"cli.run_command(lambda: runner.run_guarded([sys.executable, {str(work / 'dvc.py')!r}, "
               f"{str(work)!r}], Path('.')))")
    return subprocess.Popen([sys.executable, "-c", wrapper], cwd=repo, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_signals)


def test_a_stage_dvc_starts_after_the_signal_stops_before_its_main(repo, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    (work / "hold").touch()
    before = _state(repo)
    proc = _wrapper(repo, work)
    _wait(work / "between_stages", proc)
    os.killpg(proc.pid, signal.SIGTERM)       # no stage runs now: nothing to forward the signal to
    time.sleep(1)
    (work / "hold").unlink()                  # DVC goes on to its next stage
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert (work / "stage_status").read_text() == "130"
    assert not (work / "ready").exists(), "the stage started after the signal ran its main"
    assert _state(repo) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_wrapper_stops_the_stage_not_dvc_and_repairs_git(repo, tmp_path_factory, sig):
    work = tmp_path_factory.mktemp("work")
    before = _state(repo)
    proc = _wrapper(repo, work)
    _wait(work / "ready", proc)
    start = time.monotonic()
    os.killpg(proc.pid, sig)                   # the whole foreground group, as a terminal's Ctrl-C
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 10
    assert proc.returncode == 128 + sig, err
    name = signal.Signals(sig).name
    assert err.splitlines() == [f"interrupted: dvc exp run stopped by {name}; params.yaml and the git index are as "
                                f"before it, finished stages are kept{LINE_END}"]
    assert (work / "stage_status").read_text() == str(128 + sig), "the stage was not stopped by the signal"
    assert not (work / "dvc_signalled").exists(), "DVC itself was signalled"
    assert not (work / "out").exists()
    assert _state(repo) == before


def test_failed_run_puts_git_back_and_says_so(repo, tmp_path):
    before = _state(repo)
    mess = ("import subprocess, pathlib; pathlib.Path('params.yaml').write_text('x: 1\\n'); "
            "subprocess.run(['git', 'checkout', '-q', '--detach'], check=True); "
            "subprocess.run(['git', 'add', 'params.yaml'], check=True); raise SystemExit(3)")
    assert runner.run_guarded([sys.executable, "-c", mess], repo) == 3
    assert _state(repo) == before


#: `dvc exp run -n NAME` as DVC 3 treats the name: refused when refs/exps/<commit>/NAME exists, else the run (here:
#: ``ok`` says whether it succeeds) creates that ref.
NAMED_DVC = """\
#!{python}
import subprocess, sys
from dvc.repo.experiments.refs import ExpRefInfo
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True)
ref = str(ExpRefInfo(baseline_sha=git("rev-parse", "HEAD").stdout.strip(), name=sys.argv[sys.argv.index("-n") + 1]))
if git("rev-parse", "--verify", "-q", ref).returncode == 0:
    sys.exit("ERROR: Experiment conflicts with existing experiment")
if {ok}:
    git("update-ref", ref, git("commit-tree", "HEAD^{{tree}}", "-p", "HEAD", "-m", "new").stdout.strip())
sys.exit(0 if {ok} else 1)
"""


def _named_dvc(tmp_path: Path, monkeypatch, ok: bool) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text(NAMED_DVC.format(python=sys.executable, ok=ok))
    (bin_dir / "dvc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _exp_ref(repo: Path, name: str) -> str:
    from dvc.repo.experiments.refs import ExpRefInfo

    return str(ExpRefInfo(baseline_sha=_git(repo, "rev-parse", "HEAD").strip(), name=name))


@pytest.mark.parametrize("ok", [True, False], ids=["succeeds", "fails"])
def test_a_named_run_again_replaces_the_experiment_and_a_failed_one_keeps_it(repo, tmp_path_factory, monkeypatch,
                                                                              capsys, ok):
    _named_dvc(tmp_path_factory.mktemp("fake"), monkeypatch, ok)
    ref = _exp_ref(repo, "base")
    _git(repo, "update-ref", ref, "HEAD")
    old = _git(repo, "rev-parse", ref).strip()
    status = runner.run_guarded(["dvc", "exp", "run", "-n", "base"], repo, shown="dvc exp run -n base", replace=True)
    assert status == (0 if ok else 1)
    assert capsys.readouterr().out.splitlines()[:2] == [
        "+ dvc exp run -n base", "(experiment 'base' exists on this commit: this run replaces it)"]
    now = _git(repo, "rev-parse", ref).strip()
    assert (now != old) if ok else (now == old)


def test_exp_run_script_refuses_bad_params_before_dvc_runs():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "exp_run.py"), "-S", "++train.lrr=1"],
                            capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""                # not even the `+ dvc exp run` line: DVC never started
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: unknown key train.lrr") and line.endswith("params.yaml is unchanged")


def test_exp_run_script_refuses_a_misspelt_model_name_before_dvc_runs():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "exp_run.py"), "-S",
                             "experiments.cnn_basic.model.arch=resnet9000"], capture_output=True, text=True,
                            env=_env(), timeout=120)
    assert (result.returncode, result.stdout) == (1, "")
    (line,) = result.stderr.splitlines()
    assert "got 'resnet9000' (did you mean 'resnet50'?)" in line and line.endswith("params.yaml is unchanged")


def test_recover_script_says_what_it_does():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "recover.py"), "--help"], capture_output=True,
                            text=True, env=_env(), timeout=60)
    assert result.returncode == 0 and "hand-run `dvc exp run`" in result.stdout
