"""Records of the rad-ace-cot corpus: image(s) + question + `<think>...</think><answer>...</answer>`.

`default` (train, validation) holds the generated chains of thought; `eval` holds the VQA-RAD test
questions with their images for the reference evaluation. `lineage.image_sha256` lists the hashes
of all of a sample's images, comma-separated, in image order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from radcorpora.schemas.common import ImageData, Lineage, Turn

Verification = Literal["not_run", "passed", "adjudicated"]


class CotRecord(BaseModel):
    id: str
    images: list[ImageData] = Field(min_length=1)
    question: str
    cot_output: str  # exactly what the model wrote: <think>...</think> <answer>...</answer>
    think: str
    answer: str
    conversations: list[Turn]  # LLaVA style: one <image> per image, then the question; gpt: cot_output
    modality: Literal["CT", "MR"]
    body_part: str
    source_modality: str  # PubMedVision's own `modality` text
    verification: Verification
    lineage: Lineage

    @model_validator(mode="after")
    def _consistent(self) -> CotRecord:
        if len(self.conversations) != 2 or self.conversations[1].value != self.cot_output:
            raise ValueError("conversations must be [human question, gpt cot_output]")
        if self.conversations[0].value.count("<image>") != len(self.images):
            raise ValueError("the human turn must hold one <image> per image")
        return self


class CotEvalRecord(BaseModel):
    """One VQA-RAD test question, asked on its own (never one prompt for all of an image's questions)."""

    id: str
    image: ImageData
    question: str
    answer: str
    answer_type: Literal["OPEN", "CLOSED"]
    organ: str | None = None
    question_type: str | None = None
    lineage: Lineage


CONFIG_RECORDS: dict[str, type[BaseModel]] = {"default": CotRecord, "eval": CotEvalRecord}
