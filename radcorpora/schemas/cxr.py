"""Source records of the chest X-ray readers (MIMIC-CXR, CheXpert(-Plus), Chest ImaGenome, VinDr-CXR,
MS-CXR, PadChest-GR) and the shared label vocabulary tasks that mix sources map onto.

Readers turn each upstream layout into these typed records; builders never see a CSV column.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import LicenceClass

# The 14 CheXpert observations (CheXbert / CheXpert labeler), in the order the CheXpert CSVs use.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
LabelValue = Literal["positive", "negative", "uncertain", "not_mentioned"]
"""CheXpert-style label states: 1.0, 0.0, -1.0 and empty in the upstream tables."""

View = Literal["PA", "AP", "FRONTAL", "LATERAL", "LL", "OTHER", "UNKNOWN"]
"""FRONTAL: a frontal image whose source does not say AP or PA (CheXpert's `Frontal/Lateral` =
Frontal with an empty `AP/PA`, or only a `viewK_frontal.jpg` file name)."""
Split = Literal["train", "validation", "test"]
Sex = Literal["F", "M", "unknown"]


class CxrImage(BaseModel):
    """One chest radiograph as a source knows it. `path` is absolute; `image_id` is the source's
    own image id (MIMIC dicom_id, VinDr image_id, PadChest ImageID, CheXpert relative path)."""

    model_config = ConfigDict(frozen=True)

    source: str  # reader name, e.g. "mimic-cxr"
    image_id: str
    subject_id: str  # patient id as the source spells it (split integrity is checked on it)
    study_id: str | None = None
    path: str
    view: View = "UNKNOWN"
    split: Split
    width: int | None = None  # pixels, when the source states them
    height: int | None = None
    sex: Sex = "unknown"
    licence_class: LicenceClass

    @property
    def frontal(self) -> bool:
        return self.view in ("PA", "AP", "FRONTAL")


class StudyReport(BaseModel):
    """A free-text report, split into the sections report generation uses."""

    model_config = ConfigDict(frozen=True)

    source: str
    subject_id: str
    study_id: str
    findings: str | None = None
    impression: str | None = None
    file: str  # where it was read, for rejects and lineage

    @property
    def text(self) -> str | None:
        """Findings, else impression (RadVLM's rule)."""
        return self.findings or self.impression


class ImageLabels(BaseModel):
    """CheXpert-vocabulary labels of one image (or of its study, copied to each image)."""

    model_config = ConfigDict(frozen=True)

    image: CxrImage
    labels: dict[str, LabelValue]  # CHEXPERT_LABELS -> state; every label present


class GroundedFinding(BaseModel):
    """A label or a phrase with its boxes on one image. For reader-annotated sources (VinDr) each
    box keeps its annotator in `reader`; fusion happens in the builder, not in the reader."""

    model_config = ConfigDict(frozen=True)

    image: CxrImage
    label: str  # class name (VinDr), region name (Chest ImaGenome), category (MS-CXR) or the phrase
    phrase: str | None = None  # grounded sentence, for phrase grounding
    boxes: tuple[Box, ...] = Field(default_factory=tuple)
    readers: tuple[str, ...] = Field(default_factory=tuple)  # one per box where known (VinDr rad_id)
    abnormal: bool = True
