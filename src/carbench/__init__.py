"""carbench: a reproducible DVC benchmark of fine-grained car recognition on Stanford Cars."""

__version__ = "0.1.0"
