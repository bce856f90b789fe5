"""The mix's one error type, apart from the planner so the command line can name it among the
user errors (one line, exit 2) without importing the planner's numpy and Arrow compute."""

from __future__ import annotations


class MixError(ValueError):
    """The mix cannot be made as asked; the message (one line) says why and names the input."""
