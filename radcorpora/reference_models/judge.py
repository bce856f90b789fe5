"""LLM judges for evaluation, run through the LLM engine (cache, limits, retries, usage):
rad-ace-cot's five 1-5 criteria as JSON, one request per VQA-RAD question with its own prompt;
radimagenet-vqa's correct/incorrect verdict on open answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.session import LLMSession
from radcorpora.llm.structured import JsonParser
from radcorpora.prompts.llm import load_prompt

CRITERIA = ("clinical_relevance", "factuality", "reasoning_coherence", "completeness", "final_answer_quality")


class CriteriaScores(BaseModel):
    clinical_relevance: int = Field(ge=1, le=5)
    factuality: int = Field(ge=1, le=5)
    reasoning_coherence: int = Field(ge=1, le=5)
    completeness: int = Field(ge=1, le=5)
    final_answer_quality: int = Field(ge=1, le=5)

    def mean(self) -> float:
        return sum(getattr(self, c) for c in CRITERIA) / len(CRITERIA)


class OpenVerdict(BaseModel):
    correct: bool


@dataclass
class JudgeItem:
    id: str
    question: str
    reference: str
    prediction: str
    licence_class: str = "public"


@dataclass
class Judgement:
    parsed: BaseModel | None
    error: str | None


class Judge:
    """`spec` is `provider:model` (e.g. `openai:gpt-4o`); answers are cached like every LLM call."""

    def __init__(self, spec: str, session: LLMSession, prompt_path: Path | None = None):
        self.spec, self.session, self.prompt_path = spec, session, prompt_path

    def _run(self, items: Sequence[JudgeItem], name: str, fields: frozenset[str], schema: type[BaseModel],
             render: dict[str, str]) -> list[Judgement]:
        prompt = load_prompt(name, self.prompt_path, fields)
        requests = [
            LLMRequest(id=item.id, stage="judge", system=prompt.system,
                       messages=(Message.user(prompt.render(**{k: getattr(item, attr) for k, attr in render.items()})),),
                       sampling=Sampling(temperature=0.0, max_tokens=256),
                       output=OutputFormat(kind="json", schema_name=schema.__name__, json_schema=schema.model_json_schema()),
                       licence_class=item.licence_class, prompt_id=prompt.id)  # type: ignore[arg-type]
            for item in items]
        results = self.session.run(self.spec, requests, JsonParser(schema))
        return [Judgement(r.parsed if r.ok else None, None if r.ok else f"{r.error.kind}: {r.error}") for r in results]

    def criteria(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        return self._run(items, "rad_ace_judge", frozenset({"question", "reference", "output"}), CriteriaScores,
                         {"question": "question", "reference": "reference", "output": "prediction"})

    def open_answers(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        return self._run(items, "radimagenet_vqa_judge", frozenset({"question", "reference", "prediction"}), OpenVerdict,
                         {"question": "question", "reference": "reference", "prediction": "prediction"})
