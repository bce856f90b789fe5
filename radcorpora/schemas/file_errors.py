"""What is wrong with a user's text file, as one line: the command line reports a bad file in one
line naming it, where PyYAML's own message spans four (with a caret drawing) and a codec error
names no file."""

from __future__ import annotations

from typing import Any


def yaml_problem(exc: Any) -> str:
    """`line L, column C: problem` of a `yaml.YAMLError` (its first line where it has no mark)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = problem or (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{where}{text}"


def utf8_problem(exc: UnicodeDecodeError) -> str:
    """`not UTF-8 text (reason at byte N)`, to follow the file's name."""
    return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
