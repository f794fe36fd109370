"""Benchmarks outside the pipeline, behind ``scripts/benchmark.py`` and ``scripts/device_plan.py``: the crop stage
and the training loop against plain baselines (:mod:`.crop_pool`, :mod:`.train_loop`), the nine defaults at Stanford Cars'
size through ``dvc repro`` against their bare compute (:mod:`.scale`, with :mod:`.workspace`, :mod:`.repro`,
:mod:`.bare`, :mod:`.gpu`), and the GPU device plan's extrapolation and plumbing (:mod:`.extrapolate`,
:mod:`.processes`). No pipeline module imports this package."""
