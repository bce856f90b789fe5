"""ct-reasoning's configs read as training conversations ({id, images, conversations}), for the
trainer exports: each config is stored in its own shape (report, narrative sections, rewrite,
translation), which no trainer reads. `vqa_thinking` reads as the reference models train on it
(evaluation.example); the others take the wording in prompts/ct_reasoning_conversations.yaml.
The report-writing ones keep the `<think>`/`<answer>` form of vqa_thinking: the narrative is the
thinking, the report the answer. A rewrite or a translation is text to text (no images)."""

from __future__ import annotations

import functools
from typing import Any

import yaml

from radcorpora.corpora.ct_reasoning.evaluation import answer_text, slices_of
from radcorpora.prompts.loader import packaged_text
from radcorpora.schemas.interleaved import IMAGE_PLACEHOLDER


@functools.cache
def wording() -> dict[str, Any]:
    _, text = packaged_text(__package__, "ct_reasoning_conversations")
    return yaml.safe_load(text)


def _with_slices(row: dict[str, Any], text: str) -> tuple[list[Any], str]:
    images = slices_of(row)
    return images, (f"{IMAGE_PLACEHOLDER * len(images)}\n{text}" if images else text)


def _conversation(row: dict[str, Any], images: list[Any], human: str, gpt: str) -> dict[str, Any]:
    return {"id": row["id"], "images": images,
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}


def report_thinking(row: dict[str, Any], ctx: Any = None) -> dict[str, Any]:
    said = wording()["report_thinking"]
    images, human = _with_slices(row, said["human"])
    reasoning = said["reasoning"].format(findings=row["findings_rationale"], impression=row["impression_rationale"],
                                         follow_up=row["follow_up_rationale"])
    return _conversation(row, images, human, answer_text(reasoning, row["report"]))


def report_rewrite(row: dict[str, Any], ctx: Any = None) -> dict[str, Any]:
    return _conversation(row, [], wording()["report_rewrite"]["human"].format(report=row["report"]), row["rewrite"])


def translation(row: dict[str, Any], ctx: Any = None) -> dict[str, Any]:
    said = wording()
    name = said["languages"].get(row["language"], f"the language with ISO 639-1 code {row['language']!r}")
    human = said["translation"]["human"].format(language_name=name, report=row["report"])
    return _conversation(row, [], human, row["translation"])
