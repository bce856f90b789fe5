"""What every source reader shares: who it is (licence class, citation, label space) and what a
scan returns (typed records, rejects with file and row, counts). One reader module per dataset
subclasses `SourceInfo` data and returns a `SourceScan`; builders read nothing else.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from radcorpora.schemas.common import LicenceClass, Reject
from radcorpora.sources.errors import SourceError

T = TypeVar("T")


@dataclass(frozen=True)
class SourceInfo:
    """A dataset's identity: what the card, the licence gate and the label mapping read."""

    name: str  # reader name used in lineage, e.g. "mimic-cxr"
    title: str  # human name, e.g. "MIMIC-CXR-JPG"
    licence_class: LicenceClass
    licence: str  # short licence text for the card
    citation: str  # bibtex
    labels: tuple[str, ...] = ()  # the source's own label space


@dataclass
class SourceScan(Generic[T]):
    """Records read from one source, plus what was not read and why."""

    info: SourceInfo
    root: Path
    records: list[T] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def reject(self, source: Path | str, row: int | str | None, reason: str, detail: str = "") -> None:
        self.rejects.append(Reject(source=str(source), row=None if row is None else str(row), reason=reason,
                                   detail=detail))
        self.counts[f"rejected_{reason}"] += 1


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"{path}: {what} folder does not exist")
    return path


def find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of `names` (relative to root, globs allowed) that exists; a clear error otherwise."""
    for name in names:
        hits = sorted(root.glob(name))
        if hits:
            return hits[0]
    raise SourceError(f"{root}: no {what} found (looked for {', '.join(names)})")


# What reading a damaged table raises below the CSV layer: bad bytes for the encoding, a cut or
# corrupted gzip stream (EOFError, BadGzipFile is an OSError, zlib.error), a disk error.
UNREADABLE = (csv.Error, UnicodeDecodeError, EOFError, OSError, zlib.error)


def open_text(path: Path) -> io.TextIOBase:
    """A text handle on a plain or gzip-compressed file."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_csv_rows(path: Path, required: Sequence[str], aliases: dict[str, str] | None = None
                  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV (plain or .gz); a missing required column is a SourceError
    naming the file and the columns present. `aliases` maps alternative spellings to the name
    used in `required` (e.g. VinDr's `rad_ID` -> `rad_id`). Line numbers count the header as 1."""
    aliases = aliases or {}
    try:
        handle = open_text(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot open ({exc})") from exc
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = [aliases.get(h, h) for h in (reader.fieldnames or [])]
        except UNREADABLE as exc:
            raise SourceError(f"{path}: unreadable header ({exc})") from exc
        missing = [c for c in required if c not in header]
        if missing:
            raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'})")
        reader.fieldnames = header
        try:
            for line, row in enumerate(reader, start=2):
                yield line, row
        except UNREADABLE as exc:
            raise SourceError(f"{path}: unreadable after line {reader.line_num} ({exc})") from exc


def is_file(path: Path) -> bool:
    """Whether a path a table names is a regular file. False, not an error, for a name no file can
    have (a component past the file system's limit, a NUL byte): `Path.is_file` raises there, and
    a hostile cell must end as a counted reject, not a traceback."""
    return os.path.isfile(path)


def present(path: Path) -> bool:
    """`is_file`'s twin for anything at the path (file or folder)."""
    return os.path.exists(path)


def inside(root: Path, name: str) -> Path | None:
    """`root / name` when `name` is a relative path that stays below `root` (judged on the text,
    so a symlinked image folder still counts as inside); None for an absolute path or one that
    climbs out with `..`: a hostile table must not make a build read, and publish, other files."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = Path(name.replace("\\", "/")).parts
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return None
    return Path(root) / name


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from an image file's header (JPEG, PNG...: Pillow decodes no pixels);
    SourceError naming the file when it is no readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise SourceError(f"{path}: not a readable image ({exc})") from exc


def cell(row: dict[str, Any], column: str) -> str | None:
    """A stripped cell, None when empty (empty CSV cells mean missing, never 0)."""
    value = row.get(column)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


class NotANumber(ValueError):
    """A cell or JSON value that must be a finite number and is not. `reason` and `detail` read
    like a BoxError's, so a reader rejects both with one `except` (`box_{reason}`)."""

    reason = "not_a_number"

    def __init__(self, name: str, value: object, wanted: str = "a finite number"):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else f"{shown[:50]}... ({len(shown)} characters)"
        self.detail = f"{name}={shown} is not {wanted}"
        super().__init__(self.detail)


def number(value: object, name: str = "value") -> float:
    """`value` (a CSV cell or a JSON value) as a finite float; NotANumber naming `name` and the
    value otherwise: empty or None, text that is no number (`abc`, `null`), NaN, infinities and
    values past the float range (`inf`, `-1e400`, a 400-digit JSON integer), booleans, lists and
    objects. Numeric text (`12`, ` 3.5 `) is a number: CSV cells are text."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise NotANumber(name, value)
    try:
        result = float(value)
    except (ValueError, OverflowError):
        raise NotANumber(name, value) from None
    if not math.isfinite(result):
        raise NotANumber(name, value)
    return result


def pixels(value: object, name: str = "value") -> int:
    """An image side in pixels: a positive whole number (`2544`, `2544.0`); NotANumber otherwise."""
    result = number(value, name)
    if result < 1 or not result.is_integer():
        raise NotANumber(name, value, "a positive whole number of pixels")
    return int(result)
