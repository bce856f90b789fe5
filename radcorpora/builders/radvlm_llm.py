"""radvlm's LLM stages (part 2): prior-study removal from reports, and standard and grounded
conversations written from an image's report, labels, view and sex (plus phrases and boxes).

Every reply is checked by the parser the runner uses, so a reply that fails a check gets the one
repair the runner makes (with the problem stated), then goes to the ledger and the rejects:
- prior removal: JSON `{"report": ..., "nothing_current": bool}`; the rewritten report must carry
  no prior-study language (ops.prior_study); "nothing current" is an outcome, not a substring;
- conversations: a JSON list of `{"from", "value"}` turns, checked by ops.conversation_checks
  (roles, 5-10 rounds, no empty turn, no prior-study language, no PHI placeholder, grounded ones
  ask where and quote only the given boxes).
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from pydantic import BaseModel

from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.runner import CallResult
from radcorpora.llm.stage import LLMStage
from radcorpora.llm.structured import JsonParser, ParseError
from radcorpora.ops.boxes import boxes_text
from radcorpora.ops.conversation_checks import ConversationError, conversation_problems, parse_conversation
from radcorpora.ops.prior_study import prior_study_phrases, remove_prior_sentences
from radcorpora.prompts.llm import Prompt
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import Reject


class PriorRemoved(BaseModel):
    """The prior-removal reply."""

    report: str
    nothing_current: bool


class PriorRemovalParser(JsonParser[PriorRemoved]):
    """JSON into `PriorRemoved`, then the rule-based detector on the rewritten text."""

    def __init__(self) -> None:
        super().__init__(PriorRemoved)

    def __call__(self, text: str) -> PriorRemoved:
        reply = super().__call__(text)
        if not reply.nothing_current:
            leaks = prior_study_phrases(reply.report)
            if not reply.report.strip():
                raise ParseError("report is empty but nothing_current is false")
            if leaks:
                quoted = "; ".join(f"'{m.phrase}'" for m in leaks[:5])
                raise ParseError(f"the rewritten report still refers to earlier studies ({quoted}): "
                                 "remove those statements and keep only what the current image shows")
        return reply


class PriorRemovalStage(LLMStage[dict]):
    """One call per report: rewrite keeping only the current image's findings."""

    name: ClassVar[str] = "prior_removal"
    description: ClassVar[str] = "report rewritten without references to earlier studies"
    output: ClassVar[type[BaseModel]] = PriorRemoved
    expected_output_tokens: ClassVar[int] = 250

    def __init__(self, prompt: Prompt, licence_class: str = "credentialed"):
        self.prompt_file, self.licence_class = prompt, licence_class

    def prompt(self, row: dict) -> LLMRequest:
        return LLMRequest(
            id=row["id"], stage=self.name, system=self.prompt_file.system,
            messages=(Message.user(self.prompt_file.render(report=row["report"])),),
            sampling=Sampling(temperature=0.0, max_tokens=1024),
            output=OutputFormat(kind="json", schema_name="prior_removed", json_schema=PriorRemoved.model_json_schema()),
            licence_class=self.licence_class, prompt_id=self.prompt_file.id, hints={"report": row["report"]})

    def parser(self) -> PriorRemovalParser:
        return PriorRemovalParser()

    def parse(self, row: dict, result: CallResult) -> list[PriorRemoved] | Reject:
        if not result.ok:
            return Reject(source=row["source"], row=row["image_id"], reason=_reason(result), detail=str(result.error))
        return [result.parsed]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        """Stand-in (NOT a model): the rule-based sentence removal."""
        kept, _removed = remove_prior_sentences(request.hints.get("report", ""))
        return json.dumps({"report": kept, "nothing_current": not kept.strip()})


class ConversationParser:
    """A conversation reply: JSON turns, then every conversation check for this row."""

    def __init__(self, grounded: bool = False, given: tuple[Box, ...] = (), min_rounds: int = 5, max_rounds: int = 10):
        self.grounded, self.given, self.min_rounds, self.max_rounds = grounded, given, min_rounds, max_rounds

    def for_request(self, request: LLMRequest) -> ConversationParser:
        boxes = tuple(Box.model_validate(b) for b in json.loads(request.hints.get("boxes", "[]")))
        return ConversationParser(bool(boxes) or request.hints.get("grounded") == "yes", boxes,
                                  self.min_rounds, self.max_rounds)

    def format_hint(self) -> str:
        return 'a JSON list of turns [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}, ...]'

    def __call__(self, text: str) -> list[dict[str, str]]:
        try:
            turns = parse_conversation(text)
        except ConversationError as exc:
            raise ParseError(f"{exc.reason}: {exc.detail}") from exc
        problems = conversation_problems(turns, min_rounds=self.min_rounds, max_rounds=self.max_rounds,
                                         given_boxes=list(self.given) if self.grounded else None,
                                         grounded=self.grounded)
        if problems:
            raise ParseError("the conversation breaks these rules: " + "; ".join(problems[:6]))
        return [{"from": t.from_, "value": t.value} for t in turns]


class ConversationStage(LLMStage[dict]):
    """One call per image: a 5-10 round conversation grounded in the given facts."""

    name: ClassVar[str] = "conversation"
    description: ClassVar[str] = "multi-turn conversation written from the report, labels, view and sex"
    expected_output_tokens: ClassVar[int] = 900

    def __init__(self, prompt: Prompt, min_rounds: int = 5, max_rounds: int = 10, licence_class: str = "credentialed"):
        self.prompt_file, self.min_rounds, self.max_rounds = prompt, min_rounds, max_rounds
        self.licence_class = licence_class

    def prompt(self, row: dict) -> LLMRequest:
        boxes = [Box.model_validate(b) for b in row.get("boxes", [])]
        phrases = "\n".join(f"- {p}: {boxes_text([b])}" for p, b in zip(row.get("phrases", []), boxes)) or "none"
        return LLMRequest(
            id=row["id"], stage=self.name if not boxes else "conversation_grounded", system=self.prompt_file.system,
            messages=(Message.user(self.prompt_file.render(
                report=row.get("report") or "not available", labels=", ".join(row.get("labels", [])) or "no finding",
                view=row.get("view", "frontal"), sex=row.get("sex", "unknown"), grounded_phrases=phrases,
                rounds=f"{self.min_rounds} to {self.max_rounds}")),),
            sampling=Sampling(temperature=0.7, max_tokens=2048),
            output=OutputFormat(kind="json", schema_name="conversation"),
            licence_class=self.licence_class, prompt_id=self.prompt_file.id,
            hints={"boxes": json.dumps([b.model_dump() for b in boxes]), "grounded": "yes" if boxes else "no",
                   "report": row.get("report") or "", "labels": json.dumps(row.get("labels", [])),
                   "phrases": json.dumps(row.get("phrases", []))})

    def parser(self) -> ConversationParser:
        return ConversationParser(min_rounds=self.min_rounds, max_rounds=self.max_rounds)

    def parse(self, row: dict, result: CallResult) -> list[list[dict[str, str]]] | Reject:
        if not result.ok:
            return Reject(source=row["source"], row=row["image_id"], reason=_reason(result), detail=str(result.error))
        return [result.parsed]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        """Stand-in (NOT a model): questions about the labels and findings, answered from the
        given facts with cautious wording; grounded rows ask where each phrase is."""
        labels = json.loads(request.hints.get("labels", "[]"))
        phrases = json.loads(request.hints.get("phrases", "[]"))
        boxes = [Box.model_validate(b) for b in json.loads(request.hints.get("boxes", "[]"))]
        report = request.hints.get("report", "")
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", report) if s.strip() and "___" not in s][:4]
        turns = [("What kind of image is this?", "This appears to be a chest radiograph."),
                 ("Do you see any abnormality?", ("The image suggests " + ", ".join(l.lower() for l in labels) + ".")
                  if labels else "I do not see a clear abnormality on this image.")]
        for sentence in sentences:
            turns.append(("What else can you describe?", f"It looks like this: {sentence}"))
        for phrase, box in zip(phrases, boxes):
            turns.append((f"Where is the finding described as '{phrase}'?", f"It appears to be at {boxes_text([box])}."))
        turns.append(("Should anything be checked further?", "A radiologist should confirm these impressions."))
        while len(turns) < 5:
            turns.append(("Is the image quality adequate?", "The image seems adequate for a general reading."))
        turns = turns[:10]
        return json.dumps([t for human, gpt in turns for t in ({"from": "human", "value": human},
                                                               {"from": "gpt", "value": gpt})])


def _reason(result: CallResult) -> str:
    kind = result.error.kind if result.error is not None else "failed"
    return f"llm_{kind}"


def offline_responders() -> dict[str, Any]:
    return {PriorRemovalStage.name: PriorRemovalStage.offline, ConversationStage.name: ConversationStage.offline,
            "conversation_grounded": ConversationStage.offline}
