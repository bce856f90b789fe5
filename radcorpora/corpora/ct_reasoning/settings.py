"""The settings of a ct-reasoning build: every field is a build/estimate option and part of the fingerprint."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from radcorpora.llm.request import Sampling
from radcorpora.spec.corpus import Cli

CORPUS = "ct-reasoning"
LICENCE_CLASS = "restricted"  # CT-RATE and AbdomenAtlas 3.0: CC BY-NC-SA 4.0; AMOS-MM: challenge terms


def _language(value: str) -> str:
    """--translate takes an ISO 639-1 code (what the language check compares against)."""
    code = value.strip().lower()
    if len(code) != 2 or not code.isalpha():
        raise ValueError(f"--translate {value!r}: give a two-letter ISO 639-1 language code (de, fr, es, ...)")
    if code == "en":
        raise ValueError("--translate en: the reports are English already")
    return code


class CtReasoningSettings(BaseModel):
    """Everything that decides a build's content."""

    seed: int = Field(0, description="Seed of every random choice (report selection, per-request sampling seeds)")
    llm: Annotated[str, Cli(required=True, metavar="PROVIDER:MODEL")] = Field(
        "offline", description="Model of the questions, gate, refine and narrative roles (and of --rewrite/--translate): "
                               "openai:MODEL (OPENAI_BASE_URL for compatible servers), anthropic:MODEL, azure:DEPLOYMENT, "
                               "offline (a deterministic stand-in for every role)")
    thinking_llm: Annotated[str | None, Cli(metavar="PROVIDER:MODEL")] = Field(
        None, description="Reasoning model that thinks through each question (default: --llm); its reasoning "
                          "(reasoning channel or <think> tags) is kept apart from its answer")
    questions_per_report: int = Field(6, ge=1, le=20, description="Most questions asked per report (at least "
                                                                  "half of them, and at least 1, are required)")
    slices: int = Field(0, ge=0, le=32, description="Representative axial slices stored per volume as PNG "
                                                   "(0: the volume reference only)")
    rewrite: bool = Field(False, description="Also paraphrase each report (meaning kept, checked by a judge): "
                                             "config report_rewrite")
    translate: Annotated[str | None, Cli(parse=_language, metavar="LANG")] = Field(
        None, description="Also translate each report into LANG (ISO 639-1, checked by language identification): "
                          "config translation")
    max_reports: int | None = Field(None, ge=1, description="Use at most N reports (a seeded choice over all sources)")
    sampling: Annotated[Sampling, Cli(hidden=True)] = Sampling(temperature=0.0, max_tokens=1500)
    rows_per_shard: int = Field(1000, ge=1, description="Rows per Parquet shard")
    decisions: Annotated[dict[str, Literal["accept", "reject"]], Cli(hidden=True)] = Field(default_factory=dict)

    @field_validator("translate")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        return None if value is None else _language(value)

    @property
    def thinker(self) -> str:
        return self.thinking_llm or self.llm

    def min_questions(self) -> int:
        return max(1, -(-self.questions_per_report // 2))
