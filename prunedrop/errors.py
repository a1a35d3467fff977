"""The one error type that prunedrop raises for a user's mistake.

It subclasses :class:`click.ClickException` so that the CLI prints it as a single line and
exits with status 1, while a Python user can catch ``PrunedropError`` without knowing about click.
"""

from __future__ import annotations

import click


def one_line(text: str, limit: int = 160) -> str:
    """``text`` with its whitespace collapsed (a wrapped message cannot break a one-line error), cut to ``limit``."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` of an exception on one line, the message cut to ``limit``, for quoting in an error."""
    text = one_line(str(exc), limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PrunedropError(click.ClickException):
    """A problem with the user's input or environment: one line saying what is wrong and what to do."""

    exit_code = 1
    #: longest message kept: a hostile input quoted in full (a megabyte-long recipe value) stays readable
    max_length = 1000

    def __init__(self, message: str) -> None:
        # one line, whatever a hostile input quoted in it holds (a recipe key with a newline in it): characters
        # that are not printable are written as escapes (\n, \x0b, \u2028)
        text = str(message).strip()
        kept = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in text[: self.max_length])
        if len(text) > self.max_length:
            kept += f"... ({len(text) - self.max_length:,} more characters)"
        super().__init__(kept)

class ParityError(PrunedropError):
    """The ONNX model does not compute what the PyTorch model computes."""


class TrainingError(PrunedropError):
    """Fine-tuning cannot go on (loss became NaN/inf, everything pruned, ...)."""
