"""Errors of the data layer: every bad input is a ``ValueError`` with a one-line message."""

from __future__ import annotations


class SourceFileNotFoundError(FileNotFoundError, ValueError):
    """A text source file that does not exist (also a ValueError: a bad input like the others)."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
