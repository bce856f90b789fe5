"""LLM judges for evaluation, run through the LLM engine (cache, limits, retries, usage):
rad-ace-cot's five 1-5 criteria as JSON, one request per VQA-RAD question with its own prompt;
radimagenet-vqa's correct/incorrect verdict on open answers; radvlm's 0-10 score of a whole
conversation, read from the last `Score: N` line of a free-text reply. ct-reasoning's answers are
judged like radimagenet-vqa's open answers (correct / incorrect against the reference)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.runner import Parser
from radcorpora.llm.session import LLMSession
from radcorpora.llm.structured import JsonParser, ParseError, json_schema_of
from radcorpora.prompts.llm import load_prompt
from radcorpora.spec.evaluation import (  # declared with the corpora that build them
    ConversationItem,
    JudgeItem,
)

__all__ = ["CRITERIA", "ConversationItem", "ConversationScore", "CriteriaScores", "Judge", "JudgeItem", "Judgement",
           "OpenVerdict", "ScoreLineParser"]

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


class ConversationScore(BaseModel):
    """The judge's 0-10 score of one conversation and the text it gave before the score line."""

    score: float = Field(ge=0, le=10)
    reason: str = ""


# `Score: 7`, `**Score:** 7/10`, `Final score = 6.5`, `score: 8 out of 10`: the whole line, nothing else on it.
_SCORE_LINE = re.compile(r"^[\s>#*_-]*(?:(?:final|overall)\s+)?score[\s*_]*[:=][\s*_]*(-?\d+(?:\.\d+)?)\s*(?:/\s*10|out\s+of\s+10)?[\s*_.]*$",
                         re.IGNORECASE | re.MULTILINE)


class ScoreLineParser:
    """Reads the LAST `Score: N` line of a free-text reply (0 <= N <= 10); an earlier score line
    never stands in for a missing or invalid last one. Raises ParseError so the runner's one repair
    applies."""

    def format_hint(self) -> str:
        return "your reasoning, then a final line `Score: N` with N a number from 0 to 10"

    def __call__(self, text: str) -> ConversationScore:
        lines = list(_SCORE_LINE.finditer(text))
        if not lines:
            raise ParseError("no final line of the form `Score: N` (N from 0 to 10)")
        last = lines[-1]
        value = float(last.group(1))
        if not 0 <= value <= 10:
            raise ParseError(f"the score line says {last.group(1)}, outside 0 to 10")
        return ConversationScore(score=value, reason=text[:last.start()].strip())


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
                       output=OutputFormat(kind="json", schema_name=schema.__name__, json_schema=json_schema_of(schema)),
                       licence_class=item.licence_class, prompt_id=prompt.id)  # type: ignore[arg-type]
            for item in items]
        return self._judgements(requests, JsonParser(schema))

    def _judgements(self, requests: Sequence[LLMRequest], parser: Parser) -> list[Judgement]:
        results = self.session.run(self.spec, requests, parser)
        return [Judgement(r.parsed if r.ok else None, None if r.ok else f"{r.error.kind}: {r.error}") for r in results]

    def criteria(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        return self._run(items, "rad_ace_judge", frozenset({"question", "reference", "output"}), CriteriaScores,
                         {"question": "question", "reference": "reference", "output": "prediction"})

    def open_answers(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        return self._run(items, "radimagenet_vqa_judge", frozenset({"question", "reference", "prediction"}), OpenVerdict,
                         {"question": "question", "reference": "reference", "prediction": "prediction"})

    def conversation(self, items: Sequence[ConversationItem]) -> list[Judgement]:
        """One 0-10 score per conversation (`Judgement.parsed` is a ConversationScore). The reply is
        free text ending in a `Score: N` line, so any model can judge without structured output; a
        reply without a valid last score line gets the runner's one repair, then is a failure."""
        prompt = load_prompt("radvlm_conversation_judge", self.prompt_path, frozenset({"conversation"}))
        requests = [
            LLMRequest(id=item.id, stage="conversation_judge", system=prompt.system,
                       messages=(Message.user(prompt.render(conversation=item.transcript())),),
                       sampling=Sampling(temperature=0.0, max_tokens=512), output=OutputFormat(kind="text"),
                       licence_class=item.licence_class, prompt_id=prompt.id)  # type: ignore[arg-type]
            for item in items]
        return self._judgements(requests, ScoreLineParser())
