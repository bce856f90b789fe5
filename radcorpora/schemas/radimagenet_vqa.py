"""Records of the radimagenet-vqa corpus, shaped like the published `raidium/RadImageNet-VQA`.

Published benchmark columns: image, question, choices (4 or null), answer (letter / yes / no /
text), question_type, metadata{content_type, correct_text, is_abnormal, location, modality,
pathology, question_id}. Alignment / instruct: image, id, LLaVA-style conversations. We add
`id` and `lineage` columns; tools reading the published columns ignore them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from radcorpora.schemas.common import ImageData, Lineage, Turn

QuestionType = Literal["open", "closed", "multiple_choice"]
ContentType = Literal["anatomy", "pathology", "pathology_specific"]
Modality = Literal["CT", "MR"]
LETTERS = ("A", "B", "C", "D")

# The nine question slots asked of every image: (question_id, task, question_type, polarity).
QUESTION_SLOTS: tuple[tuple[str, str, QuestionType, str], ...] = (
    ("anatomy_open", "anatomy", "open", ""),
    ("anatomy_closed_positive", "anatomy", "closed", "positive"),
    ("anatomy_closed_negative", "anatomy", "closed", "negative"),
    ("anatomy_multiple_choice", "anatomy", "multiple_choice", ""),
    ("abnormality_closed", "abnormality", "closed", ""),
    ("pathology_open", "pathology", "open", ""),
    ("pathology_closed_positive", "pathology", "closed", "positive"),
    ("pathology_closed_negative", "pathology", "closed", "negative"),
    ("pathology_multiple_choice", "pathology", "multiple_choice", ""),
)
QUESTION_IDS = tuple(slot[0] for slot in QUESTION_SLOTS)
# The published `content_type`: anatomy recognition, abnormality detection ("is there any
# pathology"), and identification of the specific pathology.
CONTENT_TYPE_OF_TASK: dict[str, ContentType] = {
    "anatomy": "anatomy",
    "abnormality": "pathology",
    "pathology": "pathology_specific",
}


class QuestionMetadata(BaseModel):
    """The published benchmark `metadata` struct."""

    model_config = ConfigDict(frozen=True)

    content_type: ContentType
    correct_text: str
    is_abnormal: bool
    location: str
    modality: Modality
    pathology: str
    question_id: str


class QuestionAnswer(BaseModel):
    """One question about an image, with its answer; validated on construction."""

    model_config = ConfigDict(frozen=True)

    question: str = Field(min_length=1)
    choices: list[str] | None = None
    answer: str = Field(min_length=1)
    question_type: QuestionType
    metadata: QuestionMetadata
    # What a closed question names (a region, a pathology, or "no pathology seen"): lets the
    # validators check that a closed-negative question really asks about something absent.
    subject: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> QuestionAnswer:
        if self.question_type == "multiple_choice":
            if self.choices is None or len(self.choices) != 4:
                raise ValueError("multiple-choice question needs exactly 4 choices")
            if len({c.strip().lower() for c in self.choices}) != 4:
                raise ValueError(f"duplicate choices: {self.choices}")
            if self.answer not in LETTERS:
                raise ValueError(f"multiple-choice answer must be a letter A-D, got {self.answer!r}")
            if self.choices[LETTERS.index(self.answer)] != self.metadata.correct_text:
                raise ValueError("answer letter does not point at correct_text")
        else:
            if self.choices is not None:
                raise ValueError(f"{self.question_type} question must not have choices")
            if self.question_type == "closed" and self.answer not in ("yes", "no"):
                raise ValueError(f"closed answer must be 'yes' or 'no', got {self.answer!r}")
            if self.question_type == "closed" and self.metadata.correct_text != self.answer:
                raise ValueError("closed correct_text must equal the yes/no answer")
            if self.question_type == "open" and self.answer != self.metadata.correct_text:
                raise ValueError("open answer must equal correct_text")
        return self


class ImageLabels(BaseModel):
    """Image-level labels shared by all of an image's samples."""

    model_config = ConfigDict(frozen=True)

    is_abnormal: bool
    location: str
    modality: Modality
    pathology: str


class AlignmentRecord(BaseModel):
    """`alignment` config: one image, one caption conversation."""

    image: ImageData
    id: str
    conversations: list[Turn]
    metadata: ImageLabels
    lineage: Lineage


class InstructRecord(BaseModel):
    """`instruct` config: one image, its nine questions as a multi-turn conversation.

    The image is stored once per row, not once per question; `questions[i]` describes the
    i-th human/gpt pair of `conversations`. Use `radcorpora.publish.views.question_view` for
    one training example per question.
    """

    image: ImageData
    id: str
    conversations: list[Turn]
    questions: list[QuestionAnswer]
    metadata: ImageLabels
    lineage: Lineage

    @model_validator(mode="after")
    def _pairs(self) -> InstructRecord:
        if len(self.conversations) != 2 * len(self.questions):
            raise ValueError("conversations must hold one human/gpt pair per question")
        for i, turn in enumerate(self.conversations):
            expected = "human" if i % 2 == 0 else "gpt"
            if turn.from_ != expected:
                raise ValueError(f"turn {i} should be from {expected!r}")
        return self


class BenchmarkRecord(BaseModel):
    """`benchmark` config: one row per question, the published layout."""

    image: ImageData
    id: str
    question: str
    choices: list[str] | None
    answer: str
    question_type: QuestionType
    metadata: QuestionMetadata
    subject: str | None
    lineage: Lineage


CONFIG_RECORDS: dict[str, type[BaseModel]] = {
    "alignment": AlignmentRecord,
    "instruct": InstructRecord,
    "benchmark": BenchmarkRecord,
}
