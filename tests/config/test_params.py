"""carbench.config.params: params.yaml and the shipped overrides load and parse; a missing file is named; loading
needs no torch."""
from __future__ import annotations

import copy

import pytest
import yaml
from support.params import ROOT

from carbench.config import ConfigError, load_params, parse_params


def test_repository_params_are_valid(params_path):
    params = load_params(params_path)
    assert len(params.experiments) == 10      # the nine, and the untrained-ImageNet retrieval baseline
    configs = [e.config for e in params.experiments.values()]
    assert configs.count("transfer") == configs.count("scratch") == 3 and configs.count("retrieval") == 4
    assert [n for n in params.retrieval if params.experiments[n].pretrained] == ["knn_imagenet_baseline"]


def test_offline_overrides_are_valid(raw):
    offline = yaml.safe_load((ROOT / "configs" / "overrides" / "offline.yaml").read_text())

    def merge(base: dict, over: dict) -> dict:
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    params = parse_params(merge(raw, offline))
    assert params.data.source == "synthetic"
    assert params.experiments["tl_resnet50_frozen"].model.arch == "mobilenet_v2"
    assert params.experiments["knn_imagenet_baseline"].embedder.arch == "mobilenet_v2"   # weights that install offline


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_loading_params_does_not_import_torch(params_path):
    """Every stage loads params; arch and weights names are checked by the resolve stage instead (torchvision)."""
    import subprocess
    import sys

    code = ("import sys; from carbench.config import load_params; load_params(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(params_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
