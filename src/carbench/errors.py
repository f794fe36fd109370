"""Errors a user can cause (bad data, bad params, missing weights): reported as one clear line."""
from __future__ import annotations


class UserError(RuntimeError):
    """A problem with the user's input; the message names the file or key and says what to do."""


class DataError(UserError):
    """Invalid or missing data: a corrupt image, a bad annotation, a layout that matches nothing."""


class WeightsError(UserError):
    """Pretrained weights cannot be had (offline, or the file is missing)."""
