"""carbench.train.sampler: the m_per_class order gives every batch batch_size / m classes with m photos each,
reproducibly from the trainer's generator, without touching numpy's global random state."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from carbench.core.errors import DataError
from carbench.train.sampler import m_per_class_order

# 7 classes of uneven sizes; class 6 has fewer photos than m (some repeat)
LABELS = torch.tensor([c for c, n in enumerate([9, 5, 12, 4, 7, 6, 2]) for _ in range(n)])


def order(seed: int, m: int = 4, batch: int = 12, steps: int = 6) -> torch.Tensor:
    return m_per_class_order(LABELS, m, batch, steps, torch.Generator().manual_seed(seed))


def test_every_batch_holds_batch_over_m_classes_with_m_photos_each():
    drawn = order(0)
    assert drawn.dtype == torch.int64 and len(drawn) == 6 * 12
    seen = set()
    for batch in drawn.view(6, 12):
        counts = Counter(LABELS[batch].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}, counts
        seen |= set(counts)
    assert len(seen) > 3                                # the classes change from batch to batch
    assert 0 <= int(drawn.min()) and int(drawn.max()) < len(LABELS)


def test_the_order_is_seeded_by_the_generator_and_leaves_numpy_alone():
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert np.array_equal(np.random.get_state()[1], state)


def test_too_few_classes_for_a_batch_is_refused():
    with pytest.raises(DataError, match="cannot fill a batch"):
        order(0, m=2, batch=16)                        # 7 classes x 2 < 16
