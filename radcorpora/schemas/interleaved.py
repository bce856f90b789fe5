"""Interleaved samples: an ordered `images` list and conversation turns whose `<image>`
placeholders refer to those images in order (the k-th placeholder, counted across all turns, is
`images[k]`), the layout LLaVA-OneVision, TRL and ms-swift read.

Every image carries its provenance in `image_provenance` (same length, same order): the sha256 of
the source file its pixels come from and, for a derived image (a crop), the image it was cut
from, the normalised box it shows and the pixel rectangle actually cut (see ops.crop). A
placeholder count that disagrees with the images would silently shift every image onto the
wrong text, so it is checked per row (pydantic) and per column (`placeholder_rows`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import ImageData, Lineage, Turn

IMAGE_PLACEHOLDER = "<image>"
SHA256_HEX = r"^[0-9a-f]{64}$"
"""Lower-case hex sha256 (a pattern RE2 takes too, so `columnar.check_table` checks it per column)."""
# Something meant as a placeholder but not written as one (`<Image>`, `< image >`, `<image_1>`,
# `</image>`): it would reach the trainer as text and leave an image without its place.
NEAR_PLACEHOLDER = r"(?i)<\s*/?\s*image[^>]{0,12}>"


class PixelCrop(BaseModel):
    """The pixel rectangle cut from the parent image: left/top inclusive, right/bottom exclusive
    (PIL's `Image.crop` convention), on the parent's stored pixel grid."""

    model_config = ConfigDict(frozen=True)

    left: int = Field(ge=0)
    top: int = Field(ge=0)
    right: int = Field(ge=1)
    bottom: int = Field(ge=1)

    @model_validator(mode="after")
    def _has_area(self) -> PixelCrop:
        if self.right <= self.left or self.bottom <= self.top:
            raise ValueError(f"crop ({self.left}, {self.top}, {self.right}, {self.bottom}) has no area")
        return self


class ImageProvenance(BaseModel):
    """Where one image of a sample comes from.

    `source_sha256` is the source file's hash (for a crop: the file its parent was read from).
    A derived image names its `parent` (index of the image in the same sample it was cut from, or
    None when the parent is not shown), the `box` it shows and the `crop` actually cut, both on the
    parent's grid (the source image's when `parent` is None); `derivation` says how (e.g.
    "crop margin=0.1 png", see ops.crop.crop_variant). An image stored as read has none of these.
    """

    model_config = ConfigDict(frozen=True)

    source_sha256: str = Field(pattern=SHA256_HEX)
    source_path: str | None = None  # relative to its source root, for people reading the row
    parent: int | None = Field(None, ge=0)
    box: Box | None = None
    crop: PixelCrop | None = None
    derivation: str | None = None

    @model_validator(mode="after")
    def _derived_has_box_and_crop(self) -> ImageProvenance:
        if (self.box is None) != (self.crop is None):
            raise ValueError("a derived image states both its box and its crop (or neither)")
        if self.box is None and (self.parent is not None or self.derivation is not None):
            raise ValueError("parent/derivation given for an image with no box and crop")
        if self.box is not None and not self.derivation:
            raise ValueError("a derived image says how it was derived (`derivation`)")
        return self

    @property
    def derived(self) -> bool:
        return self.box is not None


class InterleavedRecord(BaseModel):
    """One interleaved sample: images in placeholder order, their provenance, the conversation."""

    id: str = Field(pattern=r"\S")
    images: list[ImageData] = Field(min_length=1)
    image_provenance: list[ImageProvenance] = Field(min_length=1)
    conversations: list[Turn] = Field(min_length=2)
    lineage: Lineage

    @model_validator(mode="after")
    def _consistent(self) -> InterleavedRecord:
        problem = placeholder_problem([t.value for t in self.conversations], [t.from_ for t in self.conversations],
                                      len(self.images))
        if problem:
            raise ValueError(problem)
        problem = provenance_problem(self.image_provenance, len(self.images))
        if problem:
            raise ValueError(problem)
        return self


def placeholder_problem(values: Sequence[str], roles: Sequence[str], images: int) -> str | None:
    """Why these turns' `<image>` placeholders do not match `images` images, or None.

    The k-th placeholder (across turns, in turn order) stands for image k, so a matching count is
    what keeps the order right; placeholders belong in human turns only (an assistant does not
    emit images), and a near-miss spelling is refused rather than passed on as text.
    """
    found = 0
    for value, role in zip(values, roles, strict=True):
        count = value.count(IMAGE_PLACEHOLDER)
        if count and role != "human":
            return f"`{IMAGE_PLACEHOLDER}` in a {role} turn"
        if len(re.findall(NEAR_PLACEHOLDER, value)) != count:
            return f"a misspelt `{IMAGE_PLACEHOLDER}` placeholder in: {value[:80]!r}"
        found += count
    if found != images:
        return f"{found} `{IMAGE_PLACEHOLDER}` placeholder(s) for {images} image(s)"
    return None


def provenance_problem(provenance: Sequence[ImageProvenance], images: int) -> str | None:
    """Why a sample's provenance list does not describe its images, or None: one entry per image,
    a parent earlier in the list, and a crop of the same source file as its parent."""
    if len(provenance) != images:
        return f"{len(provenance)} provenance entries for {images} image(s)"
    for index, entry in enumerate(provenance):
        if entry.parent is None:
            continue
        if entry.parent >= index:
            return f"image {index}'s parent {entry.parent} does not come before it"
        if provenance[entry.parent].source_sha256 != entry.source_sha256:
            return f"image {index} and its parent {entry.parent} name different source files"
    return None


def placeholder_rows(table, images: str = "images", turns: str = "conversations") -> dict[str, list[int]]:
    """`placeholder_problem` on whole columns of an Arrow table (rows in file order), for
    validating shards without building one object per row: {problem: [row, ...]}."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def column(name: str) -> pa.Array:
        array = table.column(name)
        return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array

    conv = column(turns)
    rows = len(conv)
    flat = pc.list_flatten(conv)
    owner = pc.list_parent_indices(conv).to_numpy()
    values = pc.struct_field(flat, "value")
    exact = pc.count_substring(values, IMAGE_PLACEHOLDER).fill_null(0).to_numpy(zero_copy_only=False)
    near = pc.count_substring_regex(values, NEAR_PLACEHOLDER).fill_null(0).to_numpy(zero_copy_only=False)
    human = np.asarray(pc.equal(pc.struct_field(flat, "from"), "human").fill_null(False)
                       .to_numpy(zero_copy_only=False))
    found = np.bincount(owner, weights=exact, minlength=rows).astype(np.int64)
    expected = pc.list_value_length(column(images)).fill_null(0).to_numpy(zero_copy_only=False)
    problems: dict[str, list[int]] = {}
    for name, bad in (("too_many_placeholders", found > expected), ("too_few_placeholders", found < expected),
                      ("placeholder_in_assistant_turn", np.bincount(owner, weights=exact * ~human, minlength=rows) > 0),
                      ("misspelt_placeholder", np.bincount(owner, weights=near != exact, minlength=rows) > 0)):
        if bad.any():
            problems[name] = [int(r) for r in np.flatnonzero(bad)]
    return problems


def check_rows(config: str, table) -> dict[str, list[int]]:
    """Vectorised per-row rules of an interleaved config (the `row_rules` a corpus spec takes):
    placeholders against images, one provenance entry per image."""
    import numpy as np
    import pyarrow.compute as pc

    problems = placeholder_rows(table)
    images, entries = (np.asarray(pc.list_value_length(table.column(name)).fill_null(0))
                       for name in ("images", "image_provenance"))
    bad = np.flatnonzero(images != entries)
    if len(bad):
        problems["provenance_count"] = [int(r) for r in bad]
    return problems

