"""Source records of the GEMeX / GEMeX-ThinkVG readers: one record per MIMIC-CXR-JPG image with
its questions, each question with its answer, its reasoning text and the regions (name + box)
that ground it. Builders (mmrad-ivl) join these with the MIMIC-CXR images and reports by
dicom_id / study_id; they never see a Parquet column or a JSON key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import NOT_BLANK

GemexQuestionType = Literal["closed", "open", "single", "multi"]
QUESTION_TYPE_ORDER: tuple[GemexQuestionType, ...] = ("closed", "open", "single", "multi")
"""The order an image's questions are merged in: closed (yes/no) first, then open, single-choice
and multi-choice; within a type the source's own order (see sources/gemex.py)."""


class RegionBox(BaseModel):
    """A region name as the source writes it (not yet mapped to a group) and its box."""

    model_config = ConfigDict(frozen=True)

    region: str = Field(pattern=NOT_BLANK)
    box: Box


class GemexQuestion(BaseModel):
    """One question about an image. `reasoning`: ThinkVG's reasoning text (regions written in it
    as `(region [x1, y1, x2, y2])`) or GEMeX's `reason`; `source` and `row` say where it was read
    (Parquet: 0-based row index in the file; JSONL: 1-based line number)."""

    model_config = ConfigDict(frozen=True)

    question_type: GemexQuestionType
    question: str = Field(pattern=NOT_BLANK)
    answer: str = Field(pattern=NOT_BLANK)
    reasoning: str
    regions: tuple[RegionBox, ...] = Field(default_factory=tuple)
    choices: tuple[str, ...] = Field(default_factory=tuple)
    q_id: int | None = None
    source: str
    row: str


class GemexImage(BaseModel):
    """A MIMIC-CXR-JPG image and its questions in merge order (QUESTION_TYPE_ORDER, then source
    order). `image_path` is relative to MIMIC-CXR-JPG `files/` (`pNN/p<subject>/s<study>/<dicom_id>.jpg`,
    no leading `/`). `report`: the JSONL files' `ori_report` where given (ThinkVG has none; use the
    MIMIC-CXR report reader)."""

    model_config = ConfigDict(frozen=True)

    source: str
    image_id: str  # dicom_id
    subject_id: str
    study_id: str
    image_path: str
    questions: tuple[GemexQuestion, ...]
    report: str | None = None
    licence_class: Literal["credentialed"] = "credentialed"
