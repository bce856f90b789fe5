"""radvlm's LLM stages (part 2): prior-study removal from reports, and standard and grounded
conversations written from an image's report, labels, view and sex (plus phrases and boxes).

Every reply is checked by the parser the runner uses, so a reply that fails a check gets the one
repair the runner makes (with the problem stated), then goes to the ledger and the rejects:
- prior removal: JSON `{"report": ..., "nothing_current": bool}`; the rewritten report must carry
  no prior-study language (ops.prior_study); "nothing current" is an outcome, not a substring;
- conversations: a JSON list of `{"from", "value"}` turns, checked by ops.conversation_checks
  (roles, 5-10 rounds, no empty turn, no prior-study language, no PHI placeholder, grounded ones
  ask where and quote only the given boxes).

The stages run as one `radcorpora.llm.pipeline` graph (prior_removal -> conversation ->
conversation_verify), stored under build/llm/: a killed build resumes mid-pipeline, a changed later
stage re-sends only that stage, and `estimate` is read from the same graph.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from radcorpora.llm.audit import QueueEntry, Verdict, settle
from radcorpora.llm.estimate import total
from radcorpora.llm.pipeline import INPUT, Node, Pipeline, PipelineResult, model_id
from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.runner import CallResult
from radcorpora.llm.stage import LLMStage
from radcorpora.llm.structured import JsonParser, ParseError, json_schema_of
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


class CleanReport(BaseModel):
    """What prior removal makes of one report item (stored under build/llm/): the text kept, ""
    when nothing is about the current image, under the item's id so each image finds its own."""

    id: str
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
            output=OutputFormat(kind="json", schema_name="prior_removed", json_schema=json_schema_of(PriorRemoved)),
            licence_class=row["licence_class"], prompt_id=self.prompt_file.id, hints={"report": row["report"]})

    def parser(self) -> PriorRemovalParser:
        return PriorRemovalParser()

    def parse(self, row: dict, result: CallResult) -> list[CleanReport] | Reject:
        if not result.ok:
            return Reject(source=row["source"], row=row["image_id"], reason=_reason(result), detail=str(result.error))
        reply: PriorRemoved = result.parsed
        return [CleanReport(id=row["id"], report="" if reply.nothing_current else reply.report.strip(),
                            nothing_current=reply.nothing_current)]

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

    def parse(self, row: dict, result: CallResult) -> list[dict[str, Any]] | Reject:
        """The image's facts with the turns written from them: what the verifiers judge."""
        if not result.ok:
            return Reject(source=row["source"], row=row["image_id"], reason=_reason(result), detail=str(result.error))
        return [{**row, "turns": result.parsed}]

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
            output=OutputFormat(kind="json", schema_name="verdict", json_schema=json_schema_of(Verdict)),
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


# --------------------------------------------------------------------------- the graph

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
    result: PipelineResult | None = None  # the graph's run (None when no stage needed a model)


def _report_key(row: Any) -> str:
    return f"prior_removal/{row.source}/{row.image.study_id or row.image.image_id}"


def prior_removal_rows(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """One prior-removal item per distinct report text (a study's report is shared by its images,
    and MS-CXR rows carry their MIMIC-CXR study's report). Ids are unique: a second text under
    one study (PadChest-GR's per-image sentences) gets its text's hash added; requests are keyed
    without the id, so this changes no answer."""
    items: dict[str, dict[str, Any]] = {}
    ids: set[str] = set()
    for row in sorted(rows, key=lambda r: r.key):
        if row.task in LLM_TASKS and row.report and row.report not in items:
            item_id = _report_key(row)
            if item_id in ids:
                item_id += "/" + hashlib.sha256(row.report.encode()).hexdigest()[:12]
            ids.add(item_id)
            items[row.report] = {"id": item_id, "report": row.report, "source": row.source,
                                 "image_id": row.image.image_id, "licence_class": row.image.licence_class}
    return sorted(items.values(), key=lambda item: item["id"])


def conversation_item(row: Any, report: str | None) -> dict[str, Any]:
    from radcorpora.corpora.radvlm.settings import VIEW_WORDS

    return {"id": row.key, "task": row.task, "source": row.source, "image_id": row.image.image_id, "report": report,
            "labels": list(row.positive_labels), "view": VIEW_WORDS.get(row.image.view, "frontal"),
            "sex": SEX_WORDS.get(row.image.sex, "unknown"), "licence_class": row.image.licence_class,
            "grounded": [[p, [b.model_dump() for b in boxes]] for p, boxes in row.phrases]}


def _queue_view(item: dict[str, Any]) -> dict[str, Any]:
    """What a person adjudicating a conversation sees (the queue file's `item`)."""
    return {"task": item["task"], "image": item["image_id"], "report": item["report"], "labels": item["labels"],
            "conversation": item["turns"]}


def per_image(conversation_rows: Sequence[Any], report_ids: dict[str, str]
              ) -> Callable[[list[tuple[str | None, Any, float]]], list[tuple[str | None, Any, float]]]:
    """The conversation node's join: prior removal runs once per distinct report, conversations
    once per image, so its items are the images whose report came through prior removal, with the
    rewritten text (images without a report as they are). An output not made yet (id None, a
    stand-in in an estimate) gives images not made yet either."""
    rows = list(conversation_rows)

    def images(cleaned: list[tuple[str | None, Any, float]]) -> list[tuple[str | None, Any, float]]:
        by_report: dict[str, list[tuple[str | None, CleanReport, float]]] = {}
        for made_id, clean, weight in cleaned:
            by_report.setdefault(clean.id, []).append((made_id, clean, weight))
        out: list[tuple[str | None, Any, float]] = []
        for row in rows:
            if not row.report:
                out.append((row.key, conversation_item(row, None), 1.0))
                continue
            for made_id, clean, weight in by_report.get(report_ids[row.report], ()):
                out.append((None if made_id is None else row.key, conversation_item(row, clean.report or None), weight))
        return out

    return images


@dataclass
class Graph:
    """What a build with a config asks of models: the pipeline (None when nothing does), its
    inputs, and the non-LLM prior removal (rules or off) already applied."""

    pipeline: Pipeline | None
    inputs: list[dict[str, Any]]
    reports: list[dict[str, Any]]  # the prior-removal items
    conversation_rows: list[Any]  # rules/off: with the kept text as their report
    cleaned: dict[str, str]  # rules/off: report -> text without prior-study language
    counts: Counter


def declare(rows: Sequence[Any], config: Any, prompts: dict[str, Prompt]) -> Graph:
    """The graph, declared once: prior_removal (per distinct report; --prior-removal llm) ->
    conversation (per image) -> conversation_verify (an audit by the --verify models)."""
    counts: Counter = Counter()
    reports = prior_removal_rows(rows)
    counts["prior_removal_reports"] = len(reports)
    cleaned: dict[str, str] = {}
    if config.prior_removal == "off":
        cleaned = {item["report"]: item["report"] for item in reports}
    elif config.prior_removal == "rules":  # a non-LLM step: sentences dropped whole, nothing sent
        for item in reports:
            kept, removed = remove_prior_sentences(item["report"])
            cleaned[item["report"]] = kept
            counts["prior_sentences_removed"] += len(removed)
    conversations = [row for row in rows if row.task in LLM_TASKS and row.task != "report_generation"]
    if config.prior_removal != "llm":
        conversations = [replace(row, report=cleaned[row.report] or None) if row.report else row for row in conversations]
    nodes: list[Node] = []
    if config.prior_removal == "llm":
        nodes.append(Node("prior_removal", PriorRemovalStage(prompts["prior_removal"]), [config.llm],
                          item_type=CleanReport,
                          stand_in=lambda item: CleanReport(id=item["id"], report=item["report"], nothing_current=False)))
    if config.conversations:
        nodes.append(Node("conversation", ConversationStage(prompts["conversation"], config.min_rounds, config.max_rounds),
                          [config.llm], consumes=nodes[0].name if nodes else INPUT,
                          join=per_image(conversations, {item["report"]: item["id"] for item in reports}) if nodes else None,
                          # verification is sized on the report standing in for the turns (about as long)
                          stand_in=lambda item: {**item, "turns": [{"from": "gpt", "value": item["report"] or ""}] * 2}))
        if config.verifiers:
            nodes.append(Node("conversation_verify", VerifyConversationStage(prompts["verify"]), config.verifiers,
                              consumes="conversation", audit=True, describe=_queue_view))
    if not nodes:
        return Graph(None, [], reports, conversations, cleaned, counts)
    inputs = reports if config.prior_removal == "llm" else [conversation_item(r, r.report) for r in conversations]
    pipeline = Pipeline(nodes, key=lambda item: item["id"])
    return Graph(pipeline, inputs, reports, conversations, cleaned, counts)


def run_llm_stages(rows: list[Any], config: Any, session: Any | None, decisions: dict[str, str],
                   store_dir: Path | str) -> LLMOutcome:
    """Prior-study removal on every report the build uses (report generation and the facts of
    conversations), then conversations, then their optional verification, as one pipeline run
    stored under `store_dir`. `session` is None when no stage needs a model."""
    prompts = load_prompts()
    graph = declare(rows, config, prompts)
    outcome = LLMOutcome(rows=[], counts=Counter(graph.counts))
    result = outcome.result = (graph.pipeline.run(graph.inputs, session, store_dir, decisions)
                               if graph.pipeline is not None else None)
    cleaned: dict[str, str] = dict(graph.cleaned)
    failed: dict[str, Reject] = {}
    if result is not None and "prior_removal" in result.nodes:
        node = result["prior_removal"]
        for item in graph.reports:
            if item["id"] in node.rejects:
                failed[item["report"]] = node.rejects[item["id"]]
            else:
                cleaned[item["report"]] = node.outputs[item["id"]].report
    outcome.counts["prior_removal_nothing_current"] = sum(1 for v in cleaned.values() if not v)
    llm_model = (model_id(config.llm),) if session is not None and config.llm else ()
    prior_prompt = ((prompts["prior_removal"].id, prompts["prior_removal"].content_hash),) \
        if config.prior_removal == "llm" else ()

    for row in rows:
        if row.task not in LLM_TASKS:
            outcome.rows.append(row)
        elif row.report and row.report in failed:
            reject = failed[row.report]
            outcome.rejects.append(Reject(source=row.source, row=row.image.image_id, reason=f"prior_removal_{reject.reason}",
                                          detail=f"{row.task}: {reject.detail}"))
        elif row.task == "report_generation":  # report rows always have text (planning rejects those without)
            text = cleaned[row.report]
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
    conversation_rows = [r for r in graph.conversation_rows if not (r.report and r.report in failed)]
    if not conversation_rows:
        return outcome

    assert result is not None
    written = result["conversation"]
    for row in conversation_rows:
        made = written.rejects.get(row.key)
        if made is not None:
            outcome.rejects.append(Reject(source=row.source, row=row.image.image_id, reason=f"{row.task}_{made.reason}",
                                          detail=made.detail))
    outcome.counts["conversations_written"] = len(written.outputs)
    prompt_ids = (*prior_prompt, (prompts["conversation"].id, prompts["conversation"].content_hash))
    if config.verifiers:
        prompt_ids += ((prompts["verify"].id, prompts["verify"].content_hash),)
    models = tuple(dict.fromkeys(llm_model + tuple(model_id(v) for v in config.verifiers)))
    settled = _settled(written.outputs, conversation_rows, config, result, decisions, outcome)
    for row in conversation_rows:
        item = written.outputs.get(row.key)
        if item is None or settled.get(row.key, "not_run") not in ("passed", "adjudicated", "not_run"):
            continue
        turns = [dict(t) for t in item["turns"]]
        turns[0]["value"] = "<image>\n" + turns[0]["value"]
        boxes = [b.model_dump() for _, bs in row.phrases for b in bs]
        instance = {"id": f"{row.key}#0", "conversations": turns, "label": None, "boxes": boxes,
                    "replication": config.replication_for(row.task, row.source, row.split)}
        outcome.rows.append(replace(row, report=item["report"], instances=(instance,), prompts=prompt_ids, models=models))
    return outcome


def _settled(written: dict[str, Any], rows: list[Any], config: Any, result: PipelineResult,
             decisions: dict[str, str], outcome: LLMOutcome) -> dict[str, str]:
    """row key -> how its audit settled (passed, adjudicated, queued, rejected...) when verifiers
    are given; the verification counts, agreement, queue and rejects as the build reports them."""
    if not config.verifiers or not written:
        return {}
    audit = result["conversation_verify"]
    outcome.agreement = {k: v for k, v in audit.agreement.items() if k != "settled"}
    outcome.queued = list(audit.queue)
    expected = {model_id(s) for s in config.verifiers}
    for row in rows:
        if row.key not in written:
            continue
        given = audit.verdicts.get(row.key, {})
        outcome.counts[f"verification_{settle(given, expected, decisions.get(row.key))[1]}"] += 1
        status = audit.settled[row.key]
        if status == "verifier_inconsistent":
            reasons = "; ".join(f"{m}: {v.reason}" for m, v in sorted(given.items()))
            outcome.rejects.append(Reject(source=row.source, row=row.image.image_id, reason="verifier_inconsistent",
                                          detail=f"{row.key}: {reasons}"))
        elif status == "adjudicator_rejected":
            outcome.rejects.append(Reject(source=row.source, row=row.image.image_id, reason="adjudicator_rejected",
                                          detail=f"{row.key}: rejected by a person"))
    return dict(audit.settled)


def estimate_from_graph(rows: list[Any], config: Any, llm_settings: Any,
                        store_dir: Path | str | None = None) -> dict[str, Any]:
    """What a build would send, from the graph: stored lines under `store_dir` are reused, cached
    answers are parsed (so later nodes are sized from real outputs), the rest is projected from
    stand-ins (conversations on the extracted report, verification on the report as the turns)."""
    graph = declare(rows, config, load_prompts())
    if graph.pipeline is None:
        return {"corpus": "radvlm", "samples": len(rows), "stages": [], "total": total([]),
                "note": "no LLM stage would run: give --conversations N with --llm, or --prior-removal llm"}
    result = graph.pipeline.estimate(graph.inputs, llm_settings, store_dir, corpus="radvlm")
    result["samples"] = len(rows)
    return result
