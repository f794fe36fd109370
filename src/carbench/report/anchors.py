"""Published figures beside carbench's rows: which anchor of ``src/carbench/resources/anchors.yaml`` each summary
row is read against, under which protocol, and every difference between the row and that anchor.

The file is data (figures, sources, and the rules that map a row to an anchor by its configuration, protocol,
freeze mode, classifier and input size); this module reads and checks it, computes a row's facts from its
evaluation (``metrics/eval/<name>.json``) and ``split.strategy``, and writes the differences it can tell from
them: the protocol, box crops against full photos, MobileNetV2 (or another backbone) standing in for the anchor's,
the input size, a subset of the classes, a re-split, and a source that kept its checkpoint by test accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from ..core.errors import UserError
from ..core.io import read_json

ANCHORS_FILE = "anchors.yaml"
ANCHORS = Path(__file__).resolve().parents[1] / "resources" / ANCHORS_FILE
FORMAT = "carbench-anchors/1"
#: Every anchor's keys (``also``: more metrics of the same run, optional).
ANCHOR_KEYS = ("id", "value", "metric", "protocol", "split", "input", "backbone", "resolution", "pretraining",
               "selection", "source", "notes")
SOURCE_KEYS = ("paper", "venue", "url")
METRICS = ("top1", "recall_at_1", "recall_at_8")
#: A rule's keys besides ``anchor`` and ``note``, and the row fact each matches.
RULE_KEYS = ("protocol", "config", "freeze", "classical", "min_size", "resize")
#: split.strategy -> the protocol a row follows (the anchors' protocol names: anchors.yaml ``protocols``).
PROTOCOL_OF = {"official": "classification", "pooled": "classification", "kfold": "classification",
               "disjoint": "retrieval"}
PROTOCOL_NAMES = {"classification": "classification-standard-split", "retrieval": "class-disjoint retrieval"}
FULL_CLASSES = 196
#: ``data.source`` of the generated data set, as checkpoints record it (``data_source``).
SYNTHETIC = "synthetic"


def load_anchors(path: Optional[str | Path] = None) -> dict:
    """The anchors file (default: the packaged one), checked by :func:`check_anchors`."""
    path = Path(path or ANCHORS)
    data = yaml.safe_load(path.read_text())
    check_anchors(data, str(path))
    return data


def check_anchors(data: Any, where: str) -> None:
    """Every anchor has every key with a value of the right kind, every rule names a known anchor and keys."""
    def fail(message: str) -> None:
        raise UserError(f"{where}: {message}")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fail(f"not an anchors file (format {FORMAT!r} expected)")
    protocols = data.get("protocols") or {}
    if set(protocols) != set(PROTOCOL_NAMES.values()):
        fail(f"protocols must describe exactly {sorted(PROTOCOL_NAMES.values())}")
    ids = set()
    for i, anchor in enumerate(data.get("anchors") or []):
        missing = [k for k in ANCHOR_KEYS if k not in anchor]
        if missing:
            fail(f"anchors[{i}] lacks {', '.join(missing)}")
        unknown = sorted(set(anchor) - set(ANCHOR_KEYS) - {"also"})
        if unknown:
            fail(f"anchors[{i}] has unknown key(s) {', '.join(unknown)}")
        name = anchor["id"]
        value = anchor["value"] if isinstance(anchor["value"], list) else [anchor["value"]]
        if len(value) not in (1, 2) or not all(isinstance(v, (int, float)) and 0 < v <= 100 for v in value):
            fail(f"anchor {name}: value must be a percentage or a [low, high] range, got {anchor['value']!r}")
        if anchor["metric"] not in METRICS:
            fail(f"anchor {name}: metric must be one of {list(METRICS)}")
        if anchor["protocol"] not in protocols:
            fail(f"anchor {name}: protocol {anchor['protocol']!r} is not one of {sorted(protocols)}")
        if not isinstance(anchor["resolution"], int):
            fail(f"anchor {name}: resolution must be the input side in pixels")
        if not isinstance(anchor["source"], dict) or set(anchor["source"]) != set(SOURCE_KEYS):
            fail(f"anchor {name}: source must have exactly {', '.join(SOURCE_KEYS)}")
        ids.add(name)
    for i, rule in enumerate(data.get("rules") or []):
        unknown = sorted(set(rule) - set(RULE_KEYS) - {"anchor", "note"})
        if unknown or "anchor" not in rule:
            fail(f"rules[{i}] must have anchor (an id or null) and only the keys {', '.join(RULE_KEYS)}, note")
        if rule["anchor"] is not None and rule["anchor"] not in ids:
            fail(f"rules[{i}] names the unknown anchor {rule['anchor']!r}")
        if rule["anchor"] is None and not rule.get("note"):
            fail(f"rules[{i}] has no anchor: its note must say why")


@dataclass(frozen=True)
class RowFacts:
    """What a summary row's comparison with a published figure depends on."""

    config: str
    protocol: str                 # classification | retrieval
    strategy: str                 # split.strategy
    arch: Optional[str]           # the model (or embedder) architecture; None for a retrieval row without one
    freeze: Optional[str]
    image_size: Optional[int]
    data_source: str              # what the model was trained on (``synthetic``: the offline demo)
    resize: bool                  # train.resize_size set (resize, then crop)
    classical: Optional[str]      # logreg | random_forest: the row of knn.classical's classifier
    num_classes: Optional[int]


def row_facts(evaluated: dict, strategy: str, classical: Optional[str] = None) -> RowFacts:
    """The facts of a row from its experiment's evaluation (``metrics/eval/<name>.json``: configuration, classes,
    protocol, and the ``model_*`` keys evaluate records) and ``split.strategy``; ``classical``: the row of
    knn.classical's classifier."""
    protocol = "retrieval" if "disjoint" in (strategy, evaluated.get("protocol")) else "classification"
    return RowFacts(str(evaluated.get("config")), protocol, strategy, evaluated.get("model_arch"),
                    evaluated.get("model_freeze"), evaluated.get("model_image_size"),
                    str(evaluated.get("model_data_source") or ""), bool(evaluated.get("model_resize_size")),
                    classical, evaluated.get("num_classes"))


def matches(rule: dict, facts: RowFacts) -> bool:
    """Whether every key of ``rule`` holds for the row."""
    for key in RULE_KEYS:
        if key not in rule:
            continue
        want = rule[key]
        if key == "min_size":
            ok = facts.image_size is not None and facts.image_size >= want
        elif key == "resize":
            ok = facts.resize == bool(want)
        elif key == "classical":
            ok = facts.classical == want
        else:
            ok = getattr(facts, key) == want
        if not ok:
            return False
    return rule.get("classical") is not None or facts.classical is None


def find_rule(data: dict, facts: RowFacts) -> Optional[dict]:
    """The first rule that matches the row (None: none does)."""
    return next((rule for rule in data["rules"] if matches(rule, facts)), None)


def _name(data: dict, arch: Optional[str]) -> str:
    return data.get("backbones", {}).get(arch, arch or "?")


def figure(anchor: dict) -> str:
    """``87.7 top-1`` / ``91.8-93.0 top-1`` / ``87.7 R@1 (R@8 97.3)``."""
    def label(metric: str) -> str:
        return "top-1" if metric == "top1" else "R@" + metric.rsplit("_", 1)[1]

    value = anchor["value"]
    text = f"{value[0]:.1f}-{value[1]:.1f}" if isinstance(value, list) else f"{value:.1f}"
    text += " " + label(anchor["metric"])
    also = ", ".join(f"{label(m)} {v:.1f}" for m, v in (anchor.get("also") or {}).items())
    return text + (f" ({also})" if also else "")


def describe(data: dict, anchor: dict) -> str:
    """The anchor in one line: figure, backbone, resolution, source."""
    source = anchor["source"]
    where = f"{source['paper']}, {source['venue']}" + (f", {source['url']}" if source["url"] else "")
    return f"{figure(anchor)}: {_name(data, anchor['backbone'])}, {anchor['resolution']} px; {where}"


def differences(data: dict, anchor: dict, facts: RowFacts) -> list[str]:
    """Every difference between the row and ``anchor`` that the facts tell."""
    out = []
    if facts.data_source == SYNTHETIC:
        out.append("generated photos here (the offline demo), not Stanford Cars: no comparison holds")
    if anchor["protocol"] != PROTOCOL_NAMES[facts.protocol]:
        out.append(f"protocol: this row follows {PROTOCOL_NAMES[facts.protocol]}, the source {anchor['protocol']}")
    if anchor["input"] == "full images":
        out.append("box crops here, full images in the source")
    backbones = data.get("backbones", {})
    if facts.arch is not None and facts.arch != anchor["backbone"]:
        if anchor["backbone"] in backbones:
            out.append(f"{_name(data, facts.arch)} stands in for {_name(data, anchor['backbone'])}")
        else:
            out.append(f"{_name(data, facts.arch)} here, {anchor['backbone']} in the source")
    if facts.image_size is not None and facts.image_size != anchor["resolution"]:
        out.append(f"{facts.image_size} px input here, {anchor['resolution']} px in the source")
    if facts.protocol == "classification" and facts.num_classes and facts.num_classes != FULL_CLASSES:
        out.append(f"{facts.num_classes} classes here, {FULL_CLASSES} in the source")
    if facts.strategy in ("pooled", "kfold"):
        out.append(f"a {facts.strategy} re-split here, the official split in the source")
    if anchor["selection"] == "test":
        out.append("the source kept its checkpoint by test accuracy; here the epoch is chosen on val")
    return out


def row_anchor(data: dict, facts: RowFacts) -> tuple[str, str, str]:
    """(protocol, read against, differences) of one row, as markdown cells."""
    rule = find_rule(data, facts)
    protocol = PROTOCOL_NAMES[facts.protocol] + ("" if facts.strategy in ("official", "disjoint")
                                                 else f" ({facts.strategy} split)")
    if rule is None:
        return protocol, "none", "no rule of anchors.yaml matches this row"
    notes = [rule["note"]] if rule.get("note") else []
    if rule["anchor"] is None:
        return protocol, "none", "; ".join(notes)
    anchor = next(a for a in data["anchors"] if a["id"] == rule["anchor"])
    return protocol, describe(data, anchor), "; ".join(notes + differences(data, anchor, facts))


def anchors_markdown(experiments: list[str], eval_dir: Path, strategy: str, data: Optional[dict] = None) -> str:
    """The summary's anchors table: per row (``experiments``, with ``<name>+<classifier>`` rows of
    knn.classical), its protocol, the published figure it is read against and every difference."""
    data = data or load_anchors()
    lines = ["| experiment | protocol | read against (published) | differences from that figure |",
             "|---|---|---|---|"]
    for row in experiments:
        name, _, classical = row.partition("+")
        facts = row_facts(read_json(Path(eval_dir) / f"{name}.json"), strategy, classical or None)
        lines.append("| " + " | ".join((row, *row_anchor(data, facts))) + " |")
    return "\n".join(lines) + "\n"


def append_to_summary(experiments: list[str], eval_dir: Path, strategy: str, summary_md: Path) -> None:
    """Add the anchors section to ``summary.md`` (written by the aggregate stage just before)."""
    data = load_anchors()
    protocols = "\n".join(f"- **{name}**: {text}" for name, text in data["protocols"].items())
    section = ("\n## Published figures beside these rows\n\nEach row, the protocol it follows, the published figure "
               f"to read it against (src/carbench/resources/{ANCHORS_FILE}) and every difference between the two "
               f"that changes what the comparison means. The protocols:\n\n{protocols}\n\n"
               + anchors_markdown(experiments, eval_dir, strategy, data))
    with open(summary_md, "a") as handle:
        handle.write(section)
