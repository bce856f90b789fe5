"""Preference pairs: one prompt (turns, with `<image>` placeholders for its images), a chosen and
a rejected answer, the scores that ranked them and what gave the scores; the layout TRL's DPO
trainer reads as prompt / chosen / rejected / images.

Loss intent "preference" (LOSS_INTENT): neither answer is a plain target; the trainer compares
the two. `engine.spec.LossIntent` and `publish.exports.common.LOSS_INTENTS` gain this value when
a corpus first registers a preference config (not before: no export writes pairs yet).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field, model_validator

from radcorpora.schemas.common import NOT_BLANK, ImageData, Lineage, Turn
from radcorpora.schemas.interleaved import (
    NEAR_PLACEHOLDER,
    ImageProvenance,
    placeholder_problem,
    placeholder_rows,
    provenance_problem,
)

LOSS_INTENT = "preference"


class PreferencePair(BaseModel):
    """A prompt, the answer preferred over another, and why (scores from `scorer`).

    `prompt` alternates human/gpt and ends with a human turn; `chosen` and `rejected` are the gpt
    turns that could follow it. `images` are the images the prompt's placeholders stand for, in
    order, each with its provenance (the image refs: source sha256, parent, box, crop).
    """

    id: str = Field(pattern=NOT_BLANK)
    images: list[ImageData] = Field(default_factory=list)
    image_provenance: list[ImageProvenance] = Field(default_factory=list)
    prompt: list[Turn] = Field(min_length=1)
    chosen: Turn
    rejected: Turn
    chosen_score: float
    rejected_score: float
    scorer: str = Field(pattern=NOT_BLANK)  # a reward model id, a metric, "radiologist"
    lineage: Lineage

    @model_validator(mode="after")
    def _consistent(self) -> PreferencePair:
        roles = [t.from_ for t in self.prompt]
        if len(roles) % 2 == 0 or any(role != ("human", "gpt")[i % 2] for i, role in enumerate(roles)):
            raise ValueError("prompt turns alternate human/gpt, starting and ending with human")
        if self.chosen.from_ != "gpt" or self.rejected.from_ != "gpt":
            raise ValueError("chosen and rejected are gpt turns")
        if self.chosen.value == self.rejected.value:
            raise ValueError("chosen and rejected are the same answer")
        if not (math.isfinite(self.chosen_score) and math.isfinite(self.rejected_score)):
            raise ValueError("scores must be finite numbers")
        if self.chosen_score <= self.rejected_score:
            raise ValueError(f"chosen_score {self.chosen_score:g} is not above rejected_score {self.rejected_score:g}")
        problem = placeholder_problem([t.value for t in self.prompt] + [self.chosen.value, self.rejected.value],
                                      roles + ["gpt", "gpt"], len(self.images))
        problem = problem or provenance_problem(self.image_provenance, len(self.images))
        if problem:
            raise ValueError(problem)
        return self

    @property
    def margin(self) -> float:
        """How far apart the scores put the two answers (DPO variants weight pairs by it)."""
        return self.chosen_score - self.rejected_score


def check_rows(config: str, table) -> dict[str, list[int]]:
    """Vectorised per-row rules of a preference config: the prompt's placeholders against the
    images, none in either answer, one provenance entry per image, chosen scored above rejected."""
    import numpy as np
    import pyarrow.compute as pc

    problems = placeholder_rows(table, images="images", turns="prompt")
    bad = np.zeros(table.num_rows, dtype=bool)
    for name in ("chosen", "rejected"):
        values = pc.struct_field(table.column(name).combine_chunks(), "value")
        bad |= np.asarray(pc.count_substring_regex(values, NEAR_PLACEHOLDER).fill_null(0)) > 0
    if bad.any():
        problems["placeholder_in_answer"] = [int(r) for r in np.flatnonzero(bad)]
    images, entries = (np.asarray(pc.list_value_length(table.column(name)).fill_null(0))
                       for name in ("images", "image_provenance"))
    order = np.asarray(pc.greater(table.column("chosen_score"), table.column("rejected_score")).fill_null(False))
    for name, rows in (("provenance_count", images != entries), ("score_order", ~order)):
        if rows.any():
            problems[name] = [int(r) for r in np.flatnonzero(rows)]
    return problems
