"""carbench.report.card: one card per experiment, every number read from a pipeline output, the stand-in noted."""
from __future__ import annotations

import json
import re

import pytest
from support.params import repo_params

from carbench.config import parse_params
from carbench.export.contract import build_contract, write_contract
from carbench.report import card as K
from carbench.preflight import run as resolve

NUM_TEST = 60


def _world(tmp_path, overrides=None):
    """Fake outputs of download, resolve, evaluate, aggregate and export for every experiment of params.yaml."""
    raw = repo_params(overrides)
    params = parse_params(raw)
    resolve(params, tmp_path / "resolved")
    data = {"source": "local", "route": "local", "num_classes": 196, "counts": {"train": 8144, "test": 8041},
            "fingerprint": {"sha256": "ab" * 32, "labels_sha256": "cd" * 32, "matches_expected": True}}
    (tmp_path / "data.json").write_text(json.dumps(data))
    summary, ev, ex = {}, tmp_path / "eval", tmp_path / "export"
    ev.mkdir()
    ex.mkdir()
    for i, name in enumerate(params.experiments):
        top1 = 0.5 + 0.0123 * i
        summary[name] = {"top1": top1, "top1_ci_low": top1 - 0.0311, "top1_ci_high": top1 + 0.0297,
                         "f1_macro": top1 - 0.0457, "f1_macro_ci_low": top1 - 0.08, "f1_macro_ci_high": top1 - 0.01,
                         "top5": top1 + 0.2, "p_vs_best": None if i == 0 else 0.0042 * i,
                         "latency_ms": 3.25 + i, "images_per_second": 812.5 + i, "params_count": 23512 * (i + 1),
                         "size_mb": 1.5 * (i + 1)}
        (ev / f"{name}.json").write_text(json.dumps({"device": "cpu", "num_test": NUM_TEST}))
        kind = "knn" if params.experiments[name].config == "retrieval" else "classifier"
        parity = {"max_abs_diff": 1.2e-6 * (i + 1), "top1_agreement": 1.0, "images": NUM_TEST}
        (ex / f"{name}.json").write_text(json.dumps({"onnx": parity, "torchscript": parity,
                                                     "output": "embedding" if kind == "knn" else "logits"}))
        write_contract(tmp_path / "exports" / name,
                       build_contract(name, kind, {"margin": 0.1, "size": 256, "keep_aspect": False}, 224, 0,
                                      [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], [f"class {c}" for c in range(196)],
                                      2048, "local", {"layer": "backbone", "l2_normalize": True} if kind == "knn"
                                      else None, ("knn.npz", "knn.json") if kind == "knn" else ()))
    (tmp_path / "summary").mkdir()
    best = {"experiment": next(iter(params.experiments)), "config": "transfer", "top1": 0.5}
    (tmp_path / "summary" / "summary.json").write_text(json.dumps({"best": best, "experiments": summary}))
    return params, summary


def _cards(tmp_path, params, out="cards"):
    return K.build_cards(params, tmp_path / "data.json", tmp_path / "resolved", tmp_path / "summary",
                         tmp_path / "eval", tmp_path / "exports", tmp_path / "export", tmp_path / out)


def test_one_card_per_experiment_with_the_numbers_of_its_files(tmp_path):
    params, summary = _world(tmp_path)
    cards = _cards(tmp_path, params)
    assert sorted(p.stem for p in (tmp_path / "cards").glob("*.md")) == sorted(params.experiments)
    for name, text in cards.items():
        row = summary[name]
        assert f"{row['top1']:.4f} [{row['top1_ci_low']:.4f}, {row['top1_ci_high']:.4f}] (95% bootstrap CI)" in text
        assert f"{row['f1_macro']:.4f} [" in text and f"{row['latency_ms']:.2f} ms" in text
        assert f"{row['params_count']:,}" in text and "`" + "ab" * 32 + "`" in text
        assert "Krause" in text and "non-commercial research" in text
        assert f"Parity with PyTorch on the {NUM_TEST} test crops" in text
        assert ("this is the best" in text) == (name == next(iter(params.experiments)))
        assert (tmp_path / "cards" / f"{name}.md").read_text() == text


def test_every_number_in_a_card_comes_from_a_file(tmp_path):
    """Move every input number: each number the metrics table shows moves with it (none is typed in the code)."""
    params, summary = _world(tmp_path)
    name = "cnn_basic"
    before = _cards(tmp_path, params)[name]
    for key, value in summary[name].items():
        if isinstance(value, float):
            summary[name][key] = value + 0.1111
    (tmp_path / "summary" / "summary.json").write_text(json.dumps({"experiments": summary}))   # no best now
    after = _cards(tmp_path, params)[name]
    table = lambda text: text.split("## Metrics")[1].split("## Intended use")[0]   # noqa: E731
    changed = [line for line in table(after).splitlines() if re.search(r"\d", line) and line not in table(before)]
    assert len(changed) >= 5, changed


def test_a_stand_in_backbone_is_said_so(tmp_path):
    over = {"experiments": {"tl_resnet50_frozen": {"model": {"arch": "mobilenet_v2", "weights": "IMAGENET1K_V1"}}}}
    params, _ = _world(tmp_path, over)
    cards = _cards(tmp_path, params)
    assert "**Stand-in**: `tl_resnet50_frozen` is named after `resnet50`, but this recipe ran `mobilenet_v2`" in \
        cards["tl_resnet50_frozen"]
    assert "Stand-in" not in cards["tl_resnet50_finetune"] and "Stand-in" not in cards["cnn_basic"]


def test_stand_in_reads_the_name():
    archs = ["resnet50", "densenet121", "mobilenet_v2"]
    assert K.stand_in("tl_resnet50_frozen", "mobilenet_v2", archs) == "resnet50"
    assert K.stand_in("tl_resnet50_frozen", "resnet50", archs) is None
    assert K.stand_in("cnn_basic", "cnn", archs) is None


def test_a_missing_input_names_the_file(tmp_path):
    params, _ = _world(tmp_path)
    (tmp_path / "export" / "cnn_basic.json").unlink()
    with pytest.raises(Exception, match="export metrics of 'cnn_basic'"):
        _cards(tmp_path, params)
