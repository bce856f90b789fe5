"""The LLM roles of ct-reasoning as pipelines.

Per report (graph `pipeline`): "questions" (fans out into examiner questions) -> "thinking" (a
reasoning model; its reasoning kept apart from its short answer; the gate's rules that need no
model reject here, each by name) -> "gate" (an LLM verdict per item, an audit node) -> "refine"
(the thinking rewritten as a reading of the images, checked by the leak detector: one repair,
then a reject); with --rewrite "rewrite" -> "rewrite_judge", with --translate "translate".
Per scan (graph `narrative_pipeline`): "narrative" merges the kept items, given in anatomical
order, into findings / impression / follow-up rationale.

Every request carries a sampling seed derived from its row (`row_seed`), so a sampled reply is
reproducible where the provider honours seeds. Items carry no local paths, so moving the sources
re-asks nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from radcorpora.corpora.ct_reasoning.checks import (
    GROUP_RANK,
    LEAK,
    anatomy_group,
    gate_problem,
    language,
    leaks,
    out_of_order,
    sentences,
    words,
)
from radcorpora.corpora.ct_reasoning.settings import CORPUS, LICENCE_CLASS, CtReasoningSettings
from radcorpora.llm.audit import Verdict
from radcorpora.llm.pipeline import Node, Pipeline
from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.runner import CallResult
from radcorpora.llm.stage import LLMStage
from radcorpora.llm.structured import JsonParser, ParseError, json_schema_of
from radcorpora.ops.sampling import row_digest
from radcorpora.prompts.llm import Prompt, load_prompt
from radcorpora.schemas.common import Reject

Focus = Literal["lesion", "location", "certainty", "follow_up", "other"]
COVERED: tuple[str, ...] = ("lesion", "location", "certainty", "follow_up")
MAX_ANSWER_WORDS = 60
PROMPT_FIELDS = {
    "ct_reasoning_questions": frozenset({"report", "min_questions", "max_questions"}),
    "ct_reasoning_thinking": frozenset({"report", "question"}),
    "ct_reasoning_gate": frozenset({"report", "question", "answer", "thinking"}),
    "ct_reasoning_refine": frozenset({"question", "answer", "thinking"}),
    "ct_reasoning_narrative": frozenset({"items"}),
    "ct_reasoning_rewrite": frozenset({"report"}),
    "ct_reasoning_rewrite_judge": frozenset({"report", "rewrite"}),
    "ct_reasoning_translate": frozenset({"report", "language"}),
}


def load_prompts() -> dict[str, Prompt]:
    return {name: load_prompt(name, None, fields, __package__) for name, fields in PROMPT_FIELDS.items()}


def row_seed(seed: int, item_id: str, role: str) -> int:
    """The sampling seed of one request: from the build seed, the item and the role."""
    return int.from_bytes(row_digest(seed, CORPUS, item_id, role)[:4], "big") & 0x7FFFFFFF


# --------------------------------------------------------------------------- items


class SourceQuestion(BaseModel):
    """A multiple-choice question the source ships with the scan (AMOS-MM `labels.qa`)."""

    question: str
    options: list[str]  # A-D in order
    correct: Literal["A", "B", "C", "D"]


class Report(BaseModel):
    """A scan's report (the per-report pipeline's input); id = "<source>/<scan id>"; with the
    source's own questions, asked after the generated ones (an extra question source)."""

    id: str
    text: str
    source_questions: list[SourceQuestion] = Field(default_factory=list)


class QuestionItem(BaseModel):
    question: str = Field(min_length=1)
    focus: Focus


class QuestionsReply(BaseModel):
    questions: list[QuestionItem] = Field(min_length=1)


class Question(BaseModel):
    report: Report
    index: int
    question: str
    focus: Focus
    origin: Literal["generated", "amos_mm_qa"] = "generated"
    options: list[str] = Field(default_factory=list)
    correct: Literal["A", "B", "C", "D"] | None = None

    @property
    def asked(self) -> str:
        """The question as the thinking model reads it (a multiple-choice one with its options)."""
        if not self.options:
            return self.question
        listed = "\n".join(f"{letter}) {text}" for letter, text in zip(LETTERS, self.options))
        return f"{self.question}\n{listed}\nAnswer with the letter and the text of the one correct option."


LETTERS = ("A", "B", "C", "D")


def chosen_option(answer: str, options: list[str]) -> str | None:
    """The option letter an answer picks: a leading "B)" / "B." / "(B)" / "B:", else the one
    option whose text it contains; None when it names none or several."""
    lead = re.match(r"^\s*\(?([A-D])(?:[).:]|\s|$)", answer)
    if lead:
        return lead.group(1)
    named = [letter for letter, text in zip(LETTERS, options) if re.search(rf"\b{re.escape(text.lower())}\b",
                                                                         answer.lower())]
    return named[0] if len(named) == 1 else None


class Thought(BaseModel):
    """A question thought through: the model's own reasoning and, apart, its short answer."""

    question: Question
    thinking: str
    answer: str
    thinking_from: Literal["reasoning_channel", "think_tags"]


class Refined(BaseModel):
    thought: Thought
    thinking: str  # rewritten as a reading of the images


class ScanItems(BaseModel):
    """A scan's kept items in anatomical order (the narrative pipeline's input)."""

    report: Report
    items: list[Refined]


class Narrative(BaseModel):
    findings_rationale: str = Field(min_length=1)
    impression_rationale: str = Field(min_length=1)
    follow_up_rationale: str = Field(min_length=1)


class Paraphrase(BaseModel):
    report: Report
    text: str


class Translation(BaseModel):
    report: Report
    language: str
    text: str


# --------------------------------------------------------------------------- parsers with the row's checks


class QuestionsParser(JsonParser[QuestionsReply]):
    """Between min and max questions, no two alike, every focus of COVERED asked when there are
    at least as many questions allowed as foci."""

    def __init__(self, low: int = 1, high: int = 100):
        super().__init__(QuestionsReply)
        self.low, self.high = low, high

    def for_request(self, request: LLMRequest) -> QuestionsParser:
        return QuestionsParser(int(request.hints["min"]), int(request.hints["max"]))

    def __call__(self, text: str) -> QuestionsReply:
        reply = super().__call__(text)
        n = len(reply.questions)
        if not self.low <= n <= self.high:
            raise ParseError(f"{n} questions; write between {self.low} and {self.high}")
        seen = [" ".join(words(q.question)) for q in reply.questions]
        if len(set(seen)) != n:
            raise ParseError("two questions are the same; make every question distinct")
        missing = [f for f in COVERED if f not in {q.focus for q in reply.questions}]
        if self.high >= len(COVERED) and missing:
            raise ParseError(f"no question with focus {missing}; cover {list(COVERED)}")
        leaked = [q.question for q in reply.questions if LEAK.search(q.question)]
        if leaked:
            raise ParseError(f"a question mentions a report or text ({leaked[0][:60]!r}); ask about the images")
        return reply


_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


class ThinkingParser:
    """`<think>...</think>` (optional: a reasoning channel may carry the thinking) then the short
    answer alone: not empty, at most MAX_ANSWER_WORDS words, no tag left in it."""

    def format_hint(self) -> str:
        return "<think>your thinking</think> then the short answer (one or two sentences)"

    def __call__(self, text: str) -> dict[str, str | None]:
        found = _THINK.findall(text)
        answer = _THINK.sub("", text).strip()
        if re.search(r"</?think>", answer, re.IGNORECASE):
            raise ParseError("unbalanced <think> tags; write <think>...</think> once, then the answer")
        if not answer:
            raise ParseError("no answer after the thinking; end with the short final answer")
        if len(answer.split()) > MAX_ANSWER_WORDS:
            raise ParseError(f"the answer has {len(answer.split())} words; give the short final answer only "
                             f"(at most {MAX_ANSWER_WORDS}), with the thinking inside <think>...</think>")
        think = " ".join(" ".join(found).split()) or None
        return {"think": think, "answer": " ".join(answer.split())}


class LeakParser:
    """Plain text that never refers to a report, text or prior document (the leak detector)."""

    def format_hint(self) -> str:
        return "plain prose that describes only what is seen on the images"

    def __call__(self, text: str) -> str:
        body = " ".join(_THINK.sub("", text).split())
        if not body:
            raise ParseError("the reply is empty")
        found = leaks(body)
        if found:
            raise ParseError(f"LEAK: the text refers to a written source ({', '.join(repr(f) for f in found[:4])}); "
                             "describe what is seen on the images instead")
        return body


class NarrativeParser(JsonParser[Narrative]):
    """No section refers to a written source; the findings rationale goes down the body in order."""

    def __init__(self):
        super().__init__(Narrative)

    def __call__(self, text: str) -> Narrative:
        reply = super().__call__(text)
        for name in Narrative.model_fields:
            found = leaks(getattr(reply, name))
            if found:
                raise ParseError(f"LEAK: {name} refers to a written source ({found[0]!r}); describe the images")
        sequence = out_of_order(reply.findings_rationale)
        if sequence is not None:
            raise ParseError(f"ORDER: findings_rationale visits {sequence}; keep the anatomical order "
                             f"{sorted(sequence, key=GROUP_RANK.get)}")
        return reply


class LanguageParser:
    """A translation: not empty, identified (langid.py) as the language asked for."""

    def __init__(self, code: str = ""):
        self.code = code

    def for_request(self, request: LLMRequest) -> LanguageParser:
        return LanguageParser(request.hints["language"])

    def format_hint(self) -> str:
        return f"the translation only, in the language {self.code!r}"

    def __call__(self, text: str) -> str:
        body = text.strip()
        if not body:
            raise ParseError("the reply is empty")
        found = language(body)
        if self.code and found != self.code:
            raise ParseError(f"LANGUAGE: the reply reads as {found!r}, not {self.code!r}; translate the whole report")
        return body


class TextParser:
    def format_hint(self) -> str:
        return "plain text"

    def __call__(self, text: str) -> str:
        body = text.strip()
        if not body:
            raise ParseError("the reply is empty")
        return body


# --------------------------------------------------------------------------- requests and stages


def _request(stage: str, item_id: str, prompt: Prompt, text: str, sampling: Sampling, hints: dict[str, str],
             schema: type[BaseModel] | None = None) -> LLMRequest:
    output = (OutputFormat(kind="json", schema_name=schema.__name__.lower(), json_schema=json_schema_of(schema))
              if schema is not None else OutputFormat())
    return LLMRequest(id=item_id, stage=stage, system=prompt.system, messages=(Message.user(text),),
                      sampling=sampling, output=output, licence_class=LICENCE_CLASS, prompt_id=prompt.id, hints=hints)


def _failed(item_id: str, result: CallResult, role: str) -> Reject:
    """A failed call as a reject; a reply the parser refused twice is named by what it broke."""
    error = result.error
    kind = error.kind if error is not None else "failed"
    reason = f"{role}_llm_{kind}"
    if kind == "parse":
        for tag, name in (("LEAK", "leak"), ("ORDER", "anatomical_order"), ("LANGUAGE", "wrong_language")):
            if f"{tag}:" in str(error):
                reason = f"{role}_{name}"
    return Reject(source=CORPUS, row=item_id, reason=reason, detail=f"{item_id}: {error}")


class _Stage(LLMStage):
    role: str = ""

    def __init__(self, prompt: Prompt, settings: CtReasoningSettings):
        self.prompt_file, self.settings = prompt, settings

    def sampling(self, item_id: str) -> Sampling:
        s = self.settings.sampling
        return Sampling(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                        seed=row_seed(self.settings.seed, item_id, self.role))


def question_id(q: Question) -> str:
    return f"{q.report.id}/q{q.index}"


class QuestionsStage(_Stage):
    name, role = "ct_questions", "questions"
    description = "(1) the questions an examiner would ask, from the report (count bounds, four foci covered)"
    output = QuestionsReply
    expected_output_tokens = 300

    def prompt(self, row: Report) -> LLMRequest:
        low, high = self.settings.min_questions(), self.settings.questions_per_report
        text = self.prompt_file.render(report=row.text, min_questions=str(low), max_questions=str(high))
        return _request(self.name, row.id, self.prompt_file, text, self.sampling(row.id),
                        {"report": row.text, "min": str(low), "max": str(high)}, QuestionsReply)

    def parser(self) -> QuestionsParser:
        return QuestionsParser()

    def parse(self, row: Report, result: CallResult) -> list[Question] | Reject:
        if not result.ok:
            return _failed(row.id, result, self.role)
        asked = [Question(report=row, index=i, question=" ".join(q.question.split()), focus=q.focus)
                 for i, q in enumerate(result.parsed.questions)]
        return asked + [Question(report=row, index=len(asked) + k, question=q.question, focus="other",
                                 origin="amos_mm_qa", options=q.options, correct=q.correct)
                        for k, q in enumerate(row.source_questions)]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_questions(request)


class ThinkingStage(_Stage):
    name, role = "ct_thinking", "thinking"
    description = ("(2) a reasoning model thinks each question through as if viewing the scan; reasoning kept "
                   "apart from the short answer; the gate's model-free rules reject here")
    expected_output_tokens = 1200  # reasoning models bill their thinking as output

    def prompt(self, row: Question) -> LLMRequest:
        text = self.prompt_file.render(report=row.report.text, question=row.asked)
        item = question_id(row)
        return _request(self.name, item, self.prompt_file, text, self.sampling(item),
                        {"report": row.report.text, "question": row.question, "focus": row.focus,
                         "options": json.dumps(row.options)})

    def parser(self) -> ThinkingParser:
        return ThinkingParser()

    def parse(self, row: Question, result: CallResult) -> list[Thought] | Reject:
        item = question_id(row)
        if not result.ok:
            return _failed(item, result, self.role)
        channel = (result.response.reasoning or "").strip() if result.response is not None else ""
        thinking = " ".join(channel.split()) or result.parsed["think"]
        if not thinking:
            return Reject(source=CORPUS, row=item, reason="thinking_missing",
                          detail=f"{item}: no reasoning channel and no <think> tags")
        if row.correct is not None and chosen_option(result.parsed["answer"], row.options) != row.correct:
            return Reject(source=CORPUS, row=item, reason="source_answer_mismatch",
                          detail=f"{item}: the answer {result.parsed['answer'][:60]!r} does not pick the source's "
                                 f"option {row.correct}")
        problem = gate_problem(row.question, thinking, result.parsed["answer"], row.report.text)
        if problem is not None:
            return Reject(source=CORPUS, row=item, reason=f"gate_{problem[0]}", detail=f"{item}: {problem[1]}")
        return [Thought(question=row, thinking=thinking, answer=result.parsed["answer"],
                        thinking_from="reasoning_channel" if channel else "think_tags")]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_thinking(request)


class GateStage(_Stage):
    name, role = "ct_gate", "gate"
    description = "(3) quality gate: an LLM verdict per item (a proper exam question, an answer the report supports)"
    output = Verdict
    expected_output_tokens = 80

    def prompt(self, row: Thought) -> LLMRequest:
        q = row.question
        text = self.prompt_file.render(report=q.report.text, question=q.question, answer=row.answer,
                                       thinking=row.thinking)
        item = question_id(q)
        return _request(self.name, item, self.prompt_file, text, self.sampling(item),
                        {"report": q.report.text, "question": q.question, "answer": row.answer}, Verdict)

    def parser(self) -> JsonParser:
        return JsonParser(Verdict)

    def parse(self, row: Thought, result: CallResult) -> list[Verdict] | Reject:
        return _failed(question_id(row.question), result, self.role) if not result.ok else [result.parsed]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_gate(request)


class RefineStage(_Stage):
    name, role = "ct_refine", "refine"
    description = "(4) the thinking rewritten as a reading of the images; leak detector: one repair, then a reject"
    expected_output_tokens = 400

    def prompt(self, row: Thought) -> LLMRequest:
        q = row.question
        text = self.prompt_file.render(question=q.question, answer=row.answer, thinking=row.thinking)
        item = question_id(q)
        return _request(self.name, item, self.prompt_file, text, self.sampling(item), {"thinking": row.thinking})

    def parser(self) -> LeakParser:
        return LeakParser()

    def parse(self, row: Thought, result: CallResult) -> list[Refined] | Reject:
        if not result.ok:
            return _failed(question_id(row.question), result, self.role)
        return [Refined(thought=row, thinking=result.parsed)]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_refine(request)


def items_text(items: list[Refined]) -> str:
    return "\n\n".join(f"{i + 1}. Question ({r.thought.question.focus}): {r.thought.question.question}\n"
                       f"   Reasoning: {r.thinking}\n   Answer: {r.thought.answer}" for i, r in enumerate(items))


class NarrativeStage(_Stage):
    name, role = "ct_narrative", "narrative"
    description = ("(5) one report-thinking narrative per scan from its kept items in anatomical order: findings, "
                   "impression and follow-up rationale (leaks and order checked: one repair, then a reject)")
    output = Narrative
    expected_output_tokens = 700

    def prompt(self, row: ScanItems) -> LLMRequest:
        text = self.prompt_file.render(items=items_text(row.items))
        hints = {"items": json.dumps([{"focus": r.thought.question.focus, "thinking": r.thinking,
                                       "answer": r.thought.answer} for r in row.items], ensure_ascii=False)}
        return _request(self.name, row.report.id, self.prompt_file, text, self.sampling(row.report.id), hints,
                        Narrative)

    def parser(self) -> NarrativeParser:
        return NarrativeParser()

    def parse(self, row: ScanItems, result: CallResult) -> list[Narrative] | Reject:
        return _failed(row.report.id, result, self.role) if not result.ok else [result.parsed]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_narrative(request)


class RewriteStage(_Stage):
    name, role = "ct_rewrite", "rewrite"
    description = "(--rewrite) a paraphrase of the report, meaning kept"
    expected_output_tokens = 300

    def prompt(self, row: Report) -> LLMRequest:
        return _request(self.name, row.id, self.prompt_file, self.prompt_file.render(report=row.text),
                        self.sampling(row.id), {"report": row.text})

    def parser(self) -> TextParser:
        return TextParser()

    def parse(self, row: Report, result: CallResult) -> list[Paraphrase] | Reject:
        return _failed(row.id, result, self.role) if not result.ok else [Paraphrase(report=row, text=result.parsed)]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_rewrite(request)


class RewriteJudgeStage(_Stage):
    name, role = "ct_rewrite_judge", "rewrite_judge"
    description = "(--rewrite) a judge: does the paraphrase keep the report's meaning?"
    output = Verdict
    expected_output_tokens = 80

    def prompt(self, row: Paraphrase) -> LLMRequest:
        text = self.prompt_file.render(report=row.report.text, rewrite=row.text)
        return _request(self.name, row.report.id, self.prompt_file, text, self.sampling(row.report.id),
                        {"report": row.report.text, "rewrite": row.text}, Verdict)

    def parser(self) -> JsonParser:
        return JsonParser(Verdict)

    def parse(self, row: Paraphrase, result: CallResult) -> list[Verdict] | Reject:
        return _failed(row.report.id, result, self.role) if not result.ok else [result.parsed]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_rewrite_judge(request)


class TranslateStage(_Stage):
    name, role = "ct_translate", "translate"
    description = "(--translate LANG) the report translated; the language checked by langid.py"
    expected_output_tokens = 400

    def prompt(self, row: Report) -> LLMRequest:
        code = self.settings.translate or ""
        return _request(self.name, row.id, self.prompt_file, self.prompt_file.render(report=row.text, language=code),
                        self.sampling(row.id), {"report": row.text, "language": code})

    def parser(self) -> LanguageParser:
        return LanguageParser()

    def parse(self, row: Report, result: CallResult) -> list[Translation] | Reject:
        if not result.ok:
            return _failed(row.id, result, self.role)
        return [Translation(report=row, language=self.settings.translate or "", text=result.parsed)]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_translate(request)


STAGES = (QuestionsStage, ThinkingStage, GateStage, RefineStage, NarrativeStage, RewriteStage, RewriteJudgeStage,
          TranslateStage)
# the pipeline node of each role, in the order the card lists them
ROLES = ("questions", "thinking", "gate", "refine", "narrative", "rewrite", "rewrite_judge", "translate")


# --------------------------------------------------------------------------- the graphs


def _question_stand_in(report: Report) -> Question:
    return Question(report=report, index=0, question="What is the main abnormality and where is it?", focus="lesion")


def _thought_stand_in(q: Question) -> Thought:
    return Thought(question=q, thinking=q.report.text, answer=sentences(q.report.text)[0], thinking_from="think_tags")


def _refined_stand_in(t: Thought) -> Refined:
    return Refined(thought=t, thinking=t.thinking)


def _describe(item: Any) -> dict[str, Any]:
    """What a person sees of a queued item."""
    if isinstance(item, Thought):
        return {"report": item.question.report.text, "question": item.question.question, "thinking": item.thinking,
                "answer": item.answer}
    return {"report": item.report.text, "rewrite": item.text}


def pipeline(settings: CtReasoningSettings, gate_pass_rate: float = 0.85) -> Pipeline:
    prompts = load_prompts()
    n = settings.questions_per_report
    nodes = [
        Node("questions", QuestionsStage(prompts["ct_reasoning_questions"], settings), [settings.llm], fan_out=n,
             item_type=Question, item_key=lambda q: f"q{q.index}", stand_in=_question_stand_in),
        Node("thinking", ThinkingStage(prompts["ct_reasoning_thinking"], settings), [settings.thinker],
             consumes="questions", item_type=Thought, stand_in=_thought_stand_in, version="gate-rules:1"),
        Node("gate", GateStage(prompts["ct_reasoning_gate"], settings), [settings.llm], consumes="thinking",
             audit=True, fan_out=gate_pass_rate, describe=_describe),
        Node("refine", RefineStage(prompts["ct_reasoning_refine"], settings), [settings.llm], consumes="gate",
             item_type=Refined, stand_in=_refined_stand_in, fan_out=1.0),
    ]
    if settings.rewrite:
        nodes += [Node("rewrite", RewriteStage(prompts["ct_reasoning_rewrite"], settings), [settings.llm],
                       item_type=Paraphrase, stand_in=lambda r: Paraphrase(report=r, text=r.text)),
                  Node("rewrite_judge", RewriteJudgeStage(prompts["ct_reasoning_rewrite_judge"], settings),
                       [settings.llm], consumes="rewrite", audit=True, describe=_describe)]
    if settings.translate:
        nodes.append(Node("translate", TranslateStage(prompts["ct_reasoning_translate"], settings), [settings.llm],
                          item_type=Translation))
    return Pipeline(nodes, key=lambda report: report.id)


def narrative_pipeline(settings: CtReasoningSettings) -> Pipeline:
    return Pipeline([Node("narrative", NarrativeStage(load_prompts()["ct_reasoning_narrative"], settings),
                          [settings.llm], item_type=Narrative)], key=lambda scan: scan.report.id)


def anatomical_order(items: list[Refined]) -> list[Refined]:
    """Items by the anatomical group of their answer (else question); unplaced ones keep their
    place after the placed ones before them; ties by question index."""
    rank, out = -1, []
    for item in sorted(items, key=lambda r: r.thought.question.index):
        group = anatomy_group(item.thought.answer) or anatomy_group(item.thought.question.question)
        rank = GROUP_RANK[group] if group is not None else max(rank, 0)
        out.append((rank, item.thought.question.index, item))
    return [item for _, _, item in sorted(out, key=lambda x: (x[0], x[1]))]


# --------------------------------------------------------------------------- offline stand-ins (NOT models)

_HEADING = re.compile(r"^(?:(?:findings|impression|chest|abdomen|pelvis)\s*:\s*)+", re.I)
_NEGATIVE = re.compile(r"^(no|there is no|the remaining|remaining|other|mediastinal structures are normal)\b", re.I)


def _report_sentences(report: str) -> list[str]:
    out = []
    for line in report.splitlines():
        for s in sentences(line):
            s = _HEADING.sub("", s).strip()
            if len(s.split()) >= 3:
                out.append(s[0].upper() + s[1:].rstrip(".;") + ".")
    return out


def _main(report: str) -> str:
    found = _report_sentences(report)
    return next((s for s in found if not _NEGATIVE.search(s)), found[0] if found else report.strip())


def offline_questions(request: LLMRequest) -> str:
    """Questions on the report's main finding, one per focus, then one per further sentence."""
    report, high = request.hints["report"], int(request.hints["max"])
    fixed = [("What are the size, density and margins of the main abnormality on this CT?", "lesion"),
             ("Where exactly is the main abnormality located?", "location"),
             ("How certain is the diagnosis of the main abnormality, and what else could it be?", "certainty"),
             ("What follow-up is appropriate for the main abnormality?", "follow_up")]
    others = [s for s in _report_sentences(report) if s != _main(report)]
    extra = [(f"What do the images show here: {s[0].lower()}{s[1:-1]}?", "other") for s in others]
    chosen = (fixed + extra)[:high]
    return json.dumps({"questions": [{"question": q, "focus": f} for q, f in chosen]})


def _window(text: str) -> str:
    group = anatomy_group(text)
    return {"chest": "lung", "musculoskeletal": "bone"}.get(group or "", "soft-tissue")


def offline_thinking(request: LLMRequest) -> str:
    """<think> that cites the report (as raw model thinking does), then the report's sentence."""
    report, focus, question = request.hints["report"], request.hints["focus"], request.hints["question"]
    found = _report_sentences(report)
    main = _main(report)
    options = json.loads(request.hints.get("options") or "[]")
    if options:  # a source's multiple-choice question: the option whose words the report holds most
        said = set(words(report))
        best = max(range(len(options)), key=lambda k: (len(set(words(options[k])) & said), -k))
        answer = f"{LETTERS[best]}) {options[best]}."
    elif focus == "follow_up":
        answer = next((s for s in found if re.search(r"follow|advis|recommend", s, re.I)),
                      "No specific follow-up is recommended for this finding.")
    elif focus == "certainty":
        answer = next((s for s in found if re.search(r"likely|suggest|consistent|solitary|probabl", s, re.I)), main)
    elif focus == "other" and ":" in question:
        tail = question.split(":", 1)[1].strip(" ?").lower()
        answer = next((s for s in found if s.lower().startswith(tail[:20])), main)
    else:
        answer = main
    window = _window(answer)
    think = (f"I scroll through the axial series in the {window} window and concentrate on the region in "
             f"question. The report describes this: {answer[0].lower()}{answer[1:]} Checking neighbouring slices "
             "confirms that the appearance is consistent across the stack.")
    return f"<think>{think}</think>\n{answer}"


def offline_gate(request: LLMRequest) -> str:
    """Supported when most content words of the answer occur in the report."""
    answer = {w for w in words(request.hints["answer"]) if len(w) > 3}
    report = set(words(request.hints["report"]))
    share = len(answer & report) / len(answer) if answer else 0.0
    ok = share >= 0.6
    return json.dumps({"consistent": ok, "reason": f"{share:.0%} of the answer's words are in the report"})


_CITE = re.compile(r"\b(?:the|this) report (?:describes|states|says|mentions) (?:this|that)?\s*:?\s*", re.I)


def offline_refine(request: LLMRequest) -> str:
    """Citations of the report become "On the images,"; a sentence still leaking is dropped."""
    kept = []
    for sentence in sentences(_CITE.sub("on the images, ", request.hints["thinking"])):
        if not leaks(sentence):
            kept.append(sentence[0].upper() + sentence[1:])
    return " ".join(kept) or "The images are reviewed slice by slice."


def offline_narrative(request: LLMRequest) -> str:
    """Findings: the refined thinking of lesion / location / other items, sentences sorted by
    anatomical group; impression and follow-up: the answers of their items."""
    items = json.loads(request.hints["items"])
    found: list[str] = []
    for item in items:
        if item["focus"] in ("lesion", "location", "other"):
            for sentence in sentences(item["thinking"]):
                if sentence not in found:
                    found.append(sentence)
    rank, placed = 0, []
    for i, sentence in enumerate(found):
        group = anatomy_group(sentence)
        rank = GROUP_RANK[group] if group is not None else rank
        placed.append((rank, i, sentence))
    findings = " ".join(s for _, _, s in sorted(placed)) or "The scan is reviewed region by region."
    of = lambda focus: " ".join(dict.fromkeys(i["answer"] for i in items if i["focus"] == focus))  # noqa: E731
    return json.dumps({"findings_rationale": findings,
                       "impression_rationale": of("certainty") or "The findings are described above.",
                       "follow_up_rationale": of("follow_up") or "No specific follow-up follows from these images."})


_SWAPS = (("is seen", "is present"), ("are seen", "are present"), ("unremarkable", "normal in appearance"),
          ("advised", "recommended"), ("The remaining", "The rest of the"))


def offline_rewrite(request: LLMRequest) -> str:
    text = request.hints["report"]
    for old, new in _SWAPS:
        text = text.replace(old, new)
    return text


def offline_rewrite_judge(request: LLMRequest) -> str:
    """Same meaning when the numbers and negations are the same."""
    def facts(text: str) -> tuple[list[str], int]:
        return re.findall(r"\d+(?:\.\d+)?", text), len(re.findall(r"\b(no|not|without)\b", text, re.I))
    same = facts(request.hints["report"]) == facts(request.hints["rewrite"])
    return json.dumps({"consistent": same, "reason": "numbers and negations kept" if same else "facts differ"})


_PLACEHOLDER = {
    "de": "Dies ist ein Platzhalter der Offline-Attrappe und keine Übersetzung des Befundes; ein echtes "
          "Sprachmodell schreibt hier die Übersetzung des ganzen Berichts.",
    "fr": "Ceci est un texte de remplacement du simulateur hors ligne et non une traduction du compte rendu ; "
          "un vrai modèle de langue écrit ici la traduction complète.",
    "es": "Este es un texto de relleno del simulador sin conexión y no una traducción del informe; un modelo de "
          "lenguaje real escribe aquí la traducción completa.",
}


def offline_translate(request: LLMRequest) -> str:
    """A fixed placeholder sentence in de / fr / es (NOT a translation); other languages get the
    report back untranslated, which the language check rejects."""
    return _PLACEHOLDER.get(request.hints["language"], request.hints["report"])
