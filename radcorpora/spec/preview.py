"""What a corpus asks of `radcorpora preview`: its plots and an optional row renderer.

Data only (no matplotlib, no Arrow, no HTML): `engine.spec.CorpusSpec` holds a `PreviewSpec`, and
importing the spec must not pull in the renderer (`publish.preview`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class PlotSpec:
    """One plot of a config's column, by path: `metadata.pathology`, `questions[].question_type`
    (`[]` steps into list elements), `conversations` (for `length`), `boxes[]` (for `box_size`).

    kind: `count` (bar chart of values, top 20), `length` (histogram of list lengths, divided by
    `divide`: 2 turns make one round), `box_size` (histogram of box width and height as shares of
    the image). `configs`: the configs it applies to (None: every config holding the path)."""

    title: str
    path: str
    kind: Literal["count", "length", "box_size"] = "count"
    configs: tuple[str, ...] | None = None
    divide: int = 1


@dataclass(frozen=True)
class FoundBox:
    """A Box-shaped struct found in a row (or box text in a turn), with what it marks: the label,
    phrase or region of the struct that holds it (or the words before it in the text), readers."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    readers: int | None = None
    source: str = ""  # where in the row: "boxes[0]", "instances[1].boxes[0]", "turn 2"
    from_text: bool = False

    def matches(self, values: tuple[float, float, float, float], tolerance: float = 0.006) -> bool:
        """Whether `values` are this box's corners as a text prints them (rounded to 2 decimals)."""
        return all(abs(a - b) <= tolerance for a, b in zip((self.x1, self.y1, self.x2, self.y2), values))


@dataclass(frozen=True)
class RenderTools:
    """What a corpus' own row renderer gets besides the row: the default rendering and its parts."""

    default: Callable[[dict[str, Any]], str]
    images: Callable[[list[dict[str, Any]], list[FoundBox]], str]
    turns: Callable[[list[dict[str, Any]], list[FoundBox]], str]
    find_boxes: Callable[[dict[str, Any]], list[FoundBox]]
    escape: Callable[[Any], str]


RowRenderer = Callable[[dict[str, Any], RenderTools], str]


@dataclass(frozen=True)
class ManifestTable:
    """A table of the corpus' own manifest figures on the preview page (per-role counts, say):
    `rows(manifest)` gives the cells of each row under `columns` (text or numbers); no rows, no
    section."""

    title: str
    columns: tuple[str, ...]
    rows: Callable[[dict[str, Any]], list[tuple[Any, ...]]]
    note: str = ""


@dataclass(frozen=True)
class PreviewSpec:
    """A corpus' preview: its plots (None: derived from the schema), an optional row renderer
    `(row, tools) -> HTML` (None: the schema-driven default), and tables of manifest figures."""

    plots: tuple[PlotSpec, ...] | None = None
    render_row: RowRenderer | None = None
    tables: tuple[ManifestTable, ...] = ()


__all__ = ["FoundBox", "ManifestTable", "PlotSpec", "PreviewSpec", "RenderTools", "RowRenderer"]
