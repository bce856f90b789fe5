"""Volume references: a CT / MR volume named, not copied (volumes are hundreds of MB), with what
a reader needs to find it again and check it is the same file (path relative to its source root,
sha256), and to place voxels in space (shape, spacing, orientation); optionally with 2-D slices
derived from it and stored as images.

Axes are the stored array's axes (i, j, k); `orientation` is the anatomical direction each one
increases towards, as a three-letter code (nibabel's `aff2axcodes`: "RAS", "LPS", ...).
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath, PureWindowsPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from radcorpora.schemas.common import ImageData
from radcorpora.schemas.interleaved import SHA256_HEX

# A relative POSIX path: segments that are not empty, "." or "..", no backslash, no leading "/".
# Written for RE2 too (no look-arounds), so `columnar.check_table` checks it per column.
_SEGMENT = r"(?:[^/.\\][^/\\]*|\.[^/.\\][^/\\]*|\.\.[^/\\]+)"
RELATIVE_PATH = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"
ORIENTATION = r"^[RLAPSI]{3}$"
_AXIS_PAIRS = ({"R", "L"}, {"A", "P"}, {"S", "I"})


class VolumeSlice(BaseModel):
    """One 2-D slice taken from the volume: index `index` along array axis `axis`, rendered as
    `image` (how: `derivation`, e.g. "slice window=40/400 png")."""

    model_config = ConfigDict(frozen=True)

    axis: Literal[0, 1, 2]
    index: int = Field(ge=0)
    image: ImageData
    derivation: str = Field(pattern=r"\S")


class VolumeRef(BaseModel):
    """A volume file under a source root, and its voxel grid."""

    model_config = ConfigDict(frozen=True)

    source_dataset: str = Field(pattern=r"\S")
    path: str = Field(pattern=RELATIVE_PATH)  # relative to the source root, "/"-separated
    sha256: str = Field(pattern=SHA256_HEX)  # of the file's bytes
    shape: list[int] = Field(min_length=3, max_length=3)  # voxels along i, j, k
    spacing: list[float] = Field(min_length=3, max_length=3)  # mm between voxel centres along i, j, k
    orientation: str = Field(pattern=ORIENTATION)
    slices: list[VolumeSlice] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
            raise ValueError(f"path {value!r} must be relative to its source root")
        return value

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"shape {value} needs at least one voxel along each axis")
        return value

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, value: list[float]) -> list[float]:
        if not all(math.isfinite(v) and v > 0 for v in value):
            raise ValueError(f"spacing {value} must be finite and > 0 (mm)")
        return value

    @field_validator("orientation")
    @classmethod
    def _one_letter_per_axis(cls, value: str) -> str:
        if [sum(c in pair for c in value) for pair in _AXIS_PAIRS] != [1, 1, 1]:
            raise ValueError(f"orientation {value!r} must name each of R/L, A/P, S/I once (e.g. 'RAS')")
        return value

    @model_validator(mode="after")
    def _slices_inside(self) -> VolumeRef:
        for s in self.slices:
            if s.index >= self.shape[s.axis]:
                raise ValueError(f"slice {s.index} along axis {s.axis} is outside shape {self.shape}")
        return self


def volume_rows(table, column: str | None = "volume") -> dict[str, list[int]]:
    """The rules `columnar.check_table` cannot derive, on a column of VolumeRef structs (or, with
    `column` None, a table whose rows are VolumeRefs): every shape value >= 1, every spacing
    finite and > 0, each anatomical axis named once, slices inside the shape. {problem: [row, ...]}."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if column is None:
        volumes = pa.StructArray.from_arrays([table.column(n).combine_chunks() for n in table.column_names],
                                             names=table.column_names)
    else:
        volumes = table.column(column)
        if isinstance(volumes, pa.ChunkedArray):
            volumes = volumes.combine_chunks()
    rows = len(volumes)
    problems: dict[str, list[int]] = {}

    def flag(name: str, bad_rows: np.ndarray) -> None:
        if len(bad_rows):
            problems[name] = sorted({int(r) for r in bad_rows})

    shape = pc.struct_field(volumes, "shape")
    shape_values = np.asarray(pc.list_flatten(shape).fill_null(0))
    shape_owner = np.asarray(pc.list_parent_indices(shape))
    flag("shape", shape_owner[shape_values < 1])
    spacing = pc.struct_field(volumes, "spacing")
    spacing_values = np.asarray(pc.list_flatten(spacing).fill_null(np.nan))
    flag("spacing", np.asarray(pc.list_parent_indices(spacing))[~(np.isfinite(spacing_values) & (spacing_values > 0))])
    orientation = pc.struct_field(volumes, "orientation").fill_null("")
    named_once = np.ones(rows, dtype=bool)
    for pair in _AXIS_PAIRS:
        hits = sum(np.asarray(pc.count_substring(orientation, letter)) for letter in sorted(pair))
        named_once &= hits == 1
    flag("orientation", np.flatnonzero(~named_once))
    slices = pc.struct_field(volumes, "slices")
    flat = pc.list_flatten(slices)
    if len(flat):
        owner = np.asarray(pc.list_parent_indices(slices))
        axis = np.asarray(pc.struct_field(flat, "axis").fill_null(0))
        index = np.asarray(pc.struct_field(flat, "index").fill_null(0))
        grid = np.zeros((rows, 3), dtype=np.int64)
        complete = np.asarray(pc.list_value_length(shape).fill_null(0)) == 3
        grid[np.flatnonzero(complete)] = shape_values[np.isin(shape_owner, np.flatnonzero(complete))].reshape(-1, 3)
        flag("slice_outside", owner[(axis < 0) | (axis > 2) | (index >= grid[owner, np.clip(axis, 0, 2)])])
    return problems
