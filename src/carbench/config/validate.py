"""The one validator: YAML mappings into the schema's dataclasses (:mod:`carbench.config.schema`), and back.

Unknown keys, missing keys, wrong types and out-of-range values raise :class:`ConfigError` naming the dotted key.
The sources file (:mod:`carbench.download.sources`) and the stored k-NN config are built with it too.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to annotation ``tp``, raising ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or value == "null":
            return None
        return _convert(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item_tp = typing.get_args(tp)[0]
        return tuple(_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        val_tp = typing.get_args(tp)[1]
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "3e-4" (no dot) as a string; accept numeric strings like DVC's -S does.
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _check_field(f: dataclasses.Field, value: Any, where: str) -> None:
    """Apply a field's ``choices``/``min``/``max``/``gt``/``lt`` metadata."""
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{where} must be one of {list(meta['choices'])}, got {value!r}")
    if value is None:
        return
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where} must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where} must be <= {meta['max']}, got {value!r}")
    if "gt" in meta and not value > meta["gt"]:
        raise ConfigError(f"{where} must be > {meta['gt']}, got {value!r}")
    if "lt" in meta and not value < meta["lt"]:
        raise ConfigError(f"{where} must be < {meta['lt']}, got {value!r}")


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``: no extra keys; every field without a default given."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]} (known keys: {', '.join(names)})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw and not _has_default(f)]
    if missing:
        raise ConfigError(f"missing key {where}.{missing[0]}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue  # the dataclass default applies
        key = f"{where}.{f.name}"
        values[f.name] = _convert(raw[f.name], hints[f.name], key)
        _check_field(f, values[f.name], key)
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(where)
    return obj


def build_with_overrides(cls: type, defaults: dict, overrides: Any, where: str) -> Any:
    """Merge an experiment's ``overrides`` over section ``defaults`` and build ``cls``.

    Unknown override keys are reported under the experiment's own path (``where``).
    """
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where} must be a mapping, got {overrides!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in names:
            raise ConfigError(f"unknown key {where}.{key} (known keys: {', '.join(sorted(names))})")
    return build(cls, {**defaults, **overrides}, where)


def section(params: dict, name: str) -> dict:
    """Section ``name`` of a raw params mapping; a ConfigError when it is missing or not a mapping."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"missing section {name!r} in params (or it is not a mapping)")
    return value


def read_yaml(path: str | Path) -> dict:
    """Read a params file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return raw


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain dicts/lists, for checkpoints and metrics."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
