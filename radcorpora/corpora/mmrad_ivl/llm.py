"""The LLM roles of mmrad-ivl as one pipeline: "summarise" (a trace -> ordered region steps) ->
"reflect" (the same model corrects contradictions with the report, recording each change) ->
"cross_audit" (the --auditor models judge each trace; disagreements go to the adjudication queue).
The fidelity judge (1-5) is a second, one-node graph over a seeded sample of the finished traces.

Items carry no local paths or pixels, so moving the sources re-asks nothing; steps name regions of
their trace and take the trace's own boxes, so no box is ever written by a model.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from radcorpora.corpora.mmrad_ivl.settings import LICENCE_CLASS, MmradIvlSettings
from radcorpora.llm.audit import Verdict
from radcorpora.llm.pipeline import Node, Pipeline
from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.runner import CallResult
from radcorpora.llm.stage import LLMStage
from radcorpora.llm.structured import JsonParser, ParseError, json_schema_of
from radcorpora.prompts.llm import Prompt, load_prompt
from radcorpora.schemas.common import Reject
from radcorpora.schemas.regions import normalise_region

PROMPT_FIELDS = {"mmrad_ivl_summarise": frozenset({"trace", "regions"}),
                 "mmrad_ivl_reflect": frozenset({"report", "steps"}),
                 "mmrad_ivl_audit": frozenset({"report", "steps"}),
                 "mmrad_ivl_fidelity": frozenset({"report", "steps"})}


def load_prompts() -> dict[str, Prompt]:
    return {name: load_prompt(name, None, fields, __package__) for name, fields in PROMPT_FIELDS.items()}


# --------------------------------------------------------------------------- items


class TraceRegion(BaseModel):
    region: str
    box: tuple[float, float, float, float]  # normalised xyxy (the source's grid box)


class TraceQuestion(BaseModel):
    kind: str
    question: str
    answer: str
    reasoning: str
    regions: list[TraceRegion]


class Trace(BaseModel):
    """One image's GEMeX-ThinkVG questions in merge order with the study's report (the pipeline's input)."""

    id: str  # dicom_id
    report: str
    questions: list[TraceQuestion]

    def region_boxes(self) -> dict[str, list[tuple[float, float, float, float]]]:
        """Region name as first written -> its distinct boxes, in order of appearance."""
        out: dict[str, list[tuple[float, float, float, float]]] = {}
        names: dict[str, str] = {}
        for question in self.questions:
            for region in question.regions:
                name = names.setdefault(normalise_region(region.region), region.region)
                if region.box not in out.setdefault(name, []):
                    out[name].append(region.box)
        return out


class StepReply(BaseModel):
    region: str = Field(min_length=1)
    text: str = Field(min_length=1)


class SummaryReply(BaseModel):
    steps: list[StepReply] = Field(min_length=1)


class Change(BaseModel):
    step: int = Field(ge=0)
    before: str = ""
    after: str = ""
    reason: str = ""


class ReflectReply(BaseModel):
    steps: list[StepReply] = Field(min_length=1)
    changes: list[Change] = Field(default_factory=list)


class Step(BaseModel):
    region: str  # the trace's spelling
    text: str
    boxes: list[tuple[float, float, float, float]]


class Summary(BaseModel):
    """A trace with its steps (the "summarise" node's item)."""

    trace: Trace
    steps: list[Step]


class Reflected(BaseModel):
    """A trace with its steps after self-reflection and every change it made (reflect's item)."""

    trace: Trace
    steps: list[Step]
    changes: list[Change]


class Fidelity(BaseModel):
    score: int = Field(ge=1, le=5)
    reason: str = ""


# --------------------------------------------------------------------------- parsers with the row's checks


M = TypeVar("M", bound=BaseModel)


class _TraceParser(JsonParser[M]):
    """A reply checked against the regions of its own trace (from the request's hints)."""

    reply: type[BaseModel]

    def __init__(self, regions: tuple[str, ...] = ()):
        super().__init__(self.reply)
        self.regions = regions

    def for_request(self, request: LLMRequest) -> _TraceParser:
        return type(self)(tuple(json.loads(request.hints.get("regions", "[]"))))


class SummaryParser(_TraceParser[SummaryReply]):
    """Every step names a region of its trace (a repair names the ones that do not)."""

    reply = SummaryReply

    def __call__(self, text: str) -> SummaryReply:
        reply = super().__call__(text)
        known = {normalise_region(r) for r in self.regions}
        unknown = [s.region for s in reply.steps if normalise_region(s.region) not in known]
        if self.regions and unknown:
            raise ParseError(f"step region(s) {unknown} are not regions of this trace; use only: {list(self.regions)}")
        return reply


class ReflectParser(_TraceParser[ReflectReply]):
    """The same steps, regions and order come back; only texts may change."""

    reply = ReflectReply

    def __call__(self, text: str) -> ReflectReply:
        reply = super().__call__(text)
        got = tuple(normalise_region(s.region) for s in reply.steps)
        if self.regions and got != tuple(normalise_region(r) for r in self.regions):
            raise ParseError(f"the steps must keep their regions and order {list(self.regions)}; got "
                             f"{[s.region for s in reply.steps]}")
        bad = [c.step for c in reply.changes if c.step >= len(reply.steps)]
        if bad:
            raise ParseError(f"change(s) name step {bad[0]}, but there are {len(reply.steps)} steps (0-based)")
        return reply


# --------------------------------------------------------------------------- requests


def _json_request(stage: str, item_id: str, prompt: Prompt, text: str, schema: type[BaseModel], sampling: Sampling,
                  hints: dict[str, str]) -> LLMRequest:
    return LLMRequest(id=item_id, stage=stage, system=prompt.system, messages=(Message.user(text),), sampling=sampling,
                      output=OutputFormat(kind="json", schema_name=schema.__name__.lower(),
                                          json_schema=json_schema_of(schema)),
                      licence_class=LICENCE_CLASS, prompt_id=prompt.id, hints=hints)


def trace_text(trace: Trace) -> str:
    return "\n".join(f"{i + 1}. Question ({q.kind}): {q.question}\n   Answer: {q.answer}\n   Reasoning: {q.reasoning}"
                     for i, q in enumerate(trace.questions))


def steps_json(steps: list[Step]) -> str:
    return json.dumps([{"region": s.region, "text": s.text} for s in steps], ensure_ascii=False)


def _failed(item_id: str, result: CallResult) -> Reject:
    kind = result.error.kind if result.error is not None else "failed"
    return Reject(source="mmrad-ivl", row=item_id, reason=f"llm_{kind}", detail=f"{item_id}: {result.error}")


class SummariseStage(LLMStage[Trace]):
    name = "mmrad_summarise"
    description = "(a) a GEMeX-ThinkVG trace -> ordered region steps (region, finding text; boxes from the trace)"
    output = SummaryReply
    expected_output_tokens = 400

    def __init__(self, prompt: Prompt, settings: MmradIvlSettings):
        self.prompt_file, self.settings = prompt, settings

    def prompt(self, row: Trace) -> LLMRequest:
        regions = list(row.region_boxes())
        text = self.prompt_file.render(trace=trace_text(row), regions="\n".join(f"- {r}" for r in regions))
        return _json_request(self.name, row.id, self.prompt_file, text, SummaryReply, self.settings.sampling,
                             {"trace": row.model_dump_json(), "regions": json.dumps(regions)})

    def parser(self) -> SummaryParser:
        return SummaryParser()

    def parse(self, row: Trace, result: CallResult) -> list[Summary] | Reject:
        if not result.ok:
            return _failed(row.id, result)
        boxes = {normalise_region(name): (name, found) for name, found in row.region_boxes().items()}
        steps = [Step(region=boxes[normalise_region(s.region)][0], text=" ".join(s.text.split()),
                      boxes=boxes[normalise_region(s.region)][1]) for s in result.parsed.steps]
        return [Summary(trace=row, steps=steps)]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_summary(request)


class ReflectStage(LLMStage[Summary]):
    name = "mmrad_reflect"
    description = "(b) self-reflection: the same model corrects steps that contradict the report, recording each change"
    output = ReflectReply
    expected_output_tokens = 450

    def __init__(self, prompt: Prompt, settings: MmradIvlSettings):
        self.prompt_file, self.settings = prompt, settings

    def prompt(self, row: Summary) -> LLMRequest:
        text = self.prompt_file.render(report=row.trace.report, steps=steps_json(row.steps))
        return _json_request(self.name, row.trace.id, self.prompt_file, text, ReflectReply, self.settings.sampling,
                             {"report": row.trace.report, "steps": steps_json(row.steps),
                              "regions": json.dumps([s.region for s in row.steps])})

    def parser(self) -> ReflectParser:
        return ReflectParser()

    def parse(self, row: Summary, result: CallResult) -> list[Reflected] | Reject:
        if not result.ok:
            return _failed(row.trace.id, result)
        reply: ReflectReply = result.parsed
        stated = {c.step: c for c in reply.changes}
        steps, changes = [], []
        for index, (old, new) in enumerate(zip(row.steps, reply.steps)):
            text = " ".join(new.text.split())
            steps.append(Step(region=old.region, text=text, boxes=old.boxes))
            if text != old.text:  # every change is recorded, stated by the model or not
                reason = stated[index].reason if index in stated else "changed without a stated reason"
                changes.append(Change(step=index, before=old.text, after=text, reason=reason))
        return [Reflected(trace=row.trace, steps=steps, changes=changes)]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_reflect(request)


class _JudgeStage(LLMStage[Reflected]):
    """A judge of a whole trace against its report: one JSON reply of the stage's `output` model."""

    expected_output_tokens = 80

    def __init__(self, prompt: Prompt):
        self.prompt_file = prompt

    def prompt(self, row: Reflected) -> LLMRequest:
        steps = steps_json(row.steps)
        text = self.prompt_file.render(report=row.trace.report, steps=steps)
        return _json_request(self.name, row.trace.id, self.prompt_file, text, self.output,
                             Sampling(temperature=0.0, max_tokens=300), {"report": row.trace.report, "steps": steps})

    def parser(self) -> JsonParser:
        return JsonParser(self.output)

    def parse(self, row: Reflected, result: CallResult) -> list[BaseModel] | Reject:
        return _failed(row.trace.id, result) if not result.ok else [result.parsed]


class AuditStage(_JudgeStage):
    name = "mmrad_audit"
    description = "(c) cross-audit: other models judge each trace consistent with the report or not"
    output = Verdict

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_audit(request)


class FidelityStage(_JudgeStage):
    name = "mmrad_fidelity"
    description = "(d) fidelity audit: a 1-5 judge with written criteria on a seeded sample"
    output = Fidelity

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_fidelity(request)


STAGES = (SummariseStage, ReflectStage, AuditStage, FidelityStage)


def _queued(item: Reflected) -> dict[str, Any]:
    """What a person sees of a queued trace."""
    return {"report": item.trace.report, "steps": [s.model_dump(mode="json", exclude={"boxes"}) for s in item.steps],
            "changes": [c.model_dump(mode="json") for c in item.changes]}


def pipeline(settings: MmradIvlSettings) -> Pipeline:
    prompts = load_prompts()
    nodes = [Node("summarise", SummariseStage(prompts["mmrad_ivl_summarise"], settings), [settings.llm],
                  item_type=Summary, stand_in=_summary_stand_in),
             Node("reflect", ReflectStage(prompts["mmrad_ivl_reflect"], settings), [settings.llm], consumes="summarise",
                  item_type=Reflected, stand_in=_reflected_stand_in)]
    if settings.auditors:
        nodes.append(Node("cross_audit", AuditStage(prompts["mmrad_ivl_audit"]), settings.auditors, consumes="reflect",
                          audit=True, describe=_queued))
    return Pipeline(nodes, key=lambda trace: trace.id)


def fidelity_pipeline(settings: MmradIvlSettings) -> Pipeline | None:
    """The fidelity judge (the first auditor, else --llm) over the sampled traces."""
    if settings.audit_sample == 0:
        return None
    judge = settings.auditors[0] if settings.auditors else settings.llm
    return Pipeline([Node("fidelity", FidelityStage(load_prompts()["mmrad_ivl_fidelity"]), [judge],
                          item_type=Fidelity)], key=lambda item: item.trace.id)


def _summary_stand_in(trace: Trace) -> Summary:
    """Sizes reflect before any summary exists: about one step per region, the reasoning as text."""
    return Summary(trace=trace, steps=[Step(region=name, text=trace.questions[0].reasoning, boxes=boxes)
                                       for name, boxes in trace.region_boxes().items()])


def _reflected_stand_in(summary: Summary) -> Reflected:
    return Reflected(trace=summary.trace, steps=summary.steps, changes=[])


# --------------------------------------------------------------------------- offline stand-ins (NOT models)

_BOX_TEXT = re.compile(r"\s*\(\s*[^()\[\]]*\[[^\[\]]*\]\s*\)|\s*\[[^\[\]]*\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def offline_summary(request: LLMRequest) -> str:
    """One step per region of the trace, in order of appearance: the reasoning sentences that name
    it (box text removed), else the sentence its box stands in."""
    trace = Trace.model_validate_json(request.hints["trace"])
    texts: dict[str, list[str]] = {name: [] for name in trace.region_boxes()}
    for question in trace.questions:
        for sentence in _SENTENCE.split(question.reasoning):
            clean = " ".join(_BOX_TEXT.sub("", sentence).split())
            for region in question.regions:
                name = next(n for n in texts if normalise_region(n) == normalise_region(region.region))
                if region.region.lower() in sentence.lower() and clean and clean not in texts[name]:
                    texts[name].append(clean)
    steps = [{"region": name, "text": " ".join(found) or f"The {name} is assessed."} for name, found in texts.items()]
    return json.dumps({"steps": steps})


_NEGATED = re.compile(r"\bno (?:[a-z]+ ){0,2}(effusion|pneumothorax|consolidation|edema|fracture|nodule|opacity)",
                      re.IGNORECASE)


def offline_reflect(request: LLMRequest) -> str:
    """Keeps every step unless it affirms a finding the report denies (`No pleural effusion.`):
    that step's text is replaced by the report's denial, and the change recorded."""
    steps = json.loads(request.hints["steps"])
    denied = {m.group(1).lower() for m in _NEGATED.finditer(request.hints.get("report", ""))}
    changes = []
    for index, step in enumerate(steps):
        words = step["text"].lower()
        hit = next((d for d in sorted(denied) if d in words and not _NEGATED.search(step["text"])
                    and not re.search(r"\b(no|not|without)\b", words)), None)
        if hit is not None:
            after = f"No {hit} is seen in the {step['region']}."
            changes.append({"step": index, "before": step["text"], "after": after,
                            "reason": f"the report states there is no {hit}"})
            step["text"] = after
    return json.dumps({"steps": steps, "changes": changes})


def offline_audit(request: LLMRequest) -> str:
    """Consistent unless a step affirms a finding the report denies."""
    denied = {m.group(1).lower() for m in _NEGATED.finditer(request.hints.get("report", ""))}
    for step in json.loads(request.hints["steps"]):
        words = step["text"].lower()
        if any(d in words for d in denied) and not re.search(r"\b(no|not|without)\b", words):
            return json.dumps({"consistent": False, "reason": f"{step['region']}: the report denies this"})
    return json.dumps({"consistent": True, "reason": "no step contradicts the report"})


def offline_fidelity(request: LLMRequest) -> str:
    """5 for a trace the stand-in auditor passes, 2 otherwise; 4 for a one-step trace."""
    verdict = json.loads(offline_audit(request))
    steps = json.loads(request.hints["steps"])
    score = (4 if len(steps) == 1 else 5) if verdict["consistent"] else 2
    return json.dumps({"score": score, "reason": verdict["reason"]})
