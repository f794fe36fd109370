"""carbench.train.train_log: the dvclive directory (resumed epochs replayed), the overlaid curves, the log lines,
and silence on torchrun ranks > 0."""
from __future__ import annotations

import json

import pytest

from carbench.train import train_log as L


def _row(epoch: int) -> dict:
    return {"train/loss": 2.0 - epoch, "train/top1": 0.25 * epoch, "val/loss": 1.75 - epoch / 2,
            "val/top1": 0.2 * epoch, "lr": 0.01 / (epoch + 1), "epoch_seconds": 1.5, "images_per_second": 640.0}


def test_open_live_replays_the_resumed_epochs_as_steps(tmp_path):
    history = [_row(0), _row(1)]
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "stale.txt").write_text("from an earlier run")
    live = L.open_live(tmp_path / "live", history)
    L.log_epoch(live, _row(2))
    live.summary["best_val_top1"] = 0.4
    live.end()
    assert not (tmp_path / "live" / "stale.txt").exists()                       # a fresh directory
    rows = (tmp_path / "live" / "plots" / "metrics" / "val" / "top1.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "top1"]
    assert [r.split("\t")[:2] for r in rows[1:]] == [["0", "0.0"], ["1", "0.2"], ["2", "0.4"]]
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["best_val_top1"] == 0.4 and metrics["step"] == 2 and metrics["val"]["top1"] == 0.4


def test_every_metric_key_is_logged_each_epoch():
    logged = []

    class Recorder(L.NoLive):
        def log_metric(self, name, value):
            logged.append(name)

    L.log_epoch(Recorder(), _row(1))
    assert tuple(logged) == L.METRIC_KEYS
    with pytest.raises(KeyError):                       # a row missing a key is a bug, not a silent gap
        L.log_epoch(Recorder(), {k: v for k, v in _row(1).items() if k != "lr"})


def test_curves_overlay_train_and_val_per_experiment(tmp_path):
    L.write_curves(tmp_path, "cnn_basic", [_row(0), _row(1)])
    assert (tmp_path / "top1" / "cnn_basic.tsv").read_text() == "step\ttrain\tval\n0\t0.0\t0.0\n1\t0.25\t0.2\n"
    assert (tmp_path / "loss" / "cnn_basic.tsv").read_text().splitlines()[1:] == ["0\t2.0\t1.75", "1\t1.0\t1.25"]


def test_log_lines(capsys):
    line = L.epoch_line("cnn_basic", 1, 8, _row(1), " | blocks 2/4")
    assert line == ("[cnn_basic] epoch 2/8: train loss 1.0000 top1 0.2500 | val loss 1.2500 top1 0.2000 | lr 0.005"
                    " | blocks 2/4 | 1.5s, 640 img/s")
    refit = L.refit_line("cnn_basic", 0, 3, {"refit/loss": 0.5, "refit/top1": 0.875, "epoch_seconds": 2.25})
    assert refit == "[cnn_basic] refit epoch 1/3: train loss 0.5000 top1 0.8750 | 2.2s"
    L.say("hello")
    assert capsys.readouterr() == ("", "hello\n")                     # stderr only: stdout stays clean


def test_ranks_above_zero_say_nothing_and_show_no_bar(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert not L.is_main_process()
    L.say("hello")
    assert capsys.readouterr() == ("", "")
    assert isinstance(L.progress_bar(0, 3, 10), L.NoBar)
    monkeypatch.setenv("RANK", "0")
    assert L.is_main_process()
