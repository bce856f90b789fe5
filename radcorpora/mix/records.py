"""The row of a mix: one training example in the shape every trainable config shares (an
`images` list and LLaVA `conversations` whose `<image>` placeholders name them in order), with
the corpus, config and row it came from, and the identity `radcorpora leakage` reads (patient and
study ids, image hashes) carried over, so a mix can itself be checked against other builds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from radcorpora.schemas.common import ImageData, LicenceClass, Turn
from radcorpora.schemas.interleaved import placeholder_problem
from radcorpora.spec.rules import RowRules


class MixLineage(BaseModel):
    model_config = ConfigDict(frozen=True)

    source_dataset: str
    source_id: str
    source_split: str
    licence_class: LicenceClass
    image_sha256: str  # the images' sha256, comma-separated, in image order
    patient_id: str | None = None  # as the source row names it (radvlm's are namespaced)
    study_id: str | None = None
    prompt_ids: list[str] = Field(default_factory=list)
    prompt_hashes: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)


class MixRecord(BaseModel):
    """One example of a mix. `id` is `<corpus>/<config>/<example id>`; `source_row` the id of the
    source row it came from (several examples share one when a row holds several questions or
    instances: their image is stored once per row group, see mix.build)."""

    id: str = Field(pattern=r"\S")
    corpus: str
    config: str
    source_row: str
    images: list[ImageData] = Field(min_length=1)
    conversations: list[Turn] = Field(min_length=2)
    lineage: MixLineage

    @model_validator(mode="after")
    def _consistent(self) -> MixRecord:
        problem = placeholder_problem([t.value for t in self.conversations], [t.from_ for t in self.conversations],
                                      len(self.images))
        if problem:
            raise ValueError(problem)
        problem = turn_problem([t.from_ for t in self.conversations])
        if problem:
            raise ValueError(problem)
        return self


def turn_problem(roles: list[str]) -> str | None:
    """Why the turns are not human/gpt pairs starting with human, or None."""
    if len(roles) % 2:
        return f"{len(roles)} turns (an odd number: a question without its answer)"
    for k, role in enumerate(roles):
        if role != ("human" if k % 2 == 0 else "gpt"):
            return f"turn {k} is from {role!r}, expected {'human' if k % 2 == 0 else 'gpt'}"
    return None


ROW_RULES = {"turns_alternate": "turns alternate human, gpt, ..., ending with gpt (an answer to every question)"}


def check_rows(config: str, table) -> dict[str, list[int]]:
    """Vectorised `turns_alternate` over a batch of mix rows."""
    import numpy as np
    import pyarrow.compute as pc

    conv = table.column("conversations").combine_chunks()
    lengths = np.asarray(pc.list_value_length(conv).fill_null(0))
    turns = pc.list_flatten(conv)
    parents = np.asarray(pc.list_parent_indices(conv))
    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    position = np.arange(len(turns)) - starts[parents] if len(turns) else np.zeros(0, dtype=np.int64)
    roles = np.asarray(pc.struct_field(turns, "from").to_numpy(zero_copy_only=False)) if len(turns) else np.zeros(0)
    wrong = roles != np.where(position % 2 == 0, "human", "gpt")
    bad = set(map(int, parents[wrong])) | set(map(int, np.flatnonzero(lengths % 2 == 1)))
    return {"turns_alternate": sorted(bad)} if bad else {}


MIX_ROW_RULES = RowRules(ROW_RULES, check_rows)
