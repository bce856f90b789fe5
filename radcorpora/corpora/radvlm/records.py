"""Records of the radvlm corpus (Deperrois et al., RadVLM): chest X-ray instruction data from seven
sources, one config per task.

An image used by several instances (an image with three grounded findings, a VinDr image asked
about each class) is stored once, in one row whose `instances` hold the conversations; the view
`radcorpora.publish.views.instance_view` yields one training example per instance (and per
replica). Replication factors are a per-instance count, never copied bytes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import ImageData, LicenceClass, Turn
from radcorpora.schemas.identity import FAMILY
from radcorpora.spec.rules import RowRules

Task = Literal["report_generation", "abnormality_classification", "anatomical_grounding", "abnormality_grounding",
               "abnormality_detection", "phrase_grounding", "conversation", "conversation_grounded"]
TASKS: tuple[str, ...] = ("report_generation", "abnormality_classification", "anatomical_grounding",
                          "abnormality_grounding", "abnormality_detection", "phrase_grounding")
# Written by an LLM (part 2): one multi-turn conversation per image, from its report (after
# prior-study removal), CheXpert labels, view and sex; grounded ones also from phrases and boxes.
CONVERSATION_TASKS: tuple[str, ...] = ("conversation", "conversation_grounded")
CONVERSATION_SOURCES: dict[str, tuple[str, ...]] = {
    "conversation": ("mimic-cxr",),
    "conversation_grounded": ("ms-cxr", "padchest-gr"),
}
# Published held-out sizes: 500 standard conversations, 155 grounded ones from MS-CXR's test split.
CONVERSATION_TEST_SIZES: dict[str, int] = {"conversation": 500, "conversation_grounded": 155}
ALL_CONFIGS: tuple[str, ...] = TASKS + CONVERSATION_TASKS
# Which sources feed each task (RadVLM, Table 1).
TASK_SOURCES: dict[str, tuple[str, ...]] = {
    "report_generation": ("mimic-cxr", "chexpert-plus"),
    "abnormality_classification": ("mimic-cxr", "chexpert"),
    "anatomical_grounding": ("chest-imagenome",),
    "abnormality_grounding": ("vindr-cxr",),
    "abnormality_detection": ("vindr-cxr",),
    "phrase_grounding": ("ms-cxr", "padchest-gr"),
}
# Published replication factors (per task and source); everything else is 1.
DEFAULT_REPLICATION: dict[str, int] = {
    "abnormality_grounding/vindr-cxr": 3,
    "abnormality_detection/vindr-cxr": 2,
    "phrase_grounding/ms-cxr": 3,
    "phrase_grounding/padchest-gr": 2,
    "conversation_grounded/ms-cxr": 4,
    "conversation_grounded/padchest-gr": 4,
}
# Patients are shared across sources that draw on the same hospital archive: split integrity is
# checked per (namespace, patient), with the namespaces `radcorpora leakage` uses across builds.
PATIENT_NAMESPACE: dict[str, str] = {source: FAMILY[source] for source in (
    "mimic-cxr", "chest-imagenome", "ms-cxr", "chexpert", "chexpert-plus", "vindr-cxr", "padchest-gr")}
Split = Literal["train", "test"]


class CxrLineage(BaseModel):
    """Where a row came from: source, its image / patient / study ids, licence, what produced it."""

    model_config = ConfigDict(frozen=True)

    source_dataset: str
    source_id: str  # the source's image id
    patient_id: str  # "<namespace>:<patient>" (see PATIENT_NAMESPACE)
    study_id: str | None = None
    source_split: str  # the source's own split name
    licence_class: LicenceClass
    image_sha256: str
    image_converted: str | None = None  # e.g. "dicom->png max_side=1024" when not stored as read
    prompt_ids: list[str] = Field(default_factory=list)
    prompt_hashes: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)


class Instance(BaseModel):
    """One instruction example on the row's image."""

    model_config = ConfigDict(frozen=True)

    id: str
    conversations: list[Turn] = Field(min_length=2)
    label: str | None = None  # class, region or phrase the instance is about
    boxes: list[Box] = Field(default_factory=list)  # the boxes its answer names, normalised
    replication: int = Field(1, ge=1)  # how often the training mix repeats it (published factors)


class RadVLMRecord(BaseModel):
    """A row of any radvlm task config: one image, its instances, its labels and lineage."""

    image: ImageData
    id: str
    task: Task
    source: str
    view: str
    sex: str
    instances: list[Instance] = Field(min_length=1)
    report: str | None = None  # report generation: the target text (findings, else impression)
    report_section: str | None = None  # "findings" | "impression"
    positive_labels: list[str] = Field(default_factory=list)  # CheXpert vocabulary, after the uncertain policy
    lineage: CxrLineage


CONFIG_RECORDS: dict[str, type[BaseModel]] = {config: RadVLMRecord for config in ALL_CONFIGS}


def check_rows(config: str, table) -> dict[str, list[int]]:
    """Vectorised per-row rules: every box has x1 < x2 and y1 < y2; each instance's turns
    alternate human/gpt starting with human, and the first human turn opens with `<image>`."""
    import numpy as np
    import pyarrow.compute as pc

    problems: dict[str, list[int]] = {}
    instances = table.column("instances").combine_chunks()
    inst = pc.list_flatten(instances)
    inst_rows = pc.list_parent_indices(instances).to_numpy()
    if len(inst):
        boxes = pc.struct_field(inst, "boxes")
        flat = pc.list_flatten(boxes)
        if len(flat):
            box_rows = inst_rows[pc.list_parent_indices(boxes).to_numpy()]
            ordered = pc.and_(pc.less(pc.struct_field(flat, "x1"), pc.struct_field(flat, "x2")),
                              pc.less(pc.struct_field(flat, "y1"), pc.struct_field(flat, "y2")))
            bad = ~np.asarray(ordered.fill_null(False).to_numpy(zero_copy_only=False))
            if bad.any():
                problems["box_order"] = sorted(set(map(int, box_rows[bad])))
        conv = pc.struct_field(inst, "conversations")
        turns = pc.list_flatten(conv)
        turn_inst = pc.list_parent_indices(conv).to_numpy()
        lengths = pc.list_value_length(conv).fill_null(0).to_numpy()
        starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
        position = np.arange(len(turns)) - starts[turn_inst]
        role = np.asarray(pc.struct_field(turns, "from").to_numpy(zero_copy_only=False))
        wrong = role != np.where(position % 2 == 0, "human", "gpt")
        opens = np.asarray(pc.starts_with(pc.struct_field(turns, "value"), "<image>").fill_null(False)
                           .to_numpy(zero_copy_only=False))
        wrong |= (position == 0) & ~opens
        bad_rows = set(map(int, inst_rows[turn_inst[wrong]])) | set(map(int, inst_rows[lengths % 2 == 1]))
        if bad_rows:
            problems["conversation_structure"] = sorted(bad_rows)
    return problems


ROW_RULES = RowRules({
    "box_order": "every box has x1 < x2 and y1 < y2",
    "conversation_structure": "each instance's turns alternate human/gpt from a human turn opening with <image>",
}, check_rows)
