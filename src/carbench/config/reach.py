"""Whether a ``params.yaml`` key reaches a stage under the params in force, and what shadows it when it does not.

A key can be valid and still change nothing. Two rules, both read from the schema and the experiments (no list of
keys is kept here):

* a section default (``model``, ``train``, ``embed``, ``knn``) reaches only the experiments of its kind that do not
  set the key themselves (an experiment's own value wins: :mod:`.experiments`) and that read it;
* a key marked ``read_when=(sibling, values)`` in :mod:`.schema` is read only while the sibling has one of those
  values, e.g. ``data.path`` only while ``data.source`` is ``local``.

:func:`unread` says, in one line each, why keys reach nothing; the scripts that start ``dvc exp run`` refuse such a
``-S`` before DVC starts (:func:`carbench.workshop.runner.check_params`), and the resolve stage warns about one that a plain
``dvc exp run -S`` wrote into params.yaml (:func:`changed_keys` against the last commit's file, in
:func:`carbench.preflight.warn_unread`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from .experiments import RETRIEVAL_SECTIONS, TRAINED_SECTIONS
from .params import Params, parse_params
from .schema import SECTION_SCHEMAS

#: The experiment kinds whose entries carry each section (their own value of a key wins over the section's).
_KINDS = {**{s: "trained" for s in TRAINED_SECTIONS}, **{s: "retrieval" for s in RETRIEVAL_SECTIONS}}


def show_value(value: Any) -> str:
    """``value`` as a `-S` would write it (``[1, 2]``, ``null``, ``true``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _alternatives(values: tuple) -> str:
    return " or ".join(repr(v) for v in values)


def _read_when(cls: type, name: str) -> Optional[tuple[str, tuple]]:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("read_when")
    return None


def _section_config(params: Params, section: str) -> Any:
    return params.model_defaults if section == "model" else getattr(params, section, None)


def _experiment_config(params: Params, name: str, section: str) -> Any:
    return getattr(params.experiments.get(name), section, None)


def _ignored(cfg: Any, section: str, name: str, where: str) -> Optional[str]:
    """Why field ``name`` of ``cfg`` (a ``section`` config at dotted ``where``) is not read, or None."""
    rule = _read_when(SECTION_SCHEMAS[section], name)
    if cfg is None or rule is None:
        return None
    sibling, values = rule
    current = getattr(cfg, sibling)
    if current in values:
        return None
    return f"is ignored while {where}.{sibling}={show_value(current)} (read only while it is {_alternatives(values)})"


def _default_reaches_nothing(raw: dict, params: Params, section: str, name: str) -> Optional[str]:
    """Why the section default ``<section>.<name>`` reaches no experiment, or None when one runs with it."""
    kind = _KINDS[section]
    names = params.trained if kind == "trained" else params.retrieval
    own, idle = {}, {}
    for exp in names:
        entry = (raw.get("experiments") or {}).get(exp) or {}
        mine = entry.get(section) or {}
        if name in mine:
            own[exp] = mine[name]
            continue
        rule = _read_when(SECTION_SCHEMAS[section], name)
        cfg = _experiment_config(params, exp, section)
        if rule is not None and getattr(cfg, rule[0]) not in rule[1]:
            idle[exp] = getattr(cfg, rule[0])
            continue
        return None
    if not names:
        return f"reaches no experiment: there is no {kind} experiment"
    instead = f"; set experiments.<name>.{section}.{name} instead"
    own_list = ", ".join(f"{e}: {show_value(v)}" for e, v in own.items())
    if not idle:
        return f"reaches no experiment: every {kind} experiment sets its own {name} ({own_list}){instead}"
    sibling, values = _read_when(SECTION_SCHEMAS[section], name)
    idle_list = ", ".join(f"{e}: {show_value(v)}" for e, v in idle.items())
    read = f"read only while {section}.{sibling} is {_alternatives(values)}"
    if not own:
        return f"reaches no experiment: it is {read}, and no {kind} experiment has that ({idle_list})"
    return (f"reaches no experiment: those that read it set their own {name} ({own_list}), the others do not "
            f"({read}; theirs: {idle_list}){instead}")


def why_unread(raw: dict, params: Params, key: str) -> Optional[str]:
    """Why the dotted ``key`` changes nothing any stage reads under the validated params ``raw`` (``params``, its
    typed form), as the rest of a sentence whose subject is the key; None when a stage reads it."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[0] in _KINDS:
        return _default_reaches_nothing(raw, params, parts[0], parts[1])
    if len(parts) >= 4 and parts[0] == "experiments" and parts[2] in _KINDS:
        cfg = _experiment_config(params, parts[1], parts[2])
        return _ignored(cfg, parts[2], parts[3], ".".join(parts[:3]))
    if len(parts) >= 2 and parts[0] in SECTION_SCHEMAS:
        return _ignored(_section_config(params, parts[0]), parts[0], parts[1], parts[0])
    return None


def changed_keys(raw: dict, before: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose value in mapping ``raw`` is not the one in ``before`` (leaves: lists count as one
    value); keys only ``before`` has are left out (nothing sets them)."""
    out = []
    for key, value in raw.items():
        dotted, old = f"{prefix}{key}", before.get(key) if isinstance(before, dict) else None
        if isinstance(value, dict):
            out += changed_keys(value, old if isinstance(old, dict) else {}, dotted + ".")
        elif not isinstance(before, dict) or key not in before or old != value:
            out.append(dotted)
    return out


def value_at(raw: dict, key: str) -> Any:
    for part in key.split("."):
        raw = raw[part]
    return raw


def unread(raw: dict, keys: list[str]) -> dict[str, str]:
    """Of the dotted ``keys``, those that reach no stage under params ``raw`` (valid: check them first), each
    with why (see :func:`why_unread`)."""
    params = parse_params(raw)
    found = {}
    for key in keys:
        reason = why_unread(raw, params, key)
        if reason:
            found[key] = reason
    return found
