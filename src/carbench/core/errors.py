"""Errors and warnings a user can cause (bad data, bad params, missing weights): reported as one clear line.
Every exception and warning class of the package lives here."""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator


class UserError(RuntimeError):
    """A problem with the user's input; the message names the file or key and says what to do."""


class DataError(UserError):
    """Invalid or missing data: a corrupt image, a bad annotation, a layout that matches nothing."""


class ImageError(DataError):
    """A photo Pillow cannot read (not an image, damaged, truncated, too large); the message is the reason only:
    the caller names the photo."""


class WeightsError(UserError):
    """Pretrained weights cannot be had (offline, or the file is missing)."""


class ConfigError(ValueError):
    """A params value is invalid; the message names the dotted key."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached a stage or command (Ctrl-C, ``kill``, a scheduler's time limit); ``signum`` says
    which. A KeyboardInterrupt, so every clean-up that handles Ctrl-C (temporary outputs, resume state) runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class DataWarning(UserWarning):
    """Usable but imperfect data (no boxes, classes missing from a split, skipped images)."""


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show our data warnings as one ``warning: ...`` line, without the file, line and source Python adds."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (warnings' signature)
        if issubclass(category, DataWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
