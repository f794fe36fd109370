"""The cards stage: one model card per experiment, ``cards/<name>.md``, written from what the pipeline knows.

Every fact comes from a file another stage wrote: the data and its fingerprint (``metrics/data.json``), the recipe
(the resolved config, ``data/resolved/``), the test metrics with their bootstrap intervals (``metrics/summary``),
the latency and device (``metrics/eval/<name>.json``), the exported files' contract and parity
(``exports/<name>/contract.json``, ``metrics/export/<name>.json``). Nothing in a card is typed by hand per model;
the fixed text (intended use, limits, the data set's terms) is the same for every card. A card notes a stand-in:
an experiment named after a torchvision backbone (``tl_resnet50_*``) whose recipe ran another one (the offline
demo's MobileNetV2), so nobody reads MobileNetV2's numbers as ResNet-50's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from ..config import Params
from ..core.errors import UserError
from ..export.contract import read_contract
from ..core.io import atomic_dir, read_json

SYNTHETIC = "synthetic"
#: Shown for the retrieval metrics a summary row may have (metrics/knn/<name>.json, through aggregate).
RETRIEVAL_METRICS = ("precision_at_k", "map_at_r")
CITATION = """\
@inproceedings{krause2013cars,
  title     = {3D Object Representations for Fine-Grained Categorization},
  author    = {Krause, Jonathan and Stark, Michael and Deng, Jia and Fei-Fei, Li},
  booktitle = {4th International IEEE Workshop on 3D Representation and Recognition (3dRR-13)},
  year      = {2013}
}"""
TERMS = ("Stanford Cars (16,185 photos of 196 car models, Krause et al. 2013) is released for non-commercial "
         "research purposes only; the photos' copyrights stay with their owners. A model trained on it inherits "
         "that: use it for research and teaching, not in a product, and cite the data set:")
CONFIGURATIONS = {
    "transfer": "an ImageNet-pretrained backbone with a new classification head",
    "scratch": "a CNN trained from random initialisation",
    "retrieval": "a network's embeddings, classified by their nearest gallery images (k-NN)",
}


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"missing resolved config {path} (run `dvc repro resolve`)")
    return yaml.safe_load(path.read_text())


def _read(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"missing {what}: {path} (run `dvc repro` so the stage that writes it runs first)")
    return read_json(path)


def recipe(resolved_dir: Path, name: str, config: str) -> dict[str, dict]:
    """The resolved config files of experiment ``name``, by stage (train, or embed and knn)."""
    kinds = ("embed", "knn") if config == "retrieval" else ("train",)
    return {kind: _load_yaml(resolved_dir / kind / f"{name}.yaml") for kind in kinds}


def backbone_of(resolved_dir: Path, recipe_files: dict[str, dict]) -> tuple[str, str]:
    """(arch, weights) of the network that made the predictions; for retrieval the embedder's."""
    if "train" in recipe_files:
        model = recipe_files["train"]["model"]
        return model["arch"], model["weights"]
    embedder = recipe_files["embed"]["embedder"]
    if isinstance(embedder, dict):   # pretrained weights used untrained
        return embedder["arch"], embedder["weights"]
    model = _load_yaml(resolved_dir / "train" / f"{embedder}.yaml")["model"]
    return model["arch"], model["weights"]


def stand_in(name: str, arch: str, archs: list[str]) -> Optional[str]:
    """The backbone ``name`` is named after when the recipe ran another one, else None."""
    named = [token for token in name.split("_") if token in archs]
    return named[0] if named and arch not in named else None


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _with_ci(row: dict, metric: str, level: str) -> str:
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    ci = f" [{low:.4f}, {high:.4f}] ({level} bootstrap CI)" if low is not None and high is not None else ""
    return _number(row.get(metric)) + ci


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]


def protocol(config: str, recipe_files: dict[str, dict]) -> str:
    """How the model was made, from its recipe."""
    if config == "retrieval":
        embed, knn = recipe_files["embed"], recipe_files["knn"]["knn"]
        embedder = embed["embedder"]
        source = (f"pretrained `{embedder['arch']}` weights `{embedder['weights']}`, untrained"
                  if isinstance(embedder, dict) else f"the best checkpoint of `{embedder}`")
        return (f"`{embed['embed']['layer']}` embeddings of {source}; k-NN with k={knn['k']}, {knn['metric']} "
                f"distance, {knn['weighting']} votes, gallery {embed['embed']['gallery']}")
    train = recipe_files["train"]["train"]
    freeze = recipe_files["train"]["model"]["freeze"]
    return (f"{train['epochs']} epochs of {train['optimizer']} at lr {train['lr']}, batch {train['batch_size']}, "
            f"image size {train['image_size']}, augment {train['augment']}; backbone freeze mode `{freeze}`")


def render(name: str, config: str, data: dict, recipe_files: dict[str, dict], row: dict, evaluated: dict,
           exported: dict, contract: dict, arch: str, weights: str, replaced: Optional[str], level: str,
           is_best: bool = False) -> str:
    """The markdown card of one experiment (every argument was read from a pipeline output)."""
    source = data.get("source", "")
    fingerprint = data.get("fingerprint") or {}
    counts = data.get("counts") or {}
    prep, crop = contract["preprocess"], contract["crop"]
    centre = prep.get("centre_crop")
    out = [f"# Model card: {name}", "",
           "<!-- Generated by the cards stage (carbench.report.card) from the pipeline's outputs: edit the code, "
           "not this file. -->", ""]
    if replaced:
        out += [f"> **Stand-in**: `{name}` is named after `{replaced}`, but this recipe ran `{arch}` (weights "
                f"`{weights}`) in its place. Every number below is `{arch}`'s, not `{replaced}`'s.", ""]
    if source == SYNTHETIC:
        out += ["> **Demo model**: trained on carbench's generated images (`data.source: synthetic`), not on "
                "photos of cars. Its classes are not real car models; its numbers say nothing about Stanford Cars.",
                ""]
    out += ["## Model", ""]
    out += _table([("experiment", f"`{name}`"), ("configuration", f"`{config}`: {CONFIGURATIONS.get(config, '')}"),
                   ("backbone", f"`{arch}`, weights `{weights}`"), ("how it was made", protocol(config, recipe_files)),
                   ("parameters", _number(row.get("params_count"))),
                   ("size", f"{_number(row.get('size_mb'), 1)} MB"),
                   ("classes", str(len(contract["class_names"])))]) + [""]
    files = [contract["files"]["onnx"], contract["files"]["torchscript"], "contract.json",
             contract["files"]["probe"], *contract["files"].get("knn", [])]
    out += ["## Files", "",
            f"`exports/{name}/`: " + ", ".join(f"`{f}`" for f in files) + ". Fetch a registered version with "
            f"`dvc artifacts get <repository> {name}`, run it with `carbench-predict PHOTO --model "
            f"exports/{name}/{contract['files']['onnx']}`.", "",
            f"Parity with PyTorch on the {exported['onnx']['images']} test crops (compared: {exported['output']}):",
            ""]
    out += _table([(runtime, f"max abs difference {exported[runtime]['max_abs_diff']:.1e}, top-1 agreement "
                             f"{100 * exported[runtime]['top1_agreement']:.1f}%")
                   for runtime in ("onnx", "torchscript")]) + [""]
    out += ["## Preprocessing", ""]
    out += _table([
        ("crop", f"the car's box, plus a margin of {crop['margin']} of its size, resized to a {crop['size']} px "
                 f"square ({'aspect kept, padded' if crop['keep_aspect'] else 'stretched'})"),
        ("centre crop", f"{centre['fraction']:.4f} of the side (Resize({centre['resize_size']}) + CenterCrop)"
         if centre else "none"),
        ("resize", f"{prep['resize']['size'][0]}x{prep['resize']['size'][1]}, {prep['resize']['interpolation']}"
                   + (", antialiased" if prep['resize']['antialias'] else "")),
        ("normalise", f"x / 255, minus mean {prep['mean']}, divided by std {prep['std']}"),
        ("input", f"{contract['input']['dtype']} {contract['input']['layout']}, {contract['input']['channel_order']}"),
        ("output", f"`{contract['output']['name']}` ({contract['output']['dim']} values)")]) + [""]
    out += ["## Data", ""]
    out += _table([
        ("source", f"`{source}` (route `{data.get('route', source)}`)"),
        ("images", ", ".join(f"{counts[s]:,} {s}" for s in counts)),
        ("classes", _number(data.get("num_classes"))),
        ("annotations sha256", f"`{fingerprint.get('sha256', 'n/a')}`"),
        ("labels sha256", f"`{fingerprint.get('labels_sha256', 'n/a')}`"),
        ("matches the published Stanford Cars", "yes" if fingerprint.get("matches_expected") else "no")]) + [""]
    out += ["## Recipe", "", "The resolved config the stages ran (`data/resolved/`):", ""]
    for kind, content in recipe_files.items():
        out += [f"`{kind}@{name}`:", "", "```yaml", yaml.safe_dump(content, sort_keys=True).rstrip(), "```", ""]
    p = row.get("p_vs_best")
    metrics = [("top-1", _with_ci(row, "top1", level)), ("macro-F1", _with_ci(row, "f1_macro", level)),
               ("top-5", _number(row.get("top5"))),
               ("McNemar p vs the best experiment",
                "this is the best" if is_best else "n/a" if p is None else f"{p:.2g}")]
    metrics += [(key.replace("_", " "), _number(row.get(key))) for key in RETRIEVAL_METRICS if row.get(key) is not None]
    if row.get("best_val_top1") is not None:
        metrics.append(("best validation top-1", _number(row["best_val_top1"])))
    metrics += [("latency", f"{_number(row.get('latency_ms'), 2)} ms per photo (batch of 1, median, "
                            f"`{evaluated.get('device', 'n/a')}`)"),
                ("throughput", f"{_number(row.get('images_per_second'), 1)} images/s")]
    out += [f"## Metrics (test split, {evaluated.get('num_test', 'n/a')} images)", ""] + _table(metrics) + [""]
    out += ["## Intended use", "",
            "Research and teaching: a benchmark entry for fine-grained car recognition, to compare recipes and to "
            f"classify a photo of one car, cropped to its box, into one of the {len(contract['class_names'])} "
            "classes it was trained on.", "",
            "## Limits", "",
            "- It knows only its classes: a car of any other model or year is still given one of them (there is no "
            "'unknown' answer).",
            "- The probabilities are not calibrated; a k-NN model's are its neighbours' votes.",
            "- The metrics hold for the test split of the same data; photos from other sources (other years, "
            "countries, cameras, crops) can score lower.",
            "- One car per photo: it expects the photo cropped to the car's box as above.", "",
            "## Terms of use", "", TERMS, "", "```bibtex", CITATION, "```", ""]
    return "\n".join(out)


def build_cards(params: Params, data_path: str | Path, resolved_dir: str | Path, summary_dir: str | Path,
                eval_dir: str | Path, exports_dir: str | Path, export_metrics_dir: str | Path,
                out_dir: str | Path) -> dict[str, str]:
    """The cards stage's work: ``<out_dir>/<name>.md`` for every experiment; returns {name: text}."""
    from ..model.backbones import known_archs

    resolved_dir, archs = Path(resolved_dir), known_archs()
    data = _read(Path(data_path), "data metrics")
    summary = _read(Path(summary_dir) / "summary.json", "summary")
    best = (summary.get("best") or {}).get("experiment")
    level = f"{100 * params.aggregate.confidence:g}%"
    cards = {}
    for name, exp in params.experiments.items():
        files = recipe(resolved_dir, name, exp.config)
        arch, weights = backbone_of(resolved_dir, files)
        cards[name] = render(name, exp.config, data, files, summary["experiments"].get(name) or {},
                             _read(Path(eval_dir) / f"{name}.json", f"evaluation metrics of {name!r}"),
                             _read(Path(export_metrics_dir) / f"{name}.json", f"export metrics of {name!r}"),
                             read_contract(Path(exports_dir) / name), arch, weights, stand_in(name, arch, archs),
                             level, name == best)
    with atomic_dir(out_dir) as tmp:
        for name, text in cards.items():
            (tmp / f"{name}.md").write_text(text)
    return cards


def run(params: Params, data_path: str | Path, resolved_dir: str | Path, summary_dir: str | Path,
        eval_dir: str | Path, exports_dir: str | Path, export_metrics_dir: str | Path,
        out_dir: str | Path) -> dict[str, str]:
    """Stage entry point (stages/cards.py)."""
    return build_cards(params, data_path, resolved_dir, summary_dir, eval_dir, exports_dir, export_metrics_dir,
                       out_dir)
