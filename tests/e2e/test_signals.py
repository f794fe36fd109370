"""End to end: Ctrl-C, SIGTERM, a killed DVC and bad params against the real demo (`scripts/offline.py`) on a few
stages of the tiny project. Signals go to process groups with default dispositions, as a terminal and a cluster
scheduler send them. After each: the git index, HEAD and params.yaml are as before, and the same command run again
finishes with the numbers of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from support.project import (
    env,
    make_project,
    ran_stages,
    run,
    strip_timings,
    tiny_overrides,
)

pytestmark = pytest.mark.e2e

NAME = "cnn_basic"
#: download, split, crop, resolve, train@cnn_basic (12 epochs here), evaluate@cnn_basic: the chain to one result.
TARGET = f"evaluate@{NAME}"
#: The outputs that carry the result, compared with an uninterrupted run.
RESULTS = [f"metrics/train/{NAME}/metrics.json", f"metrics/eval/{NAME}.json", f"metrics/headline/{NAME}.json"]
#: "Stop within seconds": from the signal to the demo's exit, stage clean-up and git repair included (2 busy cores).
STOP_WITHIN_S = 20
LINE_END = "; run the same command again to continue"


def _default_signals() -> None:
    # A test runner started in the background inherits SIGINT ignored; a terminal's job gets the defaults.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


class Demo:
    """`python scripts/offline.py --overrides <tiny> TARGET` in a fresh clone, started as its own process group."""

    def __init__(self, root: Path, name: str):
        self.environ = env(root / "torch_home")
        self.path = make_project(root / name, None)
        self.overrides = root / "tiny.yaml"
        self.overrides.write_text(yaml.safe_dump(tiny_overrides(), sort_keys=False))
        self.cmd = [sys.executable, "scripts/offline.py", "--overrides", str(self.overrides), TARGET]

    def start(self, out: Path) -> subprocess.Popen:
        self.out = out
        return subprocess.Popen(self.cmd, cwd=self.path, env=self.environ, stdout=open(out, "w"),
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_signals)

    def output(self) -> str:
        return self.out.read_text()

    def rerun(self) -> tuple[subprocess.CompletedProcess, float]:
        start = time.monotonic()
        result = run(self.cmd, self.path, self.environ)
        return result, time.monotonic() - start


def _repo(path: Path) -> dict:
    """What a run must leave as it found it: tracked-file status, the index, HEAD, params.yaml, DVC's exec refs."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True).stdout

    return {"status": [line for line in git("status", "--porcelain").splitlines() if not line.startswith("??")],
            "cached": git("diff", "--cached"), "head": (path / ".git" / "HEAD").read_text(),
            "params": (path / "params.yaml").read_bytes(),
            "exec_refs": [r for r in git("for-each-ref", "--format=%(refname)", "refs/exps/exec/").split()
                          if not r.endswith("EXEC_HEAD")]}


def _results(path: Path) -> dict:
    """The result files without timings and without the checkpoint's file size: a resumed run pickles the same
    values with other object sharing (a few bytes more), so the size differs while every tensor is equal."""
    out = {rel: strip_timings(json.loads((path / rel).read_text())) for rel in RESULTS}
    out[f"metrics/eval/{NAME}.json"].pop("size_mb")
    return out


def _weights(path: Path) -> dict:
    import torch

    return torch.load(path / "models" / NAME / "best.pt", weights_only=True, map_location="cpu")["state_dict"]


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the demo ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _locked_stages(path: Path) -> set[str]:
    """The stages dvc.lock records; empty while it is missing or half written."""
    try:
        return set((yaml.safe_load((path / "dvc.lock").read_text()) or {}).get("stages", {}))
    except (OSError, yaml.YAMLError, AttributeError):
        return set()


def _stopped(proc: subprocess.Popen) -> float:
    start = time.monotonic()
    proc.wait(timeout=120)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted demo of TARGET: (its project, its results, its wall time)."""
    demo = Demo(tmp_path_factory.mktemp("signals"), "reference")
    result, seconds = demo.rerun()
    assert TARGET in ran_stages(result.stdout)
    return demo, _results(demo.path), seconds


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def _check_interrupted(demo: Demo, proc: subprocess.Popen, sig: int, before: dict, waited: float) -> None:
    output = demo.output()
    assert proc.returncode == 128 + sig, output
    assert waited < STOP_WITHIN_S, f"took {waited:.1f} s to stop"
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: dvc exp run stopped by {signal.Signals(sig).name};"), output
    assert last.endswith(LINE_END), output
    assert "Traceback" not in output, output
    # The stages stay quiet under the demo: its line is the only `interrupted:` one.
    assert sum(line.startswith("interrupted:") for line in output.splitlines()) == 1, output
    assert _repo(demo.path) == before
    assert not any(p.info["environ"] and p.info["environ"].get("DVC_STAGE")
                   and str(demo.path) in (p.info["cwd"] or "")
                   for p in psutil.process_iter(["environ", "cwd"])), "a stage outlived the demo"


def test_ctrl_c_in_the_middle_of_training_resumes_to_the_same_result(reference, tmp_path_factory):
    _, expected, scratch_seconds = reference
    demo = Demo(tmp_path_factory.mktemp("sigint"), "project")
    before = _repo(demo.path)
    proc = demo.start(demo.path.parent / "out.txt")
    resume = demo.path / ".cache" / "resume" / f"{NAME}.pt"
    _wait_for(resume.exists, proc, "the first epoch of training")   # state kept: training is under way
    os.killpg(proc.pid, signal.SIGINT)
    _check_interrupted(demo, proc, signal.SIGINT, before, _stopped(proc))
    assert resume.exists(), "the interrupted training lost its resume state"

    result, seconds = demo.rerun()
    ran = ran_stages(result.stdout)
    assert ran == {f"train@{NAME}", TARGET}, "finished stages must come back from DVC, not run again"
    assert "resum" in result.stdout.lower()
    assert _results(demo.path) == expected
    reference_weights = _weights(reference[0].path)
    assert all(torch_equal(t, reference_weights[k]) for k, t in _weights(demo.path).items())
    assert _repo(demo.path) == before
    print(f"rerun after Ctrl-C: {seconds:.1f} s, run from scratch: {scratch_seconds:.1f} s")


def test_sigterm_at_a_stage_boundary_continues_with_the_next_stage(reference, tmp_path_factory):
    _, expected, _ = reference
    demo = Demo(tmp_path_factory.mktemp("sigterm"), "project")
    before = _repo(demo.path)
    proc = demo.start(demo.path.parent / "out.txt")
    # The boundary is where DVC has recorded split in dvc.lock, not where split's process ends: between the two,
    # DVC still hashes and caches the outputs, and a signal there rightly runs split again.
    _wait_for(lambda: "split" in _locked_stages(demo.path), proc, "DVC recording the split stage")
    os.killpg(proc.pid, signal.SIGTERM)
    _check_interrupted(demo, proc, signal.SIGTERM, before, _stopped(proc))

    result, _ = demo.rerun()
    ran = ran_stages(result.stdout)
    assert not ran & {"download", "split"}, ran
    assert TARGET in ran
    assert _results(demo.path) == expected
    assert _repo(demo.path) == before


def test_sigterm_to_every_process_killing_dvc_too_leaves_git_as_it_was(reference, tmp_path_factory):
    """A scheduler signals every process of the job: DVC itself dies on the spot, its clean-up never runs (HEAD
    detached, the experiment staged in the index); the demo repairs it and the next run carries on."""
    _, expected, _ = reference
    demo = Demo(tmp_path_factory.mktemp("sigterm_all"), "project")
    before = _repo(demo.path)
    proc = demo.start(demo.path.parent / "out.txt")
    resume = demo.path / ".cache" / "resume" / f"{NAME}.pt"
    _wait_for(resume.exists, proc, "the first epoch of training")
    groups = {os.getpgid(p.pid) for p in psutil.Process(proc.pid).children(recursive=True)} | {proc.pid}
    assert (demo.path / ".git" / "HEAD").read_text() != before["head"], "DVC did not detach HEAD: nothing tested"
    for group in groups:
        os.killpg(group, signal.SIGTERM)
    _check_interrupted(demo, proc, signal.SIGTERM, before, _stopped(proc))

    result, _ = demo.rerun()
    assert ran_stages(result.stdout) == {f"train@{NAME}", TARGET}
    assert _results(demo.path) == expected


BAD_PARAMS = [
    (["-S", "++train.lrr=1"], "unknown key train.lrr"),
    (["-S", "train.lrr=1"], "refused"),
    (["-S", "train.lr=-0.1"], "train.lr must be > 0"),
    (["-S", "data.source=local"], "data.path must name a directory"),
    (["-S", "data.source=local", "-S", "data.path=no/such/folder"], "data.path names 'no/such/folder'"),
]


@pytest.mark.parametrize("args,message", BAD_PARAMS, ids=[" ".join(a) for a, _ in BAD_PARAMS])
def test_bad_params_are_refused_before_anything_is_deleted(reference, args, message):
    demo = reference[0]
    outputs = ["data/resolved/train/cnn_basic.yaml", "data/raw/manifest.csv", "metrics/data.json",
               f"metrics/headline/{NAME}.json"]
    before = _repo(demo.path), {rel: (demo.path / rel).read_bytes() for rel in outputs}
    result = run([*demo.cmd, *args], demo.path, demo.environ, check=False)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], result.stderr
    assert "nothing ran and params.yaml is unchanged" in errors[0]
    assert "Running stage" not in result.stdout
    assert (_repo(demo.path), {rel: (demo.path / rel).read_bytes() for rel in outputs}) == before
