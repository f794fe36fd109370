"""The scale benchmark's data and workspace: a generated dataset of Stanford Cars' size, the repository's params
with the data path, offline and random-init weights files, and a copy of the repository to run ``dvc repro`` in."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import yaml

from .overrides import deep_merge

#: Stanford Cars: 8,144 train / 8,041 test photos of 196 classes (median photo ~700 x 480 px).
SCALE_DATA = {"num_classes": 196, "train_per_class": 42, "test_per_class": 41, "min_size": 300, "max_size": 900,
              "grayscale_fraction": 0.01}
#: Not copied into the workspace (paths from the repository root): the pipeline's outputs and DVC's cache. Neither
#: is any hidden entry of the root other than :data:`COPY_HIDDEN` (git, environments, caches, whatever a user keeps
#: there).
COPY_SKIP = {".dvc/cache", ".dvc/tmp", "data", "models", "metrics", "plots", "dvc_plots"}
COPY_HIDDEN = {".dvc", ".dvcignore", ".gitignore"}
COPY_SKIP_NAMES = {"__pycache__"}


def make_data(out: Path, seed: int, workers: int, scale: dict) -> float:
    """Generate the scale dataset into ``out/stanford_cars``; returns the seconds it took."""
    from carbench.config import SyntheticConfig, build
    from carbench.download.synthetic import generate

    start = time.perf_counter()
    generate(out, build(SyntheticConfig, scale, "scale"), seed, workers)
    return time.perf_counter() - start


def scale_params(raw: dict, data_path: Path, overrides: dict, weights_dir: Path) -> dict:
    """The repository's params for the scale run: ``overrides`` merged in, local data, offline, and every
    torchvision weights name replaced by a random-init state_dict file of that architecture written into
    ``weights_dir`` (speed does not depend on the weights; the loading path still runs as with real ones)."""
    from carbench.config import parse_params

    # The data location last: an overrides file that names a data source (the offline demo's) must not replace
    # the data whose photo count the figures are scaled by.
    params = deep_merge(deep_merge(raw, overrides), {"base": {"offline": True},
                                                     "data": {"source": "local", "path": str(data_path.resolve())}})
    for name, exp in parse_params(params).experiments.items():
        if exp.trained and exp.model.weights != "none" and not Path(exp.model.weights).is_file():
            entry = params["experiments"][name]
            entry.setdefault("model", {})["weights"] = str(random_weights(exp.model.arch, weights_dir))
    # retrieval baselines that embed with pretrained weights, untrained (dag.pretrained): the same
    for entry in ((params.get("dag") or {}).get("pretrained") or {}).values():
        if not Path(entry["weights"]).is_file():
            entry["weights"] = str(random_weights(entry["arch"], weights_dir))
    return params


def random_weights(arch: str, folder: Path) -> Path:
    """``folder/<arch>-random-init.pth``: torchvision's ``arch`` with random weights (written once)."""
    import torch
    import torchvision

    path = folder / f"{arch}-random-init.pth"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return path.resolve()


def make_workspace(root: Path, work: Path, params: dict) -> Path:
    """Copy the files of the repository at ``root`` into ``work/repo`` (a fresh git repository) with ``params`` as
    params.yaml."""
    root = Path(root).resolve()
    repo = work / "repo"
    if repo.exists():
        shutil.rmtree(repo)

    def skip(folder: str, names: list[str]) -> set:
        rel = Path(folder).resolve().relative_to(root)
        hidden = {n for n in names if n.startswith(".") and n not in COPY_HIDDEN} if rel == Path(".") else set()
        return hidden | {n for n in names if (rel / n).as_posix() in COPY_SKIP or n in COPY_SKIP_NAMES}

    shutil.copytree(root, repo, ignore=skip)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=scale", "-c", "user.email=scale@localhost"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "scale benchmark workspace"], cwd=repo, check=True)
    return repo

