"""The LLM pipeline: a toy graph (questions with fan-out 3 -> an answer each -> a k-model audit)
run with the offline stand-in and, through the real openai SDK client, against the local
wire-format server: outputs, fan-out, resume after a kill, re-sending only what changed,
agreement figures, adjudication without requests, and the estimate."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from pydantic import BaseModel
from rich.console import Console

from radcorpora.engine.estimate import print_estimate
from radcorpora.llm.audit import (
    QueueEntry,
    Verdict,
    agreement,
    cohen_kappa,
    fleiss_kappa,
    read_decisions,
)
from radcorpora.llm.limits import RunnerLimits
from radcorpora.llm.pipeline import INPUT, Node, Pipeline
from radcorpora.llm.request import LLMRequest, Message, OutputFormat
from radcorpora.llm.runner import CallResult
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.llm.stage import LLMStage
from radcorpora.llm.structured import JsonParser
from radcorpora.schemas.common import Reject
from radcorpora.store import atomic
from radcorpora.testing.fake_llm_server import FakeProviderServer, Fault

KEY = "sk-test-SECRETKEY0123456789"
REPORTS = {
    "r1": "small left pleural effusion with mild cardiomegaly",
    "r2": "solitary pulmonary nodule in the right upper lobe",
    "r3": "no acute findings; normal heart size",
}
INPUTS = [{"id": k, "report": v} for k, v in REPORTS.items()]


# --------------------------------------------------------------------------- the toy "models"


def terms(report: str) -> list[str]:
    """Two words of the report and one that is never in it."""
    words = sorted({w for w in re.findall(r"[a-z]+", report) if len(w) > 4})
    return [*words[:2], "fracture"]


def answer_for(term: str) -> str:
    return f"yes, {term}"  # always yes: wrong for the term that is not in the report


def judge(report: str, answer: str) -> bool:
    return answer.removeprefix("yes, ") in report.split() or answer.removeprefix("yes, ") in re.findall(r"[a-z]+", report)


def field(text: str, name: str) -> str:
    return re.search(rf"^{name}: (.*)$", text, re.MULTILINE).group(1)


# --------------------------------------------------------------------------- the stages


class Question(BaseModel):
    report_id: str
    report: str
    term: str
    question: str


class Answer(BaseModel):
    report_id: str
    report: str
    question: str
    answer: str


class Terms(BaseModel):
    terms: list[str]


def _reject(row_id: str, result: CallResult) -> Reject:
    return Reject(source="toy", row=row_id, reason=f"llm_{result.error.kind}", detail=str(result.error))


class QuestionStage(LLMStage[dict]):
    name = "questions"
    output = Terms
    expected_output_tokens = 40

    def __init__(self, system: str = "QUESTIONS: name three findings to ask about, as JSON {\"terms\": [...]}"):
        self.system = system

    def prompt(self, row: dict) -> LLMRequest:
        return LLMRequest(id=row["id"], stage=self.name, system=self.system, output=OutputFormat(kind="json"),
                          messages=(Message.user(f"Report: {row['report']}"),), hints={"report": row["report"]})

    def parser(self) -> JsonParser:
        return JsonParser(Terms)

    def parse(self, row: dict, result: CallResult) -> list[Question] | Reject:
        if not result.ok:
            return _reject(row["id"], result)
        return [Question(report_id=row["id"], report=row["report"], term=t, question=f"Is there {t}?")
                for t in result.parsed.terms]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return json.dumps({"terms": terms(request.hints["report"])})


class AnswerStage(LLMStage[Question]):
    name = "answers"
    expected_output_tokens = 10

    def __init__(self, system: str = "ANSWER the question from the report."):
        self.system = system

    def prompt(self, row: Question) -> LLMRequest:
        return LLMRequest(id=row.report_id, stage=self.name, system=self.system, hints={"term": row.term},
                          messages=(Message.user(f"Report: {row.report}\nQuestion: {row.question}"),))

    def parse(self, row: Question, result: CallResult) -> list[Answer] | Reject:
        if not result.ok:
            return _reject(row.report_id, result)
        return [Answer(report_id=row.report_id, report=row.report, question=row.question,
                       answer=result.response.content.strip())]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return answer_for(request.hints["term"])


class AuditStage(LLMStage[Answer]):
    name = "audit"
    output = Verdict
    expected_output_tokens = 30

    def __init__(self, system: str = "AUDIT: is the answer supported by the report? JSON {consistent, reason}"):
        self.system = system

    def prompt(self, row: Answer) -> LLMRequest:
        return LLMRequest(id=row.report_id, stage=self.name, system=self.system, output=OutputFormat(kind="json"),
                          messages=(Message.user(f"Report: {row.report}\nQuestion: {row.question}\n"
                                                 f"Answer: {row.answer}"),),
                          hints={"report": row.report, "answer": row.answer})

    def parser(self) -> JsonParser:
        return JsonParser(Verdict)

    def parse(self, row: Answer, result: CallResult) -> list[Verdict] | Reject:
        if not result.ok:
            return _reject(row.report_id, result)
        return [result.parsed]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        ok = judge(request.hints["report"], request.hints["answer"])
        return json.dumps({"consistent": ok, "reason": "term in report" if ok else "term not in report"})


def pipeline(auditors: list[str], generator: str = "offline", audit: AuditStage | None = None,
             questions: QuestionStage | None = None) -> Pipeline:
    return Pipeline([
        Node("questions", questions or QuestionStage(), [generator], fan_out=3, item_type=Question,
             stand_in=lambda row: Question(report_id=row["id"], report=row["report"], term="finding",
                                           question="Is there a finding?")),
        Node("answers", AnswerStage(), [generator], consumes="questions", item_type=Answer,
             stand_in=lambda q: Answer(report_id=q.report_id, report=q.report, question=q.question, answer="yes")),
        Node("audit", audit or AuditStage(), auditors, consumes="answers", audit=True),
    ], key=lambda row: row["id"])


def offline_session(tmp_path: Path, cache: str = "cache.sqlite") -> LLMSession:
    return LLMSession(LLMSettings(cache_path=str(tmp_path / cache)), offline=pipeline(["offline"]).offline_responders())


def expected_items() -> dict[str, tuple[str, bool]]:
    """item id -> (answer, truly consistent), worked out from the toy rules, not by the pipeline."""
    out = {}
    for rid, report in REPORTS.items():
        for i, term in enumerate(terms(report)):
            out[f"{rid}/{i}"] = (answer_for(term), term in re.findall(r"[a-z]+", report))
    return out


# --------------------------------------------------------------------------- offline


def test_offline_run_fans_out_answers_and_audits(tmp_path):
    session = offline_session(tmp_path)
    auditors = ["offline:judge-a", "offline:judge-b"]
    result = pipeline(auditors).run(INPUTS, session, tmp_path / "build")
    expected = expected_items()
    assert list(result["questions"].outputs) == list(expected)  # r1/0, r1/1, r1/2, r2/0, ...
    assert {k: a.answer for k, a in result["answers"].outputs.items()} == {k: v[0] for k, v in expected.items()}
    assert result["answers"].parents == {k: k for k in expected}
    assert set(result["audit"].outputs) == {k for k, (_, ok) in expected.items() if ok}
    assert {k: r.reason for k, r in result["audit"].rejects.items()} == {
        k: "verifier_inconsistent" for k, (_, ok) in expected.items() if not ok}
    assert result.queue == []
    f = result.figures()["stages"]
    assert (f["questions"]["items"], f["questions"]["requests"], f["questions"]["sent"], f["questions"]["outputs"]) == (3, 3, 3, 9)
    assert f["questions"]["fan_out"] == 3.0 and f["answers"]["requests"] == 9 and f["audit"]["requests"] == 18
    assert f["audit"]["parsed"] == 18 and f["audit"]["rejected"] == 0 and f["audit"]["outputs"] == 6
    assert f["answers"]["paid"]["replies"] == 9 and f["answers"]["paid"]["cost_usd"] == 0.0
    assert f["answers"]["held"]["output_tokens"] == sum(len(a) // 4 for a, _ in expected.values())
    # two auditors agree everywhere: 100 %, and kappa 1 (both categories occur)
    audit = result.figures()["audits"]["audit"]
    assert audit["outcomes"] == {"fail": 3, "pass": 6} and audit["percent_agreement"] == 100.0
    assert audit["cohen_kappa"] == 1.0 and audit["settled"] == {"passed": 6, "verifier_inconsistent": 3}

    # a rerun takes every stored line: nothing is asked, not even the (now empty) answer cache
    before = (tmp_path / "build" / "audit.jsonl").read_bytes()
    again = pipeline(auditors).run(INPUTS, offline_session(tmp_path, "empty.sqlite"), tmp_path / "build")
    g = again.figures()["stages"]
    assert [g[n]["requests"] for n in g] == [0, 0, 0] and [g[n]["reused"] for n in g] == [3, 9, 18]
    assert again["audit"].outputs == result["audit"].outputs
    assert (tmp_path / "build" / "audit.jsonl").read_bytes() == before
    assert g["audit"]["held"] == f["audit"]["held"]


def test_results_do_not_depend_on_order_or_chunking(tmp_path):
    a = pipeline(["offline:a", "offline:b", "offline:c"]).run(INPUTS, offline_session(tmp_path), tmp_path / "one")
    shuffled = INPUTS[:]
    random.Random(7).shuffle(shuffled)
    b = pipeline(["offline:c", "offline:a", "offline:b"]).run(shuffled, offline_session(tmp_path, "c2.sqlite"),
                                                              tmp_path / "two", chunk_size=1)
    for name in ("questions", "answers", "audit"):
        assert (tmp_path / "one" / f"{name}.jsonl").read_bytes() == (tmp_path / "two" / f"{name}.jsonl").read_bytes()
        assert dict(sorted(a[name].outputs.items())) == dict(sorted(b[name].outputs.items()))
    assert a["audit"].agreement == b["audit"].agreement


def test_a_killed_run_resumes_mid_node(tmp_path):
    """Answers are stored after every chunk: a run killed in the answers node leaves the chunks
    before it stored (reused) and the answers of the killed chunk in the cache (not sent again)."""

    class Killed(Exception):
        pass

    class Fragile(AnswerStage):
        armed = True

        def parse(self, row, result):
            if self.armed and row.report_id == "r2" and row.question.endswith("pulmonary?"):
                raise Killed
            return super().parse(row, result)

    stage = Fragile()
    graph = Pipeline([Node("questions", QuestionStage(), ["offline"], fan_out=3, item_type=Question),
                      Node("answers", stage, ["offline"], consumes="questions", item_type=Answer)],
                     key=lambda row: row["id"])
    session = offline_session(tmp_path)
    with pytest.raises(Killed):
        graph.run(INPUTS, session, tmp_path / "build", chunk_size=2)
    stored = [json.loads(x)["id"] for x in (tmp_path / "build" / "answers.jsonl").read_text().splitlines()]
    assert stored == ["r1/0", "r1/1", "r1/2", "r2/0"]  # two chunks of two; the third (r2/1, r2/2) was killed
    stage.armed = False
    session = offline_session(tmp_path)
    result = graph.run(INPUTS, session, tmp_path / "build", chunk_size=2)
    f = result.figures()["stages"]
    assert f["questions"]["reused"] == 3 and f["questions"]["requests"] == 0
    assert (f["answers"]["reused"], f["answers"]["requests"], f["answers"]["cached"], f["answers"]["sent"]) == (4, 5, 2, 3)
    assert len(result["answers"].outputs) == 9


def test_a_changed_input_re_asks_only_what_was_made_from_it(tmp_path):
    graph = pipeline(["offline:a", "offline:b"])
    graph.run(INPUTS, offline_session(tmp_path), tmp_path / "build")
    changed = [dict(row, report=row["report"] + " and a rib fracture") if row["id"] == "r3" else row for row in INPUTS]
    result = graph.run(changed, offline_session(tmp_path), tmp_path / "build")
    f = result.figures()["stages"]
    assert (f["questions"]["requests"], f["questions"]["reused"]) == (1, 2)
    assert (f["answers"]["requests"], f["answers"]["reused"]) == (3, 6)
    assert (f["audit"]["requests"], f["audit"]["reused"]) == (6, 12)
    assert "r3/2" in result["audit"].outputs  # the fracture is in the report now


def test_graph_is_checked():
    q = QuestionStage()
    with pytest.raises(ValueError, match="not an earlier node"):
        Pipeline([Node("a", AnswerStage(), ["offline"], consumes="b"), Node("b", q, ["offline"])], key=str)
    with pytest.raises(ValueError, match="two nodes"):
        Pipeline([Node("a", q, ["offline"]), Node("a", q, ["offline"])], key=str)
    with pytest.raises(ValueError, match="only for an audit"):
        Node("a", q, ["offline:x", "offline:y"])
    with pytest.raises(ValueError, match="names a model twice"):
        Node("a", q, ["offline:x", "offline:x"], audit=True)
    with pytest.raises(ValueError, match="use letters"):
        Node(INPUT, q, ["offline"])
    class Other(QuestionStage):
        pass

    with pytest.raises(ValueError, match="two different stages"):
        Pipeline([Node("a", q, ["offline"]), Node("b", Other(), ["offline"], consumes="a")], key=str)
    with pytest.raises(ValueError, match="no such node"):
        Pipeline([Node("a", q, ["offline"])], key=str).run([], None, "/nonexistent-unused", until="b")
    with pytest.raises(ValueError, match="two inputs"):
        Pipeline([Node("a", q, ["offline"])], key=lambda r: "same").run(INPUTS, None, "/nonexistent-unused")


# --------------------------------------------------------------------------- agreement


def hand_fleiss(ratings: list[list[bool]]) -> float:
    """Fleiss (1971), written out: mean per-item agreement against chance from category shares."""
    n, k = len(ratings), len(ratings[0])
    per_item = []
    shares = [0.0, 0.0]
    for row in ratings:
        counts = [row.count(False), row.count(True)]
        per_item.append((sum(c * c for c in counts) - k) / (k * (k - 1)))
        shares = [s + c / (n * k) for s, c in zip(shares, counts)]
    p_bar, p_e = sum(per_item) / n, sum(s * s for s in shares)
    return (p_bar - p_e) / (1 - p_e)


def test_agreement_figures_match_hand_computation():
    yes, no = Verdict(consistent=True), Verdict(consistent=False)
    table = {"a": (yes, yes, yes), "b": (no, no, no), "c": (yes, no, yes), "d": (yes, yes, no), "e": (yes, yes, yes),
             "f": (no, yes, no)}
    verdicts = {item: dict(zip(("m1", "m2", "m3"), row)) for item, row in table.items()}
    report = agreement(verdicts)
    ratings = [[v.consistent for v in row] for row in table.values()]
    assert report["outcomes"] == {"disagree": 3, "fail": 1, "pass": 2}
    assert report["percent_agreement"] == 50.0
    assert report["fleiss_kappa"] == pytest.approx(hand_fleiss(ratings), abs=1e-4)
    assert "cohen_kappa" not in report
    assert fleiss_kappa(ratings) == pytest.approx(hand_fleiss(ratings))
    # two raters: po = 4/6; p1(yes) = 4/6, p2(yes) = 4/6 -> pe = 16/36 + 4/36 = 20/36 -> (24/36 - 20/36) / (16/36)
    two = {item: {"m1": row[0], "m2": row[1]} for item, row in table.items()}
    assert agreement(two)["cohen_kappa"] == pytest.approx(0.25)
    assert agreement(two)["percent_agreement"] == pytest.approx(66.67)
    # every rating in one category: kappa is undefined, not 1 or 0
    assert cohen_kappa([True, True], [True, True]) is None and fleiss_kappa([[True] * 3] * 4) is None


# --------------------------------------------------------------------------- the real SDK client


GENERATOR = "openai:gpt-4o"
JUDGES = ["openai:gpt-4o-mini", "openai:gpt-4.1", "openai:gpt-4.1-mini"]


def responder(model, system, messages):
    """The toy rules over the wire; the third judge disagrees on every item of the nodule report."""
    text = messages[-1]["content"]
    text = text if isinstance(text, str) else " ".join(p.get("text", "") for p in text)
    if system.startswith("QUESTIONS"):
        return json.dumps({"terms": terms(field(text, "Report"))}), None
    if system.startswith("ANSWER"):
        return answer_for(field(text, "Question").removeprefix("Is there ").removesuffix("?")), None
    ok = judge(field(text, "Report"), field(text, "Answer"))
    if model == "gpt-4.1-mini" and "nodule" in text:
        ok = not ok
    return json.dumps({"consistent": ok, "reason": "checked"}), None


def calls(server: FakeProviderServer, marker: str) -> int:
    return sum(b["messages"][0]["content"].startswith(marker) for b in server.request_bodies)


@pytest.fixture
def server(monkeypatch):
    with FakeProviderServer(responder) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        yield srv


def settings(tmp_path: Path, cache: str = "cache.sqlite") -> LLMSettings:
    return LLMSettings(cache_path=str(tmp_path / cache),
                       limits=RunnerLimits(concurrency=4, backoff_base_s=0.01, backoff_max_s=0.02))


def test_server_resume_changed_audit_and_adjudication(server, tmp_path):
    build = tmp_path / "build"
    graph = pipeline(JUDGES, GENERATOR)

    # a run stopped after the first node ...
    first = graph.run(INPUTS, LLMSession(settings(tmp_path)), build, until="questions")
    assert list(first.nodes) == ["questions"] and calls(server, "QUESTIONS") == 3 and server.calls == 3
    billed = [b for b in server.billed]
    paid = first["questions"].figures["paid"]
    assert paid["input_tokens"] == sum(b.input_tokens for b in billed)
    usd = sum(b.input_tokens * 2.5 + b.output_tokens * 10.0 for b in billed) / 1e6  # gpt-4o list prices
    assert paid["cost_usd"] == pytest.approx(usd, abs=2e-6)  # the meter reports USD to 6 decimals

    # ... resumes without asking node 1 again, even with an empty answer cache
    result = graph.run(INPUTS, LLMSession(settings(tmp_path, "fresh.sqlite")), build)
    assert calls(server, "QUESTIONS") == 3 and calls(server, "ANSWER") == 9 and calls(server, "AUDIT") == 27
    expected = expected_items()
    disagreed = {k for k in expected if k.startswith("r2/")}
    assert {e.id for e in result.queue} == disagreed
    assert set(result["audit"].outputs) == {k for k, (_, ok) in expected.items() if ok and k not in disagreed}
    entry = next(e for e in result.queue if e.id == "r2/0")
    assert set(entry.verdicts) == {"openai:" + j.split(":")[1] for j in JUDGES} and entry.item["stage"] == "audit"
    # agreement on the constructed table: 6 unanimous of 9; Fleiss' kappa written out by hand
    report = result["audit"].agreement
    ratings = [[result["audit"].verdicts[k][m].consistent for m in sorted(result["audit"].verdicts[k])]
               for k in sorted(expected)]
    assert report["percent_agreement"] == pytest.approx(66.67) and report["outcomes"] == {"disagree": 3, "fail": 2, "pass": 4}
    assert report["fleiss_kappa"] == pytest.approx(hand_fleiss(ratings), abs=1e-4)

    # a changed audit prompt re-sends the audit only
    sent = server.calls
    changed = pipeline(JUDGES, GENERATOR, audit=AuditStage("AUDIT v2: judge the answer against the report."))
    again = changed.run(INPUTS, LLMSession(settings(tmp_path)), build)
    assert server.calls - sent == 27 and calls(server, "AUDIT v2") == 27
    f = again.figures()["stages"]
    assert (f["questions"]["reused"], f["answers"]["reused"], f["audit"]["reused"]) == (3, 9, 0)
    assert f["audit"]["sent"] == 27 and f["audit"]["cached"] == 0

    # a person's decisions settle the queue with no request at all
    queue = tmp_path / "adjudication_queue.jsonl"
    decided = {"r2/0": "accept", "r2/1": "reject"}
    atomic.write_jsonl(queue, [QueueEntry(**{**e.model_dump(), "decision": decided.get(e.id)}).model_dump(mode="json")
                               for e in again.queue])
    decisions = read_decisions(queue, {e.id for e in again.queue})
    sent = server.calls
    settled = changed.run(INPUTS, LLMSession(settings(tmp_path, "another.sqlite")), build, decisions)
    assert server.calls == sent
    assert settled["audit"].settled["r2/0"] == "adjudicated" and "r2/0" in settled["audit"].outputs
    assert settled["audit"].rejects["r2/1"].reason == "adjudicator_rejected"
    assert [e.id for e in settled.queue] == ["r2/2"]
    assert settled.figures()["adjudication_pending"] == 1


def test_a_failed_request_is_queued_then_retried_by_the_next_run(server, tmp_path):
    build = tmp_path / "build"
    graph = pipeline(JUDGES[:2], GENERATOR)
    graph.run(INPUTS, LLMSession(settings(tmp_path)), build, until="answers")
    server.faults.append(Fault(status=400))  # one audit request refused: not retryable
    sent = server.calls
    result = graph.run(INPUTS, LLMSession(settings(tmp_path)), build)
    assert server.calls - sent == 18 and result["audit"].figures["failed"] == 1
    [entry] = result.queue  # the two judges agree everywhere else
    assert len(entry.verdicts) == 1 and len(entry.item["missing_verdicts"]) == 1
    assert "llm_client" in next(iter(entry.item["why_missing"].values()))
    sent = server.calls
    again = graph.run(INPUTS, LLMSession(settings(tmp_path)), build)
    assert server.calls - sent == 1 and again.queue == [] and again["audit"].figures["reused"] == 17
    assert len(again["audit"].outputs) == sum(ok for _, ok in expected_items().values())


# --------------------------------------------------------------------------- estimate


def test_estimate_counts_fan_out_to_send_and_cached(tmp_path):
    graph = pipeline(["offline:a", "offline:b"])
    llm = LLMSettings(cache_path=str(tmp_path / "cache.sqlite"))
    build = tmp_path / "build"

    def rows(result):
        return {(s["stage"], s["llm"]): s for s in result["stages"]}

    before = rows(graph.estimate(INPUTS, llm, build))
    assert before[("questions", "offline:stand-in")]["to_send"] == 3
    # three questions expected per report: sized from one stand-in each, weighted by the fan-out
    assert before[("answers", "offline:stand-in")]["requests"] == 9
    assert before[("answers", "offline:stand-in")]["expected_items"] == 9.0
    assert before[("audit", "offline:a")]["to_send"] == 9 and before[("audit", "offline:b")]["to_send"] == 9
    one = before[("questions", "offline:stand-in")]["estimated_output_tokens"]
    assert one == 3 * 40 and before[("answers", "offline:stand-in")]["estimated_output_tokens"] == 9 * 10

    # after the first node ran: its lines are reused, the answers are exact (real questions)
    graph.run(INPUTS, offline_session(tmp_path), build, until="questions")
    after = rows(graph.estimate(INPUTS, llm, build))
    q = after[("questions", "offline:stand-in")]
    assert (q["requests"], q["already_cached"], q["to_send"], q["reused_from_build"]) == (3, 3, 0, 3)
    assert after[("answers", "offline:stand-in")]["to_send"] == 9

    # a new build folder with the answers in the cache: everything cached, nothing to send
    graph.run(INPUTS, offline_session(tmp_path), build)
    warm = graph.estimate(INPUTS, llm, tmp_path / "elsewhere")
    # cached answers are parsed, so every later node is sized from the real items, all cached
    assert [s["requests"] for s in warm["stages"]] == [3, 9, 9, 9]
    assert all(s["to_send"] == 0 and s["already_cached"] == s["requests"] for s in warm["stages"])
    assert all(s["reused_from_build"] == 0 for s in warm["stages"]) and warm["total"]["to_send"] == 0
    print_estimate(warm, Console(width=80, record=True))  # the CLI's table reads these rows


def test_offline_responders_cover_every_stage():
    responders = pipeline(["offline:a", "offline:b"]).offline_responders()
    assert set(responders) == {"questions", "answers", "audit"}
    assert Counter(json.loads(responders["questions"](QuestionStage().prompt(INPUTS[0])))["terms"]) == Counter(
        terms(REPORTS["r1"]))


def test_decision_files_say_what_is_wrong_with_a_line(tmp_path):
    """Every line of a decisions file is a queue entry (JSON) or `id,decision`; an undecided line
    must still name a queued item; a bare word was skipped as "undecided" before."""
    from radcorpora.llm.audit import AdjudicationError

    queued = {"r1/0", "r1/1"}
    path = tmp_path / "d.csv"
    path.write_text("id,decision\nr1/0,accept\nr1/1,\n")
    assert read_decisions(path, queued) == {"r1/0": "accept"}
    for text, message in (("r1/0,accept\nx\n", "line 2: neither a queue entry"),
                          ("r9/9,\n", "line 1: 'r9/9' is not in this build's adjudication queue"),
                          ('{"id": "r9/9", "decision": null}\n', "'r9/9' is not in this build's adjudication queue"),
                          ("r1/0,maybe\n", "use accept or reject")):
        path.write_text(text)
        with pytest.raises(AdjudicationError, match=message):
            read_decisions(path, queued)
    path.write_bytes(b"r1/0,accept\n\xa0\xff\n")
    with pytest.raises(AdjudicationError, match="d.csv: not UTF-8 text"):
        read_decisions(path, queued)
