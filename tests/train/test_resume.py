"""carbench.train.resume: a run interrupted with every recipe option on resumes to the uninterrupted result; a
Ctrl-C while a resume file (or a checkpoint) is being written stops with one line and leaves a whole file."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from support.training import (
    Interrupt,
    assert_same_weights,
    deterministic_metrics,
    run,
    tiny,
    weights_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("after", [1, 3])  # interrupted in the fit phase / in the refit phase
def test_resume_with_every_recipe_option_equals_an_uninterrupted_run(tmp_path, store, capsys, after):
    exp, base = tiny(model={"layer_decay": 0.8, "head_warmup_epochs": 1},
                     train={"epochs": 3, "refit": True, "ema_decay": 0.5, "mixup_alpha": 0.4, "cutmix_alpha": 1.0,
                            "augment": "light", "crop_scale": (0.3, 1.0), "crop_ratio": (0.5, 2.0)})
    out_a, live_a = run(tmp_path, store, exp, base, "a")
    assert torch.load(out_a / "best.pt", weights_only=True)["epoch"] >= 1  # so the refit has an epoch 3
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, store, exp, base, "b", on_epoch_end=Interrupt(after=after))
    capsys.readouterr()
    out_b, live_b = run(tmp_path, store, exp, base, "b")
    err = capsys.readouterr().err
    assert ("resuming the refit" in err) == (after >= 3)
    assert_same_weights(weights_of(out_a), weights_of(out_b))
    assert deterministic_metrics(live_a) == deterministic_metrics(live_b)


#: The child: writes a previous file, then a large state, sending itself SIGINT from inside torch.save (its third
#: write to the file, from the main thread: the stop lands mid-write however busy the machine is).
_STOP_WHILE_WRITING = textwrap.dedent("""
    import os, pathlib, signal, sys
    import torch
    from carbench.core import cli
    from carbench.model.checkpoint import save_checkpoint
    from carbench.train.resume import save_resume_file

    path, writer = pathlib.Path(sys.argv[1]), sys.argv[2]
    save = (lambda state: save_resume_file(path, state)) if writer == "resume" else \\
        (lambda state: save_checkpoint(state, path))
    armed = []
    real_save = torch.save


    class StopWhileWriting:
        \"\"\"The file torch.save writes to, sending SIGINT at its third write.\"\"\"

        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                print("signal sent while writing", flush=True)
                os.kill(os.getpid(), signal.SIGINT)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)


    def save_and_stop(obj, f, *args, **kwargs):
        return real_save(obj, StopWhileWriting(f) if armed else f, *args, **kwargs)


    def main():
        save({"epoch": 1, "weights": torch.zeros(10)})           # the previous file
        state = {"epoch": 2, **{f"t{i}": torch.full((1_000_000,), float(i)) for i in range(16)}}   # 64 MB
        armed.append(True)
        torch.save = save_and_stop
        save(state)
        print("not stopped", flush=True)


    cli.run_command(main)
""")


def test_a_metric_learning_run_resumes_with_its_proxies_and_sampler_to_the_uninterrupted_result(tmp_path, store):
    # proxies at 100x the lr: a resume that lost them (or redrew the class-balanced order) ends elsewhere
    exp, base = tiny(model={"embedding_dim": 8, "head_warmup_epochs": 1},
                     train={"epochs": 3, "loss": "proxy_anchor", "proxy_lr_mult": 100.0, "sampler": "m_per_class",
                            "m_per_class": 2, "freeze_bn": True, "select": "map_at_r", "augment": "light"})
    out_a, live_a = run(tmp_path, store, exp, base, "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, store, exp, base, "b", on_epoch_end=Interrupt(after=1))
    out_b, live_b = run(tmp_path, store, exp, base, "b")
    assert_same_weights(weights_of(out_a), weights_of(out_b))
    assert deterministic_metrics(live_a) == deterministic_metrics(live_b)


@pytest.mark.parametrize("writer", ["resume", "checkpoint"])
def test_ctrl_c_while_a_file_is_written_is_one_line_and_leaves_it_whole(tmp_path, writer):
    path = tmp_path / "state.pt"
    script = tmp_path / "stop.py"
    script.write_text(_STOP_WHILE_WRITING)
    # SIGINT at its default, as a terminal starts a command (a shell's background job would inherit it ignored)
    done = subprocess.run([sys.executable, str(script), str(path), writer], capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.stdout == "signal sent while writing\n"                # it landed inside torch.save
    assert done.returncode == 130 and "Traceback" not in done.stderr
    assert done.stderr == "interrupted: stop.py stopped by SIGINT; run the same command again to continue\n"
    saved = torch.load(path, weights_only=True)                       # whole: the write ended before the stop
    assert saved["epoch"] == 2 and float(saved["t15"][-1]) == 15.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt", "stop.py"]   # no temporary file left
