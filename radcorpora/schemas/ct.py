"""Source records of the CT report readers (CT-RATE, AMOS-MM, AbdomenAtlas 3.0).

One `CtReport` per scan: CT-RATE's reconstructions of one scan share one report, so the report is
kept once and every reconstruction is listed in `volumes`. Volumes are named, not read: a
`CtVolumeFile` is a path under the source root plus what the source's own tables say about HU
(rescale slope/intercept) and spacing, which `sources.nifti` prefers to the NIfTI header (CT-RATE's
headers are unreliable, FORMATS.md §14a).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from radcorpora.schemas.common import NOT_BLANK, LicenceClass
from radcorpora.schemas.volume import RELATIVE_PATH

CtSplit = Literal["train", "validation", "test"]
OptionLetter = Literal["A", "B", "C", "D"]


class CtVolumeFile(BaseModel):
    """One NIfTI file of a scan (a CT-RATE reconstruction, an AMOS-MM image, an AbdomenAtlas ct.nii.gz).
    `rescale_*` and `spacing` are None when the source's tables do not give them (the header is then
    used); spacing is mm along the stored array axes i, j, k."""

    model_config = ConfigDict(frozen=True)

    volume_id: str = Field(pattern=NOT_BLANK)  # e.g. train_1_a_1, amos_0001, BDMAP_00000001
    path: str = Field(pattern=RELATIVE_PATH)  # relative to the source root
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    spacing: tuple[float, float, float] | None = None
    layout: str | None = None  # the folder it was found in (CT-RATE: train, train_fixed, valid, valid_fixed)

    @field_validator("rescale_slope")
    @classmethod
    def _slope(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value != 0):
            raise ValueError(f"rescale slope {value} must be finite and not 0")
        return value

    @field_validator("rescale_intercept")
    @classmethod
    def _intercept(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"rescale intercept {value} must be finite")
        return value

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and not all(math.isfinite(v) and v > 0 for v in value):
            raise ValueError(f"spacing {value} must be finite and > 0 (mm)")
        return value

    @model_validator(mode="after")
    def _both_or_neither(self) -> CtVolumeFile:
        if (self.rescale_slope is None) != (self.rescale_intercept is None):
            raise ValueError("rescale slope and intercept come together (one without the other cannot give HU)")
        return self


class CtQuestion(BaseModel):
    """A multiple-choice question shipped with the source (AMOS-MM `labels.qa`), kept as an extra
    question source: four options, the answer letter, and the source's reasoning when given."""

    model_config = ConfigDict(frozen=True)

    question: str = Field(pattern=NOT_BLANK)
    options: dict[OptionLetter, str]
    answer: OptionLetter
    reasoning: str | None = None

    @model_validator(mode="after")
    def _four_options(self) -> CtQuestion:
        if sorted(self.options) != ["A", "B", "C", "D"] or not all(v.strip() for v in self.options.values()):
            raise ValueError(f"options must be A-D, each with text (got {sorted(self.options)})")
        return self


class CtReport(BaseModel):
    """One scan's report and its volume file(s). Which text fields are set depends on the source:
    CT-RATE findings / impression / clinical information / technique; AMOS-MM findings per region
    (chest, abdomen, pelvis) and impression (per region when the source gives it so); AbdomenAtlas
    structured and narrative report (+ the fusion variants and radiologist note in `extra_text`)."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(pattern=NOT_BLANK)
    scan_id: str = Field(pattern=NOT_BLANK)
    patient_id: str = Field(pattern=NOT_BLANK)  # split integrity is checked on it
    split: CtSplit
    licence_class: LicenceClass
    volumes: tuple[CtVolumeFile, ...] = Field(min_length=1)
    findings: str | None = None
    impression: str | None = None
    clinical_information: str | None = None
    technique: str | None = None
    findings_by_region: dict[str, str] = Field(default_factory=dict)
    impression_by_region: dict[str, str] = Field(default_factory=dict)
    structured_report: str | None = None
    narrative_report: str | None = None
    extra_text: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, bool] = Field(default_factory=dict)  # CT-RATE multi-abnormality labels
    questions: tuple[CtQuestion, ...] = ()
    file: str  # where the report was read
    row: str  # its line (CSV) or item (JSON: "training[3]")

    @model_validator(mode="after")
    def _some_text(self) -> CtReport:
        if not self.text:
            raise ValueError(f"{self.scan_id}: a report needs findings, impression or a report text")
        return self

    @property
    def text(self) -> str | None:
        """The report as one text: findings (per region joined in chest-abdomen-pelvis order) and
        impression; else the narrative, else the structured report."""
        findings = self.findings or " ".join(
            f"{region.capitalize()}: {text}" for region, text in self.findings_by_region.items()) or None
        parts = [f"Findings: {findings}" if findings else None,
                 f"Impression: {self.impression}" if self.impression else None]
        joined = "\n".join(p for p in parts if p)
        return joined or self.narrative_report or self.structured_report
