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
from radcorpora.spec.rules import RowRules

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


# --------------------------------------------------------------------------- per-row rules, vectorised
# The cross-field rules above (`QuestionAnswer._consistent`, `InstructRecord._pairs`) and the
# label agreement rules, run on whole Arrow columns: the builder checks every batch it writes with
# them, and `radcorpora validate` checks every shard. (rule name, row numbers that break it).


def _mask_rows(mask, rows) -> list[int]:
    import numpy as np

    bad = np.flatnonzero(np.asarray(mask.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool))
    return sorted({int(rows[i]) for i in bad})


def _question_rules(qa, rows, location, pathology, is_abnormal) -> dict[str, list[int]]:
    """Rules on a struct array of questions (QuestionAnswer fields); `location` etc. are the
    image labels aligned with `qa`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from radcorpora.schemas.taxonomy import radimagenet_vqa_taxonomy

    none = radimagenet_vqa_taxonomy().no_pathology_answer
    qtype = pc.struct_field(qa, "question_type")
    answer = pc.struct_field(qa, "answer")
    meta = pc.struct_field(qa, "metadata")
    correct = pc.struct_field(meta, "correct_text")
    qid = pc.struct_field(meta, "question_id")
    choices = pc.struct_field(qa, "choices")
    is_mc = pc.equal(qtype, "multiple_choice")
    n_choices = pc.fill_null(pc.list_value_length(choices), 0)
    letter_index = pc.index_in(answer, value_set=pa.array(list(LETTERS)))
    # the option the letter points at: flat offset of the row's first choice + the letter index
    offsets = pc.list_value_length(choices).fill_null(0).to_numpy(zero_copy_only=False).cumsum()
    starts = pa.array(offsets - n_choices.to_numpy(zero_copy_only=False))
    flat = pc.list_flatten(choices)
    picked_index = pc.add(starts, pc.fill_null(letter_index, 0))
    safe = pc.if_else(pc.and_(is_mc, pc.less(picked_index, len(flat))), picked_index, 0)
    picked = pc.take(flat, safe) if len(flat) else pa.nulls(len(qa), pa.string())
    mc_ok = pc.and_(pc.equal(n_choices, 4), pc.and_(pc.is_valid(letter_index), pc.equal(picked, correct)))
    closed_ok = pc.and_(pc.is_in(answer, value_set=pa.array(["yes", "no"])), pc.equal(answer, correct))
    open_ok = pc.equal(answer, correct)
    consistent = pc.if_else(is_mc, mc_ok, pc.if_else(pc.equal(qtype, "closed"), pc.and_(closed_ok, pc.equal(n_choices, 0)),
                                                     pc.and_(open_ok, pc.equal(n_choices, 0))))
    truth = pc.if_else(is_abnormal, pathology, pa.scalar(none))
    expected_by_slot = {
        "anatomy_open": location,
        "pathology_open": truth,
        "abnormality_closed": pc.if_else(is_abnormal, pa.scalar("yes"), pa.scalar("no")),
    }
    labels_ok = pc.and_(pc.equal(pc.struct_field(meta, "location"), location),
                        pc.equal(pc.struct_field(meta, "pathology"), pathology))
    for slot, expected in expected_by_slot.items():
        labels_ok = pc.and_(labels_ok, pc.or_(pc.not_equal(qid, slot), pc.equal(correct, expected)))
    subject = pc.struct_field(qa, "subject")
    own = pc.if_else(pc.starts_with(qid, "anatomy"), location, truth)
    positive = pc.and_(pc.match_substring(qid, "closed_positive"), pc.invert(pc.starts_with(qid, "abnormality")))
    negative = pc.match_substring(qid, "closed_negative")
    asks_own = pc.fill_null(pc.equal(subject, own), False)
    asks_other = pc.and_(pc.is_valid(subject), pc.fill_null(pc.not_equal(subject, own), False))
    polarity_ok = pc.and_(
        pc.or_(pc.invert(positive), pc.and_(asks_own, pc.equal(answer, "yes"))),
        pc.or_(pc.invert(negative), pc.and_(asks_other, pc.equal(answer, "no"))))
    known_slot = pc.is_in(qid, value_set=pa.array(list(QUESTION_IDS)))
    return {
        "question_consistent": _mask_rows(pc.invert(pc.and_(consistent, known_slot)), rows),
        "answers_match_labels": _mask_rows(pc.invert(labels_ok), rows),
        "closed_polarity": _mask_rows(pc.invert(polarity_ok), rows),
    }


def check_rows(config: str, table) -> dict[str, list[int]]:
    """Vectorised per-row rules of one config's batch: rule -> violating row numbers."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = np.arange(table.num_rows)
    problems: dict[str, list[int]] = {}
    if config == "benchmark":
        qa = pa.StructArray.from_arrays(
            [_combined(table, c) for c in ("question", "choices", "answer", "question_type", "metadata", "subject")],
            names=["question", "choices", "answer", "question_type", "metadata", "subject"])
        meta = _combined(table, "metadata")
        problems.update(_question_rules(qa, rows, pc.struct_field(meta, "location"), pc.struct_field(meta, "pathology"),
                                        pc.struct_field(meta, "is_abnormal")))
        return {rule: found for rule, found in problems.items() if found}
    conv = _combined(table, "conversations")
    turns = pc.list_flatten(conv)
    turn_rows = pc.list_parent_indices(conv).to_numpy()
    lengths = pc.list_value_length(conv).fill_null(0).to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    position = np.arange(len(turns)) - starts[turn_rows] if len(turns) else np.zeros(0, dtype=np.int64)
    structure: set[int] = set()
    if len(turns):
        role = np.asarray(pc.struct_field(turns, "from").to_numpy(zero_copy_only=False))
        value = pc.struct_field(turns, "value")
        expected_role = np.where(position % 2 == 0, "human", "gpt")
        structure |= set(map(int, turn_rows[role != expected_role]))
        opens = np.asarray(pc.starts_with(value, "<image>").fill_null(False).to_numpy(zero_copy_only=False))
        structure |= set(map(int, turn_rows[(position == 0) & ~opens]))
    if config == "alignment":
        structure |= set(map(int, rows[lengths != 2]))
    if config == "instruct":
        qa_col = _combined(table, "questions")
        n_questions = pc.list_value_length(qa_col).fill_null(0).to_numpy()
        structure |= set(map(int, rows[lengths != 2 * n_questions]))
        structure |= set(map(int, rows[n_questions != len(QUESTION_IDS)]))
        qa = pc.list_flatten(qa_col)
        qa_rows = pc.list_parent_indices(qa_col).to_numpy()
        if len(turns):
            gpt = pc.struct_field(turns, "value").filter(pa.array(position % 2 == 1, pa.bool_()))
            if len(gpt) == len(qa):
                same = np.asarray(pc.equal(gpt, pc.struct_field(qa, "answer")).fill_null(False)
                                  .to_numpy(zero_copy_only=False))
                structure |= set(map(int, qa_rows[~same]))
        meta = _combined(table, "metadata")
        take = pa.array(qa_rows, pa.int64())
        problems.update(_question_rules(qa, qa_rows, pc.take(pc.struct_field(meta, "location"), take),
                                        pc.take(pc.struct_field(meta, "pathology"), take),
                                        pc.take(pc.struct_field(meta, "is_abnormal"), take)))
    problems["conversation_structure"] = sorted(structure)
    return {rule: found for rule, found in problems.items() if found}


def _combined(table, name):
    column = table.column(name)
    return column.combine_chunks() if hasattr(column, "combine_chunks") else column


ROW_RULES = RowRules({
    "question_consistent": "each question's slot, type and subject agree with its wording slot",
    "answers_match_labels": "every answer agrees with the image's region / pathology labels",
    "closed_polarity": "closed+ asks the true label (yes); closed- asks something absent (no)",
    "conversation_structure": "conversations alternate human/gpt, open with <image>, and match the questions",
}, check_rows)
