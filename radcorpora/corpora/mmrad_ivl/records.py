"""Records of mmrad-ivl: one row per trace. `images[0]` is the full image as read, `images[1:]` the
crops of the group steps in step order; `prompt` holds one `<image>` (the full image) and
`response` one per crop, in the order of `images[1:]` (the public MMRad-IVL layout, where the model
emits the crops). `steps` gives each group's regions, text, union box (normalised, stating the
stored image's size) and the pixel rectangles of the box and of the crop cut.

Placeholders sit in `response`, an assistant text, so the record has no `conversations` column
(the shared rule forbids images in assistant turns); ROW_RULES check the layout instead.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import ImageData, Lineage
from radcorpora.schemas.interleaved import IMAGE_PLACEHOLDER, NEAR_PLACEHOLDER, ImageProvenance
from radcorpora.spec.rules import RowRules

Group = Literal["mediastinal", "lung", "bone", "other"]
Verification = Literal["not_run", "passed", "adjudicated"]


class GroupStepRecord(BaseModel):
    group: Group
    regions: list[str] = Field(min_length=1)
    text: str
    box: Box  # union of the group's region boxes, normalised, width/height of images[0]
    box_pixels: list[int] = Field(min_length=4, max_length=4)  # [left, top, right, bottom) covering `box`
    crop_pixels: list[int] = Field(min_length=4, max_length=4)  # what the crop holds (box + --crop-margin)
    image: int = Field(ge=1)  # index of its crop in `images`


class ReflectionChange(BaseModel):
    step: int
    region: str
    before: str
    after: str
    reason: str


class LlmProvenance(BaseModel):
    summariser: str
    auditors: list[str]
    verification: Verification
    reflection_changes: list[ReflectionChange]
    region_steps: int  # steps the summary had before aggregation


class MmradIvlRecord(BaseModel):
    id: str
    images: list[ImageData] = Field(min_length=2)
    image_provenance: list[ImageProvenance] = Field(min_length=2)
    prompt: str
    response: str
    steps: list[GroupStepRecord] = Field(min_length=1)
    report: str
    subject_id: str
    study_id: str
    questions: int  # GEMeX-ThinkVG questions merged into the trace
    llm: LlmProvenance
    lineage: Lineage

    @model_validator(mode="after")
    def _consistent(self) -> MmradIvlRecord:
        problem = layout_problem(self.prompt, self.response, len(self.images), [s.image for s in self.steps],
                                 len(self.image_provenance))
        if problem:
            raise ValueError(problem)
        for step in self.steps:
            crop = self.image_provenance[step.image].crop
            if crop is None or [crop.left, crop.top, crop.right, crop.bottom] != step.crop_pixels:
                raise ValueError(f"step {step.group}: its crop provenance is not its crop_pixels")
        return self


def layout_problem(prompt: str, response: str, images: int, step_images: list[int], provenance: int) -> str | None:
    """Why a row's placeholders, steps and images disagree, or None."""
    for name, text in (("prompt", prompt), ("response", response)):
        if len(re.findall(NEAR_PLACEHOLDER, text)) != text.count(IMAGE_PLACEHOLDER):
            return f"a misspelt `{IMAGE_PLACEHOLDER}` in {name}"
    if prompt.count(IMAGE_PLACEHOLDER) != 1:
        return f"prompt holds {prompt.count(IMAGE_PLACEHOLDER)} `{IMAGE_PLACEHOLDER}`, not 1 (the full image)"
    if response.count(IMAGE_PLACEHOLDER) != images - 1:
        return f"response holds {response.count(IMAGE_PLACEHOLDER)} `{IMAGE_PLACEHOLDER}` for {images - 1} crop(s)"
    if step_images != list(range(1, images)):
        return f"steps point at images {step_images}, not 1..{images - 1} in order"
    if provenance != images:
        return f"{provenance} provenance entries for {images} images"
    return None


ROW_NAMES = {
    "placeholder_order": "prompt holds one <image> (images[0]); response one per crop, steps pointing at images[1:] in order",
    "crop_is_step_box": "each crop's provenance is its full image's child and states the step's box and crop_pixels",
}


def check_rows(config: str, table) -> dict[str, list[int]]:
    """Per batch; the columns are small (no image bytes are read)."""
    prompts, responses = table.column("prompt").to_pylist(), table.column("response").to_pylist()
    steps, provenance = table.column("steps").to_pylist(), table.column("image_provenance").to_pylist()
    from pyarrow import compute as pc

    images = pc.list_value_length(table.column("images")).to_pylist()
    broken: dict[str, list[int]] = {}
    for row, (prompt, response, row_steps, entries, count) in enumerate(zip(prompts, responses, steps, provenance,
                                                                            images)):
        if layout_problem(prompt, response, count, [s["image"] for s in row_steps], len(entries)):
            broken.setdefault("placeholder_order", []).append(row)
            continue
        for step in row_steps:
            entry = entries[step["image"]]
            crop = entry.get("crop") or {}
            box = entry.get("box") or {}
            if (entry.get("parent") != 0 or entry.get("source_sha256") != entries[0].get("source_sha256")
                    or [crop.get(k) for k in ("left", "top", "right", "bottom")] != step["crop_pixels"]
                    or [box.get(k) for k in ("x1", "y1", "x2", "y2")] != [step["box"][k] for k in ("x1", "y1", "x2", "y2")]):
                broken.setdefault("crop_is_step_box", []).append(row)
                break
    return broken


ROW_RULES = RowRules(ROW_NAMES, check_rows)
CONFIG_RECORDS: dict[str, type[BaseModel]] = {"default": MmradIvlRecord}
