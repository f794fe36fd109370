"""A tiny world with exported models (for the export, runtime and predict tests)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from support.retrieval import fit_retrieval, make_world

RETRIEVAL = "knn_resnet50_k3"
#: One classifier and one retrieval model: both kinds of export.
EXPORTED = ("cnn_basic", RETRIEVAL)


def export_world(root: Path) -> SimpleNamespace:
    """make_world + the retrieval fit + the export stage's work for :data:`EXPORTED`; ``exports[name]`` is the
    folder, ``parity[name]`` the metrics path."""
    from carbench.export.export import export_experiment

    world = make_world(root)
    fit_retrieval(world, RETRIEVAL)
    world.exports, world.parity = {}, {}
    for name in EXPORTED:
        world.exports[name] = root / "exports" / name
        world.parity[name] = root / "metrics" / "export" / f"{name}.json"
        export_experiment(name, world.crops, world.models, world.exports[name], world.parity[name])
    return world
