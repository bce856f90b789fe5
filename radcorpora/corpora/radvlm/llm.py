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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from pydantic import BaseModel

from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.runner import CallResult
from radcorpora.llm.stage import LLMStage
from radcorpora.llm.structured import JsonParser, ParseError
from radcorpora.llm.verify import QueueEntry, Verdict, agreement, settle
from radcorpora.ops.boxes import boxes_text
from radcorpora.ops.conversation_checks import (
    ConversationError,
    conversation_problems,
    parse_conversation,
)
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

    def __init__(self, prompt: Prompt):
        self.prompt_file = prompt

    def prompt(self, row: dict) -> LLMRequest:
        return LLMRequest(
            id=row["id"], stage=self.name, system=self.prompt_file.system,
            messages=(Message.user(self.prompt_file.render(report=row["report"])),),
            sampling=Sampling(temperature=0.0, max_tokens=1024),
            output=OutputFormat(kind="json", schema_name="prior_removed", json_schema=PriorRemoved.model_json_schema()),
            licence_class=row["licence_class"], prompt_id=self.prompt_file.id, hints={"report": row["report"]})

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


# Structured output wants an object at the top: the turns list goes under "conversation" (the
# parser takes the bare published list as well).
CONVERSATION_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["conversation"],
    "properties": {"conversation": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["from", "value"],
        "properties": {"from": {"type": "string", "enum": ["human", "gpt"]}, "value": {"type": "string"}}}}},
}


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

    def __init__(self, prompt: Prompt, min_rounds: int = 5, max_rounds: int = 10):
        self.prompt_file, self.min_rounds, self.max_rounds = prompt, min_rounds, max_rounds

    def prompt(self, row: dict) -> LLMRequest:
        grounded = [(phrase, [Box.model_validate(b) for b in boxes]) for phrase, boxes in row.get("grounded", [])]
        given = [b for _, boxes in grounded for b in boxes]
        phrases = "\n".join(f"- {p}: {boxes_text(b)}" for p, b in grounded) or "none"
        return LLMRequest(
            id=row["id"], stage="conversation_grounded" if grounded else self.name, system=self.prompt_file.system,
            messages=(Message.user(self.prompt_file.render(
                report=row.get("report") or "not available", labels=", ".join(row.get("labels", [])) or "no finding",
                view=row.get("view", "frontal"), sex=row.get("sex", "unknown"), grounded_phrases=phrases,
                rounds=f"{self.min_rounds} to {self.max_rounds}")),),
            sampling=Sampling(temperature=0.7, max_tokens=2048),
            output=OutputFormat(kind="json", schema_name="conversation", json_schema=CONVERSATION_SCHEMA),
            licence_class=row["licence_class"], prompt_id=self.prompt_file.id,
            hints={"boxes": json.dumps([b.model_dump() for b in given]), "grounded": "yes" if grounded else "no",
                   "report": row.get("report") or "", "labels": json.dumps(row.get("labels", [])),
                   "phrases": json.dumps([[p, [b.model_dump() for b in bs]] for p, bs in grounded])})

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
        phrases = [(p, [Box.model_validate(b) for b in bs]) for p, bs in json.loads(request.hints.get("phrases", "[]"))]
        report = request.hints.get("report", "")
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", report) if s.strip() and "___" not in s][:4]
        turns = [("What kind of image is this?", "This appears to be a chest radiograph."),
                 ("Do you see any abnormality?", ("The image suggests " + ", ".join(l.lower() for l in labels) + ".")
                  if labels else "I do not see a clear abnormality on this image.")]
        for phrase, boxes in phrases[:6]:
            turns.append((f"Where is the finding described as '{phrase}'?", f"It appears to be at {boxes_text(boxes)}."))
        for sentence in sentences:
            turns.append(("What else can you describe?", f"It looks like this: {sentence}"))
        turns.append(("Should anything be checked further?", "A radiologist should confirm these impressions."))
        while len(turns) < 5:
            turns.append(("Is the image quality adequate?", "The image seems adequate for a general reading."))
        turns = turns[:10]
        return json.dumps([t for human, gpt in turns for t in ({"from": "human", "value": human},
                                                               {"from": "gpt", "value": gpt})])


def _reason(result: CallResult) -> str:
    kind = result.error.kind if result.error is not None else "failed"
    return f"llm_{kind}"


class VerifyConversationStage(LLMStage[dict]):
    """A verifier model judges whether a conversation is supported by its source facts."""

    name: ClassVar[str] = "conversation_verify"
    description: ClassVar[str] = "conversation supported by the report, labels and boxes it was written from"
    output: ClassVar[type[BaseModel]] = Verdict
    expected_output_tokens: ClassVar[int] = 80

    def __init__(self, prompt: Prompt):
        self.prompt_file = prompt

    def prompt(self, row: dict) -> LLMRequest:
        conversation = "\n".join(f"{t['from']}: {t['value'].replace('<image>', '').strip()}" for t in row["turns"])
        grounded = "\n".join(f"- {p}: {boxes_text([Box.model_validate(b) for b in bs])}"
                              for p, bs in row.get("grounded", [])) or "none"
        return LLMRequest(
            id=row["id"], stage=self.name, system=self.prompt_file.system,
            messages=(Message.user(self.prompt_file.render(
                report=row.get("report") or "not available", labels=", ".join(row.get("labels", [])) or "no finding",
                grounded_phrases=grounded, conversation=conversation)),),
            sampling=Sampling(temperature=0.0, max_tokens=512),
            output=OutputFormat(kind="json", schema_name="verdict", json_schema=Verdict.model_json_schema()),
            licence_class=row["licence_class"], prompt_id=self.prompt_file.id,
            hints={"report": row.get("report") or "", "labels": json.dumps(row.get("labels", [])),
                   "conversation": conversation})

    def parser(self) -> JsonParser:
        return JsonParser(Verdict)

    def parse(self, row: dict, result: CallResult) -> list[Verdict] | Reject:
        if not result.ok:
            return Reject(source=row["source"], row=row["image_id"], reason=_reason(result), detail=str(result.error))
        return [result.parsed]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        """Stand-in verifier (NOT a model): supported when every label named in the facts is
        mentioned by the assistant and no answer brings in a CheXpert finding the facts lack."""
        from radcorpora.ops.chexpert_mentions import predicted_labels

        labels = set(json.loads(request.hints.get("labels", "[]")))
        said = predicted_labels(" ".join(line.removeprefix("gpt: ") for line in
                                         request.hints.get("conversation", "").splitlines() if line.startswith("gpt: ")))
        said.discard("No Finding")
        facts = predicted_labels(request.hints.get("report", "")) | labels
        extra = sorted(said - facts)
        return json.dumps({"consistent": not extra,
                           "reason": f"not in the facts: {', '.join(extra)}" if extra else "every finding is in the facts"})


STAGES = (PriorRemovalStage, ConversationStage, VerifyConversationStage)


def offline_responders() -> dict[str, Any]:
    return {PriorRemovalStage.name: PriorRemovalStage.offline, ConversationStage.name: ConversationStage.offline,
            "conversation_grounded": ConversationStage.offline,
            VerifyConversationStage.name: VerifyConversationStage.offline}


# --------------------------------------------------------------------------- running the stages

PRIOR_FIELDS = frozenset({"report"})
CONVERSATION_FIELDS = frozenset({"report", "labels", "view", "sex", "grounded_phrases", "rounds"})
VERIFY_FIELDS = frozenset({"report", "labels", "grounded_phrases", "conversation"})
LLM_TASKS = frozenset({"report_generation", "conversation", "conversation_grounded"})
SEX_WORDS = {"F": "female", "M": "male"}


def load_prompts() -> dict[str, Prompt]:
    from radcorpora.prompts.llm import load_prompt

    return {"prior_removal": load_prompt("radvlm_prior_removal", None, PRIOR_FIELDS, __package__),
            "conversation": load_prompt("radvlm_conversation", None, CONVERSATION_FIELDS, __package__),
            "verify": load_prompt("radvlm_conversation_verify", None, VERIFY_FIELDS, __package__)}


@dataclass
class LLMOutcome:
    """Rows after the LLM stages (failed ones dropped), and what happened on the way."""

    rows: list[Any]
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    queued: list[QueueEntry] = field(default_factory=list)
    agreement: dict[str, Any] = field(default_factory=dict)


def _report_key(row: Any) -> str:
    return f"prior_removal/{row.source}/{row.image.study_id or row.image.image_id}"


def prior_removal_rows(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """One prior-removal item per distinct report text (a study's report is shared by its images,
    and MS-CXR rows carry their MIMIC-CXR study's report)."""
    items: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r.key):
        if row.task in LLM_TASKS and row.report:
            items.setdefault(row.report, {"id": _report_key(row), "report": row.report, "source": row.source,
                                          "image_id": row.image.image_id, "licence_class": row.image.licence_class})
    return sorted(items.values(), key=lambda item: item["id"])


def conversation_item(row: Any, report: str | None) -> dict[str, Any]:
    from radcorpora.corpora.radvlm.settings import VIEW_WORDS

    return {"id": row.key, "source": row.source, "image_id": row.image.image_id, "report": report,
            "labels": list(row.positive_labels), "view": VIEW_WORDS.get(row.image.view, "frontal"),
            "sex": SEX_WORDS.get(row.image.sex, "unknown"), "licence_class": row.image.licence_class,
            "grounded": [[p, [b.model_dump() for b in boxes]] for p, boxes in row.phrases]}


def run_llm_stages(rows: list[Any], config: Any, session: Any | None, decisions: dict[str, str]) -> LLMOutcome:
    """Prior-study removal on every report the build uses (report generation and the facts of
    conversations), then conversations, then their optional verification. `session` is None when
    no stage needs a model (prior removal by the rules, no conversations)."""
    prompts = load_prompts()
    outcome = LLMOutcome(rows=[])
    cleaned: dict[str, str | None] = {}  # report -> text without prior-study language ("" nothing current)
    failed: dict[str, Reject] = {}
    items = prior_removal_rows(rows)
    if config.prior_removal == "off":
        cleaned = {item["report"]: item["report"] for item in items}
    elif config.prior_removal == "rules":
        for item in items:
            kept, removed = remove_prior_sentences(item["report"])
            cleaned[item["report"]] = kept
            outcome.counts["prior_sentences_removed"] += len(removed)
    else:
        for item, made in PriorRemovalStage(prompts["prior_removal"]).run(session, config.llm, items):
            if isinstance(made, Reject):
                failed[item["report"]] = made
            else:
                cleaned[item["report"]] = "" if made[0].nothing_current else made[0].report.strip()
    outcome.counts["prior_removal_reports"] = len(items)
    outcome.counts["prior_removal_nothing_current"] = sum(1 for v in cleaned.values() if not v)
    llm_model = (session.model_id(config.llm),) if session is not None and config.llm else ()
    prior_prompt = ((prompts["prior_removal"].id, prompts["prior_removal"].content_hash),) \
        if config.prior_removal == "llm" else ()

    conversation_rows: list[Any] = []
    for row in rows:
        if row.task not in LLM_TASKS:
            outcome.rows.append(row)
            continue
        if not row.report:
            if row.task != "report_generation":
                conversation_rows.append(row)
            continue  # report rows always have text (planning rejects those without)
        if row.report in failed:
            reject = failed[row.report]
            outcome.rejects.append(Reject(source=row.source, row=row.image.image_id, reason=f"prior_removal_{reject.reason}",
                                          detail=f"{row.task}: {reject.detail}"))
            continue
        text = cleaned[row.report]
        if row.task == "report_generation":
            if not text:
                outcome.rejects.append(Reject(source=row.source, row=row.image.image_id,
                                              reason="prior_removal_nothing_current",
                                              detail=f"study {row.image.study_id}: every statement refers to an earlier study"))
                continue
            instance = dict(row.instances[0])
            human = instance["conversations"][0]
            instance["conversations"] = [human, {"from": "gpt", "value": text}]
            outcome.rows.append(replace(row, instances=(instance,), report=text, prompts=prior_prompt,
                                        models=llm_model if prior_prompt else ()))
        else:
            conversation_rows.append(replace(row, report=text or None))
    if not conversation_rows:
        return outcome

    stage = ConversationStage(prompts["conversation"], config.min_rounds, config.max_rounds)
    by_key = {row.key: row for row in conversation_rows}
    written: list[tuple[Any, list[dict[str, str]]]] = []
    for item, made in stage.run(session, config.llm, [conversation_item(r, r.report) for r in conversation_rows]):
        row = by_key[item["id"]]
        if isinstance(made, Reject):
            outcome.rejects.append(Reject(source=row.source, row=row.image.image_id, reason=f"{row.task}_{made.reason}",
                                          detail=made.detail))
        else:
            written.append((row, made[0]))
    outcome.counts["conversations_written"] = len(written)
    prompt_ids = (*prior_prompt, (prompts["conversation"].id, prompts["conversation"].content_hash))
    models = tuple(dict.fromkeys(llm_model + tuple(session.model_id(v) for v in config.verifiers)))
    settled = _verify(written, config, session, prompts["verify"], decisions, outcome)
    for row, turns in written:
        status = settled.get(row.key, "not_run")
        if status not in ("passed", "adjudicated", "not_run"):
            continue
        turns = [dict(t) for t in turns]
        turns[0]["value"] = "<image>\n" + turns[0]["value"]
        boxes = [b.model_dump() for _, bs in row.phrases for b in bs]
        instance = {"id": f"{row.key}#0", "conversations": turns, "label": None, "boxes": boxes,
                    "replication": config.replication_for(row.task, row.source, row.split)}
        used = prompt_ids + (((prompts["verify"].id, prompts["verify"].content_hash),) if config.verifiers else ())
        outcome.rows.append(replace(row, instances=(instance,), prompts=used, models=models))
    return outcome


def _verify(written: list[tuple[Any, list[dict[str, str]]]], config: Any, session: Any, prompt: Prompt,
            decisions: dict[str, str], outcome: LLMOutcome) -> dict[str, str]:
    """row key -> settled outcome (passed, adjudicated, queued, rejected...) when verifiers are given."""
    if not config.verifiers or not written:
        return {}
    items = [{**conversation_item(row, row.report), "turns": turns} for row, turns in written]
    verdicts: dict[str, dict[str, Verdict]] = {item["id"]: {} for item in items}
    for spec in config.verifiers:
        for item, made in VerifyConversationStage(prompt).run(session, spec, items):
            if not isinstance(made, Reject):
                verdicts[item["id"]][session.model_id(spec)] = made[0]
    outcome.agreement = agreement(verdicts)
    expected = {session.model_id(s) for s in config.verifiers}
    settled: dict[str, str] = {}
    for (row, turns), item in zip(written, items):
        given = verdicts[row.key]
        status, verdict_route = settle(given, expected, decisions.get(row.key))
        settled[row.key] = status
        outcome.counts[f"verification_{verdict_route}"] += 1
        if status == "verifier_inconsistent":
            reasons = "; ".join(f"{m}: {v.reason}" for m, v in sorted(given.items()))
            outcome.rejects.append(Reject(source=row.source, row=row.image.image_id, reason="verifier_inconsistent",
                                          detail=f"{row.key}: {reasons}"))
        elif status == "adjudicator_rejected":
            outcome.rejects.append(Reject(source=row.source, row=row.image.image_id, reason="adjudicator_rejected",
                                          detail=f"{row.key}: rejected by a person"))
        elif status == "queued":
            outcome.queued.append(QueueEntry(id=row.key, verdicts=given, item={
                "task": row.task, "image": row.image.image_id, "report": row.report,
                "labels": list(row.positive_labels), "conversation": turns,
                "missing_verdicts": sorted(expected - set(given))}))
    return settled


def estimate_requests(rows: list[Any], config: Any) -> list[tuple[type[LLMStage], str, list[LLMRequest]]]:
    """(stage, model, requests) a build would send: prior removal sized on the extracted reports,
    conversations and their verification on the same reports (about the length the rewritten
    text and the conversation will have)."""
    prompts = load_prompts()
    plan: list[tuple[type[LLMStage], str, list[LLMRequest]]] = []
    if config.prior_removal == "llm":
        stage = PriorRemovalStage(prompts["prior_removal"])
        plan.append((PriorRemovalStage, config.llm, [stage.prompt(i) for i in prior_removal_rows(rows)]))
    conversations = [r for r in rows if r.task in ("conversation", "conversation_grounded")]
    if conversations:
        stage = ConversationStage(prompts["conversation"], config.min_rounds, config.max_rounds)
        items = [conversation_item(r, r.report) for r in conversations]
        plan.append((ConversationStage, config.llm, [stage.prompt(i) for i in items]))
        verify = VerifyConversationStage(prompts["verify"])
        stand_in = [{**i, "turns": [{"from": "gpt", "value": i["report"] or ""}] * 2} for i in items]
        for spec in config.verifiers:
            plan.append((VerifyConversationStage, spec, [verify.prompt(i) for i in stand_in]))
    return plan
