"""Records of ct-reasoning's configs and their row rules.

`vqa_thinking`: one row per kept question: the scan's volume reference (with `--slices N` its N
axial slices as PNG), the question, the thinking (refined: a reading of the images) and, apart,
the short answer; `raw_thinking` is the reasoning model's own reasoning before refinement.
`report_thinking`: one row per scan: its report and the narrative in three sections.
`report_rewrite` / `translation`: with --rewrite / --translate.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from radcorpora.corpora.ct_reasoning.checks import GATE_RULES, gate_problem, leaks, out_of_order
from radcorpora.schemas.common import Lineage
from radcorpora.schemas.preference import PreferencePair
from radcorpora.schemas.volume import VolumeRef, volume_rows
from radcorpora.spec.rules import RowRules

Focus = Literal["lesion", "location", "certainty", "follow_up", "other"]


class ScanFields(BaseModel):
    id: str
    source: str  # ct-rate, amos-mm, abdomen-atlas
    scan_id: str
    patient_id: str
    volume: VolumeRef  # the scan's first readable volume (CT-RATE: first reconstruction), with any slices
    # every readable volume of the scan in source order (CT-RATE: each reconstruction shares the
    # report), referenced without slices; volumes[0] is `volume` less its slices
    volumes: list[VolumeRef] = Field(min_length=1)


class VqaThinkingRecord(ScanFields):
    question: str = Field(min_length=1)
    focus: Focus
    origin: Literal["generated", "amos_mm_qa"]  # written by the questions role, or the source's own QA
    options: list[str] = Field(default_factory=list)  # a source multiple-choice question's options, A-D in order
    correct_option: Literal["A", "B", "C", "D"] | None = None  # its answer letter, as the source gives it
    report: str = Field(min_length=1)  # the scan's report: what the gate judged the item against
    thinking: str = Field(min_length=1)  # refined: never refers to a report
    answer: str = Field(min_length=1)  # the final content only; never holds the thinking
    raw_thinking: str = Field(min_length=1)  # the reasoning model's own reasoning, before refinement
    thinking_from: Literal["reasoning_channel", "think_tags"]
    lineage: Lineage


class ReportThinkingRecord(ScanFields):
    report: str = Field(min_length=1)
    findings_rationale: str = Field(min_length=1)
    impression_rationale: str = Field(min_length=1)
    follow_up_rationale: str = Field(min_length=1)
    questions: list[str]  # the kept questions the narrative merges, in anatomical order
    lineage: Lineage


class ReportRewriteRecord(ScanFields):
    report: str = Field(min_length=1)
    rewrite: str = Field(min_length=1)
    judge_reason: str
    lineage: Lineage


class TranslationRecord(ScanFields):
    report: str = Field(min_length=1)
    language: str = Field(pattern=r"^[a-z]{2}$")
    translation: str = Field(min_length=1)
    lineage: Lineage


class CtPreferencePair(PreferencePair):
    """A DPO pair on one scan (config `preference` of ct-reasoning-dpo): the report-writing prompt
    over the scan's slices (`images`), the best and the worst candidate report by `scorer`, and
    the scan's volume references, so a 3-D model can load the volume itself."""

    source: str
    scan_id: str
    patient_id: str
    volume: VolumeRef  # the scan's first volume; its slices are the row's `images`, in order
    volumes: list[VolumeRef] = Field(min_length=1)  # every volume of the scan, without slices


CONFIG_RECORDS: dict[str, type[BaseModel]] = {
    "vqa_thinking": VqaThinkingRecord, "report_thinking": ReportThinkingRecord,
    "report_rewrite": ReportRewriteRecord, "translation": TranslationRecord}

ROW_NAMES = {
    **{f"gate_{rule}": f"vqa_thinking: {text} (the quality gate's rule, re-run on raw_thinking)"
       for rule, text in GATE_RULES.items()},
    "thinking_apart": "vqa_thinking: the answer holds no <think> tag and is not the thinking",
    "no_report_reference": "refined thinking and narrative sections never refer to a report, text or prior document",
    "narrative_order": "report_thinking: the findings rationale goes down the body in anatomical order",
    "volume_grid": "the volume reference's shape, spacing, orientation and slices are consistent",
}


def check_rows(config: str, table) -> dict[str, list[int]]:
    """Per batch; text columns only (no slice bytes are read)."""
    broken: dict[str, list[int]] = {}
    if "volume" in table.column_names and volume_rows(table, "volume"):
        broken["volume_grid"] = sorted({r for rows in volume_rows(table, "volume").values() for r in rows})
    if config == "vqa_thinking":
        answers, thinking = table.column("answer").to_pylist(), table.column("thinking").to_pylist()
        gate = zip(*(table.column(c).to_pylist() for c in ("question", "raw_thinking", "answer", "report")))
        for row, (question, raw, answer, report) in enumerate(gate):
            problem = gate_problem(question, raw, answer, report)
            if problem is not None:
                broken.setdefault(f"gate_{problem[0]}", []).append(row)
        for row, (answer, think) in enumerate(zip(answers, thinking)):
            if "<think" in answer.lower() or "</think" in answer.lower() or answer.strip() == think.strip():
                broken.setdefault("thinking_apart", []).append(row)
            if leaks(think):
                broken.setdefault("no_report_reference", []).append(row)
    if config == "report_thinking":
        sections = [table.column(c).to_pylist() for c in ("findings_rationale", "impression_rationale",
                                                          "follow_up_rationale")]
        for row, texts in enumerate(zip(*sections)):
            if any(leaks(t) for t in texts):
                broken.setdefault("no_report_reference", []).append(row)
            if out_of_order(texts[0]) is not None:
                broken.setdefault("narrative_order", []).append(row)
    return broken


ROW_RULES = RowRules(ROW_NAMES, check_rows, configs={
    **{name: frozenset({"vqa_thinking"}) for name in ROW_NAMES if name.startswith("gate_") or name == "thinking_apart"},
    "narrative_order": frozenset({"report_thinking"})})
