"""The toy corpus' records and its row rules."""

from __future__ import annotations

from pydantic import BaseModel, Field

from radcorpora.schemas.common import ImageData, Lineage, Turn
from radcorpora.spec.rules import RowRules


class ToyRecord(BaseModel):
    image: ImageData
    id: str
    finding: str
    conversations: list[Turn] = Field(min_length=2)
    lineage: Lineage


CONFIG_RECORDS = {"captions": ToyRecord, "labels": ToyRecord}


def check_rows(config: str, table) -> dict[str, list[int]]:
    """The answer names the row's finding."""
    answers = [turns[1]["value"] for turns in table.column("conversations").to_pylist()]
    findings = table.column("finding").to_pylist()
    return {"answer_names_finding": [i for i, (a, f) in enumerate(zip(answers, findings)) if f not in a]}


ROW_RULES = RowRules({"answer_names_finding": "the answer names the image's finding"}, check_rows)
