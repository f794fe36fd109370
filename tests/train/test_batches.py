"""carbench.train.batches: a streamed split is read one batch ahead in a background thread, and nothing changes."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from support.training import CLASSES, COUNTS, assert_same_weights, run, tiny, weights_of

from carbench.train import batches as B

CPU = torch.device("cpu")


def datasets(store):
    """The four kinds of batch source the engine iterates, over the same rows where they can be."""
    streamed = B.load_split_data(store, "train", CPU, CLASSES, budget=0)
    resident = B.load_split_data(store, "train", CPU, CLASSES)
    val = B.load_split_data(store, "val", CPU, CLASSES)
    features = B.FeatureData(torch.randn(COUNTS["train"], 6), resident.labels)
    return {"streamed": streamed, "resident": resident, "features": features,
            "train+val, streamed part": B.ConcatData([streamed, val])}


@pytest.mark.parametrize("kind", ["streamed", "resident", "features", "train+val, streamed part"])
@pytest.mark.parametrize("steps", [None, 2])
def test_batches_are_the_batch_by_batch_slices(store, kind, steps):
    data = datasets(store)[kind]
    assert data.streamed == kind.startswith(("streamed", "train+val"))
    order = B.Order.make(torch.randperm(len(data), generator=torch.Generator().manual_seed(1)), CPU)
    got = list(B.batches(data, order, 5, steps))
    starts = list(range(0, len(data), 5))[:steps]
    assert len(got) == len(starts)
    for (x, y), start in zip(got, starts):
        want_x, want_y = data.batch(order, start, min(start + 5, len(data)))
        assert torch.equal(x, want_x) and torch.equal(y, want_y)


class RecordingRows:
    """A stand-in for the memory-mapped store: records which thread reads which rows."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.shape = images, images.shape
        self.reads: list[tuple[str, list[int]]] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        self.reads.append((threading.current_thread().name, list(idx)))
        return self.images[idx]


def test_streamed_rows_are_read_one_batch_ahead_in_a_background_thread(store):
    source = B.load_split_data(store, "train", CPU, CLASSES, budget=0)
    rows = RecordingRows(np.asarray(source.source))
    data = B.SplitData(rows, source.labels.numpy(), CPU, resident=False)
    order = B.Order.make(torch.arange(len(data)).flip(0), CPU)
    it = B.batches(data, order, 8)
    next(it)                                    # batch 0 handed out: batch 1 is being read meanwhile
    deadline = time.monotonic() + 10
    while len(rows.reads) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(rows.reads) == 2                 # read ahead before the caller asked for batch 1
    list(it)
    assert all(name.startswith(B.PREFETCH_THREAD) for name, _ in rows.reads)
    expected = order.cpu.tolist()
    assert [i for _, idx in rows.reads for i in idx] == expected   # every row once, in order


def test_a_streamed_run_trains_the_same_model_as_a_resident_one(tmp_path, store, monkeypatch, capsys):
    """Forcing a zero memory budget streams every split (train, val, the refit's train+val): same weights."""
    exp, base = tiny(train={"epochs": 2, "augment": "standard", "refit": True})
    resident, _ = run(tmp_path, store, exp, base, "resident")
    assert "resident on the device" in capsys.readouterr().err
    monkeypatch.setattr(B, "RESIDENT_FRACTION", 0.0)
    streamed, _ = run(tmp_path, store, exp, base, "streamed")
    assert "streamed from the memory-mapped store" in capsys.readouterr().err
    assert_same_weights(weights_of(resident), weights_of(streamed))
