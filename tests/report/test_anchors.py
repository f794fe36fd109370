"""carbench.report.anchors: the anchors file's schema, the rules that map a row to a published figure, the
differences stated, and the summary's anchors section."""
from __future__ import annotations

import copy
import json

import pytest

from carbench.core.errors import UserError
from carbench.report import aggregate as A
from carbench.report import anchors as N
from report.test_aggregate import inputs  # noqa: F401  (fixture: fake outputs of the nine experiments)


def evaluated(config="transfer", arch="mobilenet_v2", freeze="full", size=224, resize=0, classes=196, **more):
    """The fields of metrics/eval/<name>.json that anchors read."""
    return {"config": config, "num_classes": classes, **more, "model_arch": arch, "model_freeze": freeze,
            "model_image_size": size, "model_resize_size": resize}


def test_the_packaged_file_has_every_field_and_a_rule_for_every_row():
    data = N.load_anchors()
    ids = {a["id"] for a in data["anchors"]}
    assert {"resnet50_224_tllib", "resnet50_448_recipe", "proxy_anchor_resnet50", "hyp_dino",
            "random_forest_resnet50_features", "efficientnet_b7"} <= ids
    for anchor in data["anchors"]:
        assert set(N.ANCHOR_KEYS) <= set(anchor) and anchor["source"]["paper"]
    for config in ("transfer", "scratch", "retrieval"):
        for freeze in ("frozen", "full"):
            for strategy in ("official", "pooled", "kfold", "disjoint"):
                facts = N.row_facts(evaluated(config, freeze=freeze), strategy)
                assert N.find_rule(data, facts) is not None, (config, freeze, strategy)


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d["anchors"][0].pop("source"), "lacks source"),
    (lambda d: d["anchors"][0].update(value=120), "percentage"),
    (lambda d: d["anchors"][0].update(metric="top3"), "metric"),
    (lambda d: d["anchors"][0].update(protocol="other"), "protocol"),
    (lambda d: d["anchors"][0].update(colour="red"), "unknown key"),
    (lambda d: d["rules"][0].update(anchor="nope"), "unknown anchor"),
    (lambda d: d["rules"].append({"config": "scratch", "anchor": None}), "note must say why"),
])
def test_schema_errors_name_the_problem(break_it, message):
    data = copy.deepcopy(N.load_anchors())
    break_it(data)
    with pytest.raises(UserError, match=message):
        N.check_anchors(data, "anchors.yaml")


def test_rows_are_read_against_the_anchor_their_settings_call_for():
    data = N.load_anchors()
    protocol, against, diffs = N.row_anchor(data, N.row_facts(evaluated(classes=98), "official"))
    assert protocol == "classification-standard-split" and against.startswith("87.7 top-1: ResNet-50, 224 px")
    assert "MobileNetV2 stands in for ResNet-50" in diffs and "box crops here, full images" in diffs
    assert "98 classes here, 196 in the source" in diffs and "224 px input" not in diffs
    paper = evaluated(arch="resnet50", size=448, resize=512)
    _, against, diffs = N.row_anchor(data, N.row_facts(paper, "official"))
    assert against.startswith("94.1-94.3 top-1") and "kept its checkpoint by test accuracy" in diffs
    assert "stands in" not in diffs and "classes here" not in diffs and "generated photos" not in diffs
    _, _, diffs = N.row_anchor(data, N.row_facts({**paper, "model_data_source": "synthetic"}, "official"))
    assert diffs.startswith("generated photos here (the offline demo)")
    _, against, diffs = N.row_anchor(data, N.row_facts(evaluated(arch="resnet50", size=384), "pooled"))
    assert against.startswith("91.8-93.0 top-1") and "a pooled re-split here" in diffs
    assert "384 px input here, 448 px in the source" in diffs
    assert N.row_anchor(data, N.row_facts(evaluated(freeze="frozen"), "official"))[1] == "none"
    _, _, diffs = N.row_anchor(data, N.row_facts(evaluated("retrieval", freeze="frozen"), "official"))
    assert "ImageNet embeddings not trained on cars" in diffs and "fine-tuned embeddings" not in diffs
    _, _, diffs = N.row_anchor(data, N.row_facts(evaluated("retrieval"), "official"))
    assert "a k-NN vote on fine-tuned embeddings" in diffs
    _, against, diffs = N.row_anchor(data, N.row_facts(evaluated("retrieval", arch="resnet50"), "official",
                                                       "random_forest"))
    assert against.startswith("89.0 top-1") and "stands in" not in diffs
    protocol, against, diffs = N.row_anchor(data, N.row_facts(evaluated("retrieval", protocol="disjoint"),
                                                              "disjoint"))
    assert protocol == "class-disjoint retrieval" and against.startswith("87.7 R@1 (R@8 97.3)")
    protocol, against, diffs = N.row_anchor(data, N.row_facts(evaluated(), "disjoint"))
    assert against == "none" and "classification is undefined" in diffs


def test_the_summary_shows_the_anchors(inputs, tmp_path):  # noqa: F811
    params, ev, train, knn = inputs
    for name in params.experiments:
        path = ev / f"{name}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **evaluated(size=384)}))
    A.build_summary(params, ev, train, knn, tmp_path / "summary", tmp_path / "plots")
    md = (tmp_path / "summary" / "summary.md").read_text()
    section = md.split("## Published figures beside these rows", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0][2:] for r in rows] == A.build_table(params, ev, train, knn)["experiment"].tolist()
    finetune = next(r for r in rows if r.startswith("| tl_resnet50_finetune "))
    assert "classification-standard-split" in finetune and "91.8-93.0 top-1" in finetune
    assert "384 px input here, 448 px in the source" in finetune and "MobileNetV2 stands in" in finetune
    assert "class-disjoint retrieval" in section                       # the protocols are described
