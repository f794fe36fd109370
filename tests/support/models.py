"""Model configs for the model-building tests: a validated ``model`` section on a tiny class count."""
from __future__ import annotations

import dataclasses

from carbench.config import parse_params
from support.params import repo_params

NUM_CLASSES = 7


SIZE = 32


def cfg(**overrides):
    base = parse_params(repo_params()).experiments["cnn_basic"].model
    return dataclasses.replace(base, **overrides)
