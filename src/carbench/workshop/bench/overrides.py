"""Params overrides as the benchmarks and the tuner (:mod:`carbench.workshop.tuning`) take them: a YAML file and
``key=value`` pairs, merged key by key."""
from __future__ import annotations

import copy

import yaml


def deep_merge(tree: dict, overrides: dict) -> dict:
    """``tree`` with ``overrides`` merged in, key by key (nested mappings merge, other values replace)."""
    out = copy.deepcopy(tree)
    for key, value in overrides.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dotted(pairs: list[str]) -> dict:
    """``["train.lr=0.1", "train.compile=true"]`` -> nested overrides (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set wants key=value, got {pair!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out

