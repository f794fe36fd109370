"""carbench.workshop.bench.estimate: the laptop and paper presets' wall-time estimates, figures in, figures out."""
from __future__ import annotations

import json

import pytest

from carbench.workshop.bench import estimate as E


def test_laptop_scales_the_work_after_the_first_batch_and_keeps_the_fixed_part(tmp_path):
    log = tmp_path / "stages.jsonl"
    lines = [{"stage": "download", "seconds": 5, "cpu_s": 1},
             {"stage": "resolve", "seconds": 9, "cpu_s": 3},
             {"stage": "train@x", "seconds": 900, "cpu_s": 110, "first_batch_cpu_s": 10},
             {"stage": "train@x", "seconds": 500, "cpu_s": 60, "first_batch_cpu_s": 10},    # the rerun wins
             {"stage": "crop", "seconds": 20, "cpu_s": 7},
             {"stage": "train@y", "seconds": 99, "cpu_s": 9, "status": "interrupted"}]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = E.laptop_estimate(E.read_stage_log(log), cores=4, efficiency=0.5, expected=["train@x", "train@y"])
    full = {r["stage"]: r["full_s"] for r in out["stages"]}
    ratio = E.FULL["photos"] / E.DEV98["photos"]
    assert set(full) == {"resolve", "train@x", "crop"}                         # download: the network, left out
    assert full["resolve"] == 3                                               # no batches: all fixed
    assert full["train@x"] == pytest.approx(10 + 50 * ratio / 2)              # 4 cores at half efficiency = 2x
    assert full["crop"] == pytest.approx(E.FULL["photos"] / (E.CROP_RATE_2_CORES * 2 * 0.5))
    assert out["missing_stages"] == ["train@y"]
    assert out["total_s"] == pytest.approx(sum(full.values()) + E.DVC_SECONDS_PER_STAGE * 4)


def test_paper_images_count_the_recipe():
    fit = 128 * (E.FULL["train"] + E.FULL["val"] / 3)
    assert E.paper_images(128, refit=False) == pytest.approx(fit + E.FULL["test"] / 3)
    assert E.paper_images(128) - E.paper_images(128, refit=False) == pytest.approx(128 * 8144)
