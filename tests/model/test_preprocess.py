"""carbench.model.preprocess: the eval-time resize and normalisation every loaded model's input goes through."""
from __future__ import annotations

import torch

from carbench.model import preprocess as P

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STORE, SIZE = 24, 16


def test_eval_preprocess_resizes_and_normalises():
    grey = torch.full((2, STORE, STORE, 3), 128, dtype=torch.uint8)
    out = P.eval_preprocess(grey, SIZE, MEAN, STD)
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    assert out.shape == (2, 3, SIZE, SIZE)
    assert torch.allclose(out, expected.expand_as(out), atol=1e-5)
