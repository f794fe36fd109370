"""carbench.report.evaluate end to end on a tiny store: classifier and k-NN through one code path; stage scripts."""
from __future__ import annotations

import csv
import json
import runpy
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from support.params import ROOT
from support.retrieval import CLASS_NAMES, PER_CLASS, fit_retrieval, make_world

from carbench.core.errors import UserError
from carbench.core.metrics import PAIR_COLUMNS, PER_CLASS_COLUMNS
from carbench.report import evaluate as E

pytestmark = pytest.mark.usefixtures("one_thread")

RETRIEVAL = "knn_resnet50_k3"
N_TEST = PER_CLASS["test"] * len(CLASS_NAMES)
NUMERIC_KEYS = ("top1", "top5", "loss", "f1_macro", "f1_weighted", "precision_macro", "recall_macro",
                "precision_weighted", "recall_weighted", "balanced_accuracy", "params_count", "size_mb",
                "latency_ms", "images_per_second")


def run_evaluate(world, name: str) -> tuple[dict, dict]:
    """evaluate_experiment into the conventional paths; returns (result, the paths)."""
    paths = {"metrics": world.root / "metrics" / "eval" / f"{name}.json",
             "plots": world.root / "plots" / "eval" / name, "tables": world.root / "metrics" / "eval" / name,
             "headline": world.root / "metrics" / "headline" / f"{name}.json"}
    result = E.evaluate_experiment(world.params, name, world.crops, world.models, paths["metrics"], paths["plots"],
                                   paths["tables"], paths["headline"], "cpu")
    return result, paths


def read_confusion(path) -> list[dict]:
    """As DVC's confusion template reads it: csv.DictReader rows."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("name", ["cnn_basic", RETRIEVAL])
def test_evaluate_writes_every_output(tmp_path, name):
    world = make_world(tmp_path)
    if name == RETRIEVAL:
        fit_retrieval(world, name)
    result, paths = run_evaluate(world, name)
    saved = json.loads(paths["metrics"].read_text())
    assert saved == pytest.approx(result)
    # The headline (the only DVC metrics): top-1 and macro-F1, rounded, nothing else.
    assert json.loads(paths["headline"].read_text()) == {"top1": round(saved["top1"], 4),
                                                          "f1_macro": round(saved["f1_macro"], 4)}
    for key in NUMERIC_KEYS:
        assert isinstance(saved[key], (int, float)), key
    assert saved["num_test"] == N_TEST and saved["config"] == world.params.experiments[name].config
    rows = read_confusion(paths["plots"] / "confusion.csv")
    assert list(rows[0]) == ["actual", "predicted"] and len(rows) == N_TEST
    assert {r["actual"] for r in rows} <= set(CLASS_NAMES) and {r["predicted"] for r in rows} <= set(CLASS_NAMES)
    assert np.mean([r["actual"] == r["predicted"] for r in rows]) == pytest.approx(saved["top1"])
    per_class = pd.read_csv(paths["tables"] / "per_class.csv")
    assert list(per_class.columns) == list(PER_CLASS_COLUMNS) and per_class["support"].sum() == N_TEST
    assert list(pd.read_csv(paths["tables"] / "confused_pairs.csv").columns) == list(PAIR_COLUMNS)
    for png in ("confusion.png", "misclassified.png"):
        assert (paths["plots"] / png).read_bytes()[:4] == b"\x89PNG"


def test_knn_evaluation_agrees_with_the_knn_stage(tmp_path):
    world = make_world(tmp_path)
    fit_retrieval(world, RETRIEVAL)
    result, _ = run_evaluate(world, RETRIEVAL)
    knn = json.loads((tmp_path / "metrics" / "knn" / f"{RETRIEVAL}.json").read_text())
    assert result["top1"] == pytest.approx(knn["top1"]) and result["top5"] == pytest.approx(knn["top5"])
    assert result["kind"] == "knn"


@pytest.mark.parametrize("name", ["cnn_basic", RETRIEVAL])
def test_disjoint_evaluation_scores_leave_one_out_and_writes_no_classification_number(tmp_path, name, capsys):
    """Under the class-disjoint protocol the classifier knows the train half's 3 classes and the test photos are of
    the other 3: one line stands where top-1 would, the photos are scored leave-one-out among themselves."""
    from carbench.retrieval.loo import UNDEFINED_LINE

    world = make_world(tmp_path, train_classes=3)
    if name == RETRIEVAL:
        fit_retrieval(world, name)
    result, paths = run_evaluate(world, name)
    saved = json.loads(paths["metrics"].read_text())
    assert saved["protocol"] == "disjoint" and saved["classification"] == UNDEFINED_LINE
    assert not {"top1", "top5", "loss", "f1_macro", "balanced_accuracy"} & set(saved)
    assert json.loads(paths["headline"].read_text()) == {"recall_at_1": round(saved["recall_at_1"], 4),
                                                          "map_at_r": round(saved["map_at_r"], 4)}
    table = pd.read_csv(paths["tables"] / "retrieval.csv")
    assert len(table) == N_TEST // 2 and set(table["true"]) == {3, 4, 5}     # the test half, every photo a query
    assert table["recall_at_1"].mean() == pytest.approx(saved["recall_at_1"]) == saved["precision_at_1"]
    assert saved["recall_at_1"] <= saved["recall_at_2"] <= saved["recall_at_4"] <= saved["recall_at_8"] == 1.0
    if name == RETRIEVAL:   # the k-NN stage scored the same stored gallery the same way
        knn = json.loads((tmp_path / "metrics" / "knn" / f"{name}.json").read_text())
        assert {k: knn[k] for k in ("recall_at_1", "map_at_r")} == pytest.approx(
            {k: saved[k] for k in ("recall_at_1", "map_at_r")})
    assert UNDEFINED_LINE in capsys.readouterr().out
    assert {r["actual"] for r in read_confusion(paths["plots"] / "confusion.csv")} == set(CLASS_NAMES[3:])


def test_tta_averages_the_mirrored_crop(tmp_path):
    world = make_world(tmp_path)
    from carbench.retrieval.predictor import load_predictor

    pred = load_predictor(world.models / "cnn_basic", "cpu", world.models)
    images = np.load(world.crops / "test.npy")
    plain, _ = E.predict_batches(pred, images, 7, tta=False)
    mirrored, _ = E.predict_batches(pred, E.flip_horizontal(images), 7, tta=False)
    both, _ = E.predict_batches(pred, images, 7, tta=True)
    assert both == pytest.approx((plain + mirrored) / 2, abs=1e-6)
    assert E.flip_horizontal(images)[0, 0, 0].tolist() == images[0, 0, -1].tolist()


def test_misclassified_are_most_confident_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    labels = np.array([0, 0, 0, 1])     # rows 1, 2, 3 wrong with confidence 0.8, 0.6, 0.7
    assert E.misclassified_indices(probs, labels, 5).tolist() == [1, 3, 2]
    assert E.misclassified_indices(probs, labels, 1).tolist() == [1]


class SlowPredictor:
    """A predictor whose every call takes ``seconds`` (counts its calls)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def predict(self, images):
        import time

        self.calls += 1
        time.sleep(self.seconds)


def test_latency_is_measured_in_bounded_time():
    slow = SlowPredictor(0.05)
    ms = E.measure_latency_ms(slow, None, warmup=5, runs=100, budget_s=0.3)
    assert ms >= 45                      # a median of real calls (each sleeps 50 ms; a loaded machine adds more)
    assert 2 <= slow.calls <= 8          # ~0.3 s of calls, not 105
    unbounded = SlowPredictor(0.001)
    E.measure_latency_ms(unbounded, None, warmup=5, runs=20)
    assert unbounded.calls == 25
    one = SlowPredictor(0.01)
    E.measure_latency_ms(one, None, warmup=3, runs=10, budget_s=0.0)
    assert one.calls == 1                # the budget spent before any run: still one timed run


def test_class_mismatch_is_a_user_error(tmp_path):
    world = make_world(tmp_path)
    meta = json.loads((world.crops / "meta.json").read_text())
    meta["class_names"] = list(reversed(meta["class_names"]))
    (world.crops / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="differ"):
        run_evaluate(world, "cnn_basic")
    assert not (tmp_path / "metrics" / "eval" / "cnn_basic.json").exists()


def _run_stage_in_process(monkeypatch, script: str, *args: str) -> None:
    """Run stages/<script> as __main__ in this interpreter (saves a torch import per stage)."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(ROOT / "stages" / script), run_name="__main__")


def test_stage_scripts_embed_knn_evaluate(tmp_path, monkeypatch):
    """embed and knn run in-process; evaluate runs as a real subprocess, as `dvc repro` would."""
    world = make_world(tmp_path)
    monkeypatch.chdir(tmp_path)
    emb, model, params = "data/embeddings/" + RETRIEVAL, "models/" + RETRIEVAL, str(world.params_file)
    _run_stage_in_process(monkeypatch, "embed.py", "--params", params, "--name", RETRIEVAL, "--crops", "data/crops",
                          "--models", "models", "--out", emb)
    _run_stage_in_process(monkeypatch, "knn.py", "--params", params, "--name", RETRIEVAL, "--embeddings", emb,
                          "--out", model, "--metrics", f"metrics/knn/{RETRIEVAL}.json")
    cmd = [sys.executable, str(ROOT / "stages" / "evaluate.py"), "--params", params, "--name", RETRIEVAL,
           "--crops", "data/crops", "--models", "models", "--metrics", f"metrics/eval/{RETRIEVAL}.json",
           "--plots", f"plots/eval/{RETRIEVAL}", "--tables", f"metrics/eval/{RETRIEVAL}",
           "--headline", f"metrics/headline/{RETRIEVAL}.json"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "metrics" / "eval" / f"{RETRIEVAL}.json").read_text())["num_test"] == N_TEST
    assert set(json.loads((tmp_path / "metrics" / "headline" / f"{RETRIEVAL}.json").read_text())) == {"top1", "f1_macro"}
    assert (tmp_path / "metrics" / "knn" / f"{RETRIEVAL}.json").is_file()


def test_stage_user_error_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    world = make_world(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        _run_stage_in_process(monkeypatch, "knn.py", "--params", str(world.params_file), "--name", "cnn_basic",
                              "--embeddings", "e", "--out", "models/x", "--metrics", "m.json")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error:") and "not a retrieval" in err


def test_a_model_that_records_no_training_data_takes_the_scored_photos_source(tmp_path):
    """An untrained embedder (dag.pretrained) has no checkpoint saying what it learnt from: the row's facts for the
    published anchors name the crop store's source, so a demo row says its photos are generated."""
    world = make_world(tmp_path)
    fit_retrieval(world, RETRIEVAL)
    meta_path = world.crops / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "source": "synthetic"}))
    result, _ = run_evaluate(world, RETRIEVAL)
    assert result["model_data_source"] == "synthetic"


@pytest.mark.parametrize("embedding_dim, layer", [(0, "backbone"), (8, "penultimate")])
def test_a_trained_model_is_scored_on_its_embedding_when_its_head_has_one(embedding_dim, layer):
    from types import SimpleNamespace

    class Embedder:   # a classifier predictor: what test_embeddings reads of it
        model = SimpleNamespace(embedding_dim=embedding_dim)
        layers: list = []

        def embed(self, images, layer):
            self.layers.append(layer)
            return np.full((len(images), 4), 3.0)

    test = SimpleNamespace(images=np.zeros((5, 2, 2, 3), np.uint8), labels=np.arange(5))
    embedder = Embedder()
    vectors, metric, space = E.test_embeddings(embedder, test, batch_size=2)
    assert set(embedder.layers) == {layer} and vectors.shape == (5, 4) and metric == "euclidean"
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=1e-3)   # L2-normalised
    assert ("embedding" in space) == bool(embedding_dim)
