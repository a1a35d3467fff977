"""The one error type that prunedrop raises for a user's mistake.

It subclasses :class:`click.ClickException` so that the CLI prints it as a single line and
exits with status 1, while a Python user can catch ``PrunedropError`` without knowing about click.
"""

from __future__ import annotations

import click


class PrunedropError(click.ClickException):
    """A problem with the user's input or environment: one line saying what is wrong and what to do."""

    exit_code = 1


class ParityError(PrunedropError):
    """The ONNX model does not compute what the PyTorch model computes."""


class TrainingError(PrunedropError):
    """Fine-tuning cannot go on (loss became NaN/inf, everything pruned, ...)."""
