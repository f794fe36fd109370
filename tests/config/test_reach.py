"""carbench.config.reach: a key that reaches no stage under the params in force, and what shadows it."""
from __future__ import annotations

import copy

from carbench.config.reach import unread


def _with(raw: dict, **sections: dict) -> dict:
    out = copy.deepcopy(raw)
    for name, values in sections.items():
        out[name].update(values)
    return out


def test_a_section_default_every_experiment_sets_names_each_value_and_the_key_to_set_instead(raw):
    reasons = unread(raw, ["train.epochs"])
    own = ", ".join(f"{name}: {entry['train']['epochs']}" for name, entry in raw["experiments"].items()
                    if entry["config"] != "retrieval")
    assert reasons == {"train.epochs": f"reaches no experiment: every trained experiment sets its own epochs ({own}); "
                                       "set experiments.<name>.train.epochs instead"}


def test_a_section_default_that_one_experiment_takes_reaches_it(raw):
    assert unread(raw, ["train.batch_size", "model.head_hidden", "embed.layer", "knn.backend", "base.seed"]) == {}


def test_a_section_default_the_others_do_not_read_says_why_for_each(raw):
    step = copy.deepcopy(raw)
    step["experiments"]["cnn_basic"]["train"]["step_size"] = 4       # its own; every scheduler is cosine
    reason = unread(step, ["train.step_size"])["train.step_size"]
    assert "cnn_basic: 4" in reason and "read only while train.scheduler is 'step'" in reason
    assert "tl_resnet50_frozen: cosine" in reason
    step["experiments"]["cnn_residual"]["train"]["scheduler"] = "step"
    assert unread(step, ["train.step_size"]) == {}


def test_a_key_read_only_for_some_values_of_a_sibling_names_the_sibling(raw):
    synthetic = _with(raw, data={"source": "synthetic"})
    assert unread(synthetic, ["data.path", "data.synthetic.num_classes"]) == {
        "data.path": "is ignored while data.source=synthetic (read only while it is 'local')"}
    assert unread(_with(raw, data={"source": "local", "path": "cars"}), ["data.path"]) == {}
    assert "data.synthetic.num_classes" in unread(raw, ["data.synthetic.num_classes"])     # source: auto
    assert unread(_with(raw, split={"strategy": "kfold"}), ["split.fold", "split.test_fraction"]) == {
        "split.test_fraction": "is ignored while split.strategy=kfold (read only while it is 'pooled')"}


def test_an_experiment_key_its_own_settings_ignore_names_them(raw):
    assert unread(raw, ["experiments.tl_resnet50_frozen.model.cnn_widths"]) == {
        "experiments.tl_resnet50_frozen.model.cnn_widths":
            "is ignored while experiments.tl_resnet50_frozen.model.arch=resnet50 (read only while it is 'cnn')"}
    assert unread(raw, ["experiments.cnn_basic.model.cnn_widths", "experiments.knn_resnet50_k3.knn.k"]) == {}
