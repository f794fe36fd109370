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


def test_resize_size_takes_the_centre_crop_as_torchvision_resize_then_centercrop():
    from torchvision.transforms import v2

    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = P.eval_preprocess(images, 28, MEAN, STD, resize_size=32)      # stored at resize_size: a pure crop
    reference = P.normalize(v2.CenterCrop(28)(images), MEAN, STD)
    assert out.shape == (2, 3, 28, 28) and torch.equal(out, reference)
    larger = torch.nn.functional.interpolate(images.float(), size=(64, 64), mode="nearest").to(torch.uint8)
    twice = P.eval_preprocess(larger, 28, MEAN, STD, resize_size=32)    # stored larger: crop 56 of 64, then resize
    assert twice.shape == (2, 3, 28, 28) and torch.allclose(twice, P.eval_preprocess(larger[..., 4:60, 4:60], 28,
                                                                                     MEAN, STD))
    assert not torch.equal(P.eval_preprocess(images, 28, MEAN, STD), out)   # off: the whole image, resized
