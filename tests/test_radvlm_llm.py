"""radvlm's LLM stages (prior-study removal, conversations, verification) end to end through the
real OpenAI and Anthropic SDK clients against the local wire-format server: replies that are not
JSON, wrong roles, too few rounds, leaked prior-study language and boxes not among the given ones
get one repair, then land in the ledger and the rejects; a rerun sends nothing; a killed build
resumes to the same bytes; credentialed text is refused to an unapproved provider; the batch path;
the estimate; the rule-based mode. The stages run as one pipeline stored under build/llm/: a build
killed after prior removal resumes without asking it again, a changed verify prompt re-sends only
verification, the estimate is read from the graph (stored, cached, to send), and a person's
adjudication is applied without a request."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from test_radvlm_build import _image, _labels
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.corpora.radvlm import build as rv
from radcorpora.corpora.radvlm import llm as rv_llm
from radcorpora.corpora.radvlm import settings as rv_settings
from radcorpora.corpora.radvlm import sources as radvlm_sources
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.llm.verify import QUEUE_FILE
from radcorpora.ops.boxes import boxes_text
from radcorpora.ops.prior_study import prior_study_phrases
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.cxr import GroundedFinding, StudyReport
from radcorpora.testing.fake_llm_server import FakeProviderServer

KEY = "sk-test-not-a-real-key"
FINDING = (0.55, 0.6, 0.75, 0.8)
REPORTS = {
    0: "Lungs are clear. Heart size is normal.",
    1: "Right lower lobe opacity. Compared with the prior study, the effusion is unchanged.",
    2: "Unchanged appearance since the prior radiograph.",  # nothing current
    3: "Right lower lobe opacity. No pneumothorax.",
    4: "Heart size is normal. The nodule is again seen.",
    5: "Right lower lobe opacity. A small effusion is new since the prior examination.",
    6: "No acute cardiopulmonary process.",
    7: "Patchy right lower lobe opacity.",
}


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """Hand-made MIMIC-CXR (reports with prior-study language) and MS-CXR scans."""
    images = [_image(tmp_path, "mimic-cxr", f"m{i}", f"1000000{i}", "test" if i in (0, 7) else "train",
                     boxes=(FINDING,) if i % 2 else ()) for i in range(8)]
    reports = {img.study_id: StudyReport(source="mimic-cxr", subject_id=img.subject_id, study_id=img.study_id,
                                         findings=REPORTS[i], file="r") for i, img in enumerate(images)}
    labels = {img.study_id: _labels(Lung_Opacity="positive" if i % 2 else "not_mentioned")
              for i, img in enumerate(images)}
    mimic = SimpleNamespace(images=images, reports=reports, labels=labels, rejects=[], counts=Counter(images=8),
                            root=tmp_path / "mimic-cxr")
    grounded = [GroundedFinding(image=images[i], label="Opacity", phrase="right lower lobe opacity",
                                boxes=(Box.from_normalised(*FINDING),)) for i in (1, 3, 7)]
    ms_cxr = SimpleNamespace(images=[images[i] for i in (1, 3, 7)], findings=grounded, rejects=[], counts=Counter(),
                             root=tmp_path / "ms-cxr")

    def read_sources(given, config, log):
        read = radvlm_sources.SourcesRead()
        for name, scan in (("mimic-cxr", mimic), ("ms-cxr", ms_cxr)):
            radvlm_sources._take(read, name, scan)
        return read

    monkeypatch.setattr(radvlm_sources, "read_sources", read_sources)
    return {"mimic_cxr": tmp_path / "mimic-cxr", "ms_cxr": tmp_path / "ms-cxr"}


def _text(content) -> str:
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


def _field(prompt: str, name: str) -> str:
    found = re.search(rf"- {name}: (.*)", prompt)
    return found.group(1).strip() if found else ""


def _turns(pairs) -> str:
    return json.dumps([t for h, g in pairs for t in ({"from": "human", "value": h}, {"from": "gpt", "value": g})])


GOOD = [("What view is this?", "It looks like a frontal chest radiograph."),
        ("Is there an opacity?", "There seems to be an opacity in the right lower lobe."),
        ("Is the heart enlarged?", "The heart size appears normal."),
        ("Any pneumothorax?", "I do not see a pneumothorax."),
        ("What would you suggest?", "A radiologist should confirm these impressions.")]


def responder(model, system, messages):
    """A scripted model: what each image's request gets, by the facts in its prompt; a repair
    request (the last message says the reply could not be used) gets a good reply unless the
    image is scripted to fail twice."""
    prompt = _text(messages[0]["content"])
    repair = len(messages) > 1
    if "edit chest X-ray reports" in (system or ""):
        report = prompt.split("Report:\n", 1)[1].split("\n\nRewrite", 1)[0].strip()
        if "again seen" in report and not repair:  # first reply leaks, the repair is clean
            return json.dumps({"report": report, "nothing_current": False}), None
        kept = " ".join(s for s in re.split(r"(?<=\.)\s+", report) if not prior_study_phrases(s))
        return json.dumps({"report": kept, "nothing_current": not kept}), None
    if "check training conversations" in (system or ""):
        return json.dumps({"consistent": True, "reason": "supported"}), None
    report = _field(prompt, "Report")
    boxes = _field(prompt, "Findings with their boxes \\(normalised \\[x1, y1, x2, y2\\]\\)")
    if "right lower lobe opacity:" in boxes:  # grounded
        given = boxes.split(": ", 1)[1]
        if report == "Patchy right lower lobe opacity.":  # m7 (grounded test): a box not given, twice
            given = "[0.1, 0.1, 0.2, 0.2]"
        return _turns(GOOD[:4] + [("Where is the opacity?", f"It appears to be at {given}.")]), None
    if report == "Heart size is normal.":  # m4: not JSON, then fine after the repair
        return ("Sure! Here is the conversation." if not repair else _turns(GOOD)), None
    if report == "Right lower lobe opacity. No pneumothorax.":  # m3: wrong roles, twice
        bad = json.loads(_turns(GOOD))
        bad[0]["from"] = "gpt"
        return json.dumps(bad), None
    if report == "Lungs are clear. Heart size is normal.":  # m0 (test): 3 rounds, twice
        return _turns(GOOD[:3]), None
    if report == "No acute cardiopulmonary process.":  # m6: prior-study language, twice
        return _turns(GOOD[:4] + [("Anything else?", "The heart is unchanged from before.")]), None
    return _turns(GOOD), None


def _build_args(sources, out, cache, *extra):
    return ["build", "radvlm", "--mimic-cxr", str(sources["mimic_cxr"]), "--ms-cxr", str(sources["ms_cxr"]),
            "--out", str(out), "--tasks", "report_generation", "--llm", "openai:gpt-test", "--conversations", "8",
            "--cache", str(cache), "--concurrency", "4", "--workers", "1", *extra]


def _rows(out: Path, config: str) -> list[dict]:
    return [r for shard in sorted((out / "data" / config).glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]


def test_both_stages_end_to_end_through_the_openai_sdk(sources, tmp_path, monkeypatch):
    with FakeProviderServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        out, cache = tmp_path / "out", tmp_path / "cache.sqlite"
        runner = CliRunner()
        refused = runner.invoke(app, _build_args(sources, out, cache))
        assert refused.exit_code == 2 and "credentialed" in refused.output and "--approve-credentialed openai" \
            in refused.output
        assert server.calls == 0, "nothing may be sent before the approval"

        args = _build_args(sources, out, cache, "--approve-credentialed", "openai", "--verify", "openai:judge")
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "build/manifest.json").read_text())
        rejects = manifest["rejects"]
        # m2's report is all about an earlier study: its report row goes, counted; its conversation
        # is written from the labels, view and sex alone
        assert rejects["prior_removal_nothing_current"] == 1
        assert rejects["conversation_llm_parse"] == 3  # m3 wrong roles, m0 three rounds, m6 prior-study language
        assert rejects["conversation_grounded_llm_parse"] == 1  # m7: a box that was not given
        ledger = [json.loads(line) for line in (out / "build/llm_failures.jsonl").read_text().splitlines()]
        assert len(ledger) == 4 and {e["kind"] for e in ledger} == {"parse"}
        failures = " ".join(e["message"] for e in ledger)
        assert "human" in failures and "round" in failures and "unchanged" in failures

        reports = _rows(out, "report_generation")
        assert sorted(r["id"].rsplit("/", 1)[1] for r in reports) == ["m0", "m1", "m3", "m4", "m5", "m6", "m7"]
        for row in reports:  # the detector finds nothing in any kept report, the leak of m4 was repaired
            assert not prior_study_phrases(row["report"]), row["report"]
            assert row["instances"][0]["conversations"][1]["value"] == row["report"]
            assert "radvlm/prior-removal/v1" in row["lineage"]["prompt_ids"]
        assert next(r for r in reports if r["id"].endswith("/m4"))["report"] == "Heart size is normal."

        standard = _rows(out, "conversation")
        assert sorted(r["id"].rsplit("/", 1)[1] for r in standard) == ["m1", "m2", "m4", "m5", "m7"]
        grounded = _rows(out, "conversation_grounded")
        assert sorted(r["id"].rsplit("/", 1)[1] for r in grounded) == ["m1", "m3"]
        for row in standard + grounded:
            turns = row["instances"][0]["conversations"]
            assert turns[0]["value"].startswith("<image>\n") and 10 <= len(turns) <= 20
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert row["lineage"]["models"] == ["openai:gpt-test", "openai:judge"]
        for row in grounded:
            given = boxes_text([Box.model_validate(b) for b in row["instances"][0]["boxes"]])
            assert given in turns_text(row) and row["instances"][0]["replication"] == 4
        assert manifest["splits"]["conversation"] == {"train": 4, "test": 1}
        assert manifest["llm"]["verification"]["outcomes"] == {"pass": 7}
        asked = [b for b in server.request_bodies if "write training conversations" in json.dumps(b)]
        assert asked and all(b["response_format"]["type"] == "json_schema" for b in asked)  # structured output
        card = (out / "README.md").read_text()
        assert "## Conversations" in card and "openai:gpt-test" in card and KEY not in card

        calls = server.calls
        again = runner.invoke(app, args)
        assert again.exit_code == 0 and server.calls == calls, "a rerun sends nothing"


def turns_text(row: dict) -> str:
    return " ".join(t["value"] for t in row["instances"][0]["conversations"])


def test_killed_build_resumes_to_the_same_bytes_without_sending(sources, tmp_path, monkeypatch):
    with FakeProviderServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        runner = CliRunner()
        cache = tmp_path / "cache.sqlite"
        whole = tmp_path / "whole"
        args = _build_args(sources, whole, cache, "--approve-credentialed", "openai")
        assert runner.invoke(app, args).exit_code == 0
        calls = server.calls

        real = rv.build_chunk
        done = []

        def dies_on_the_second_chunk(spec, out):
            if len(done) == 1:
                raise KeyboardInterrupt("killed")
            done.append(spec.chunk_id)
            return real(spec, out)

        killed = tmp_path / "killed"
        monkeypatch.setattr(rv, "build_chunk", dies_on_the_second_chunk)
        with pytest.raises(KeyboardInterrupt):
            from radcorpora.llm.session import LLMSettings
            from radcorpora.registry import build

            config = rv_settings.RadVLMConfig(tasks=["report_generation"], llm="openai:gpt-test", prior_removal="llm",
                                     conversations=8)
            build("radvlm", sources, config, killed, llm_settings=LLMSettings(cache_path=str(cache),
                                                                               approve_credentialed=["openai"]))
        assert not (killed / "build/manifest.json").exists() and done
        monkeypatch.setattr(rv, "build_chunk", real)
        resumed = runner.invoke(app, _build_args(sources, killed, cache, "--approve-credentialed", "openai"))
        assert resumed.exit_code == 0, resumed.output
        assert server.calls == calls, "the answers come from the cache"
        for shard in sorted((whole / "data").rglob("*.parquet")):
            assert shard.read_bytes() == (killed / shard.relative_to(whole)).read_bytes()


def test_conversations_through_the_anthropic_batch_api(sources, tmp_path, monkeypatch):
    with FakeProviderServer(responder) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        out = tmp_path / "out"
        args = ["build", "radvlm", "--mimic-cxr", str(sources["mimic_cxr"]), "--ms-cxr", str(sources["ms_cxr"]),
                "--out", str(out), "--tasks", "report_generation", "--llm", "anthropic:claude-test",
                "--prior-removal", "rules", "--conversations", "8", "--batch", "--approve-credentialed", "anthropic",
                "--cache", str(tmp_path / "c.sqlite"), "--workers", "1"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert server.batches, "the conversation stage went through the batch API"
        manifest = json.loads((out / "build/manifest.json").read_text())
        assert manifest["llm"]["batch"] is True and manifest["llm"]["prior_removal"] == "rules"
        assert set(manifest["llm"]["stages"]) == {"conversation"}
        assert manifest["splits"]["conversation_grounded"]["train"] == 2
        # rules mode: the prior-study sentences are dropped whole, nothing is sent for them
        assert not any("edit chest X-ray reports" in json.dumps(b) for b in server.request_bodies)
        reports = {r["id"].rsplit("/", 1)[1]: r["report"] for r in _rows(out, "report_generation")}
        assert reports["m1"] == "Right lower lobe opacity." and "m2" not in reports


def test_estimate_names_both_stages_and_sends_nothing(sources, tmp_path, monkeypatch):
    with FakeProviderServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        result = CliRunner().invoke(app, ["estimate", "radvlm", "--mimic-cxr", str(sources["mimic_cxr"]),
                                          "--ms-cxr", str(sources["ms_cxr"]), "--tasks", "report_generation",
                                          "--llm", "openai:gpt-4o", "--conversations", "8", "--verify",
                                          "openai:gpt-4o-mini", "--json", "--cache", str(tmp_path / "c.sqlite")])
        assert result.exit_code == 0, result.output
        assert server.calls == 0
    estimate = json.loads(result.output)
    stages = {(s["stage"], s["llm"]): s for s in estimate["stages"]}
    assert stages[("prior_removal", "openai:gpt-4o")]["requests"] == 8  # one per distinct report
    assert stages[("conversation", "openai:gpt-4o")]["requests"] == 8 + 3  # standard + grounded images
    assert stages[("conversation_verify", "openai:gpt-4o-mini")]["requests"] == 11
    assert all(s["cost_usd_online"] and s["cost_usd_batch"] < s["cost_usd_online"] for s in estimate["stages"])


def test_llm_options_that_do_not_fit_are_clear_errors(sources, tmp_path):
    runner = CliRunner()
    base = ["build", "radvlm", "--mimic-cxr", str(sources["mimic_cxr"]), "--out", str(tmp_path / "o")]
    for extra, message in ((["--conversations", "5"], "--conversations needs --llm"),
                           (["--prior-removal", "llm"], "--prior-removal llm needs --llm"),
                           (["--prior-removal", "maybe"], "--prior-removal: Input should be 'llm', 'rules' or 'off'")):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output


# --------------------------------------------------------------------------- the pipeline


def sent_by_stage(server: FakeProviderServer) -> Counter:
    """Requests that reached the server, by the stage whose prompt they carry (repairs included)."""
    found: Counter = Counter()
    for body in server.request_bodies:
        system = json.dumps(body["messages"][0])
        stage = ("prior_removal" if "edit chest X-ray reports" in system else
                 "conversation_verify" if "check training conversations" in system else
                 "conversation" if "write training conversations" in system else "other")
        found[stage] += 1
    return found


def _config(**extra) -> rv_settings.RadVLMConfig:
    """What `_build_args` asks for (the same fingerprint)."""
    return rv_settings.RadVLMConfig(tasks=["report_generation"], llm="openai:gpt-test", prior_removal="llm",
                                    conversations=8, **extra)


def _stored(out: Path, node: str) -> list[dict]:
    return [json.loads(line) for line in (out / "build/llm" / f"{node}.jsonl").read_text().splitlines()]


def _estimate(sources, cache: Path, *extra) -> dict:
    result = CliRunner().invoke(app, ["estimate", "radvlm", "--mimic-cxr", str(sources["mimic_cxr"]), "--ms-cxr",
                                      str(sources["ms_cxr"]), "--tasks", "report_generation", "--llm", "openai:gpt-test",
                                      "--conversations", "8", "--json", "--cache", str(cache), *extra])
    assert result.exit_code == 0, result.output
    return {s["stage"]: s for s in json.loads(result.output)["stages"]}


def test_build_killed_after_prior_removal_resumes_without_asking_it_again(sources, tmp_path, monkeypatch):
    """Killed as the conversation node starts: the resumed build, even with an empty answer
    cache, sends no prior-removal request (its parsed outputs are stored under build/llm/), and
    the estimate counts them as done. The rows are those of a build never killed."""
    from radcorpora.registry import build

    with FakeProviderServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        out = tmp_path / "out"

        def killed(self, row):
            raise KeyboardInterrupt("killed after prior removal")

        real = rv_llm.ConversationStage.prompt
        monkeypatch.setattr(rv_llm.ConversationStage, "prompt", killed)
        with pytest.raises(KeyboardInterrupt):
            build("radvlm", sources, _config(), out, llm_settings=LLMSettings(
                cache_path=str(tmp_path / "first.sqlite"), approve_credentialed=["openai"]))
        monkeypatch.setattr(rv_llm.ConversationStage, "prompt", real)
        assert sent_by_stage(server) == Counter(prior_removal=9)  # 8 reports, and m4's repair
        assert len(_stored(out, "prior_removal")) == 8 and not (out / "data").exists()

        # the estimate reads the same graph: prior removal done, conversations sized on the rewritten reports
        stages = _estimate(sources, tmp_path / "none.sqlite", "--out", str(out))
        assert (stages["prior_removal"]["reused_from_build"], stages["prior_removal"]["to_send"]) == (8, 0)
        # sized on the rewritten reports: m1's and m5's rewrites are one text, so one request is sent for both
        assert (stages["conversation"]["requests"], stages["conversation"]["to_send"]) == (11, 10)
        assert server.calls == 9

        fresh = tmp_path / "fresh.sqlite"  # no answer in it: only the stored outputs spare prior removal
        resumed = CliRunner().invoke(app, _build_args(sources, out, fresh, "--approve-credentialed", "openai"))
        assert resumed.exit_code == 0, resumed.output
        now = sent_by_stage(server)
        assert now["prior_removal"] == 9 and now["conversation"] == 10 + 5  # m1 and m5 share one; 5 repaired once
        figures = json.loads((out / "build/manifest.json").read_text())["llm"]["pipeline"]["stages"]
        assert {k: figures["prior_removal"][k] for k in ("reused", "requests", "sent")} == {
            "reused": 8, "requests": 0, "sent": 0}
        assert (figures["conversation"]["consumes"], figures["conversation"]["items"]) == ("prior_removal", 11)
        assert (figures["conversation"]["sent"], figures["conversation"]["failed"]) == (15, 4)

        whole = tmp_path / "whole"
        assert CliRunner().invoke(app, _build_args(sources, whole, fresh, "--approve-credentialed", "openai")).exit_code == 0
        shards = sorted((whole / "data").rglob("*.parquet"))
        assert shards and all(s.read_bytes() == (out / s.relative_to(whole)).read_bytes() for s in shards)


def test_a_changed_verify_prompt_re_sends_only_verification(sources, tmp_path, monkeypatch):
    """The graph run twice on one store: with the verify prompt changed, the second run sends
    verification requests only; prior removal is not even looked up in the cache."""
    config = _config(verifiers=["openai:judge"])
    rows = rv.prepare(sources, config, lambda _line: None).plan.rows
    store = tmp_path / "build/llm"

    def stages():
        session = LLMSession(LLMSettings(cache_path=str(tmp_path / "cache.sqlite"), approve_credentialed=["openai"]))
        try:
            return rv_llm.run_llm_stages(rows, config, session, {}, store)
        finally:
            session.close()

    with FakeProviderServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        first = stages()
        # the 7 conversations that passed their checks (m1's and m5's are one request)
        assert sent_by_stage(server)["conversation_verify"] == 6
        before = sent_by_stage(server)
        prompts = rv_llm.load_prompts()
        stricter = dataclasses.replace(prompts["verify"], system=prompts["verify"].system + "\nBe strict.",
                                       content_hash="stricter")
        monkeypatch.setattr(rv_llm, "load_prompts", lambda: {**prompts, "verify": stricter})
        second = stages()
        assert sent_by_stage(server) - before == Counter(conversation_verify=6)
    f = second.result.figures()["stages"]
    assert (f["prior_removal"]["requests"], f["prior_removal"]["reused"]) == (0, 8)
    # the 4 conversations that failed their checks are asked again (failed lines are never reused): from the cache
    assert (f["conversation"]["reused"], f["conversation"]["requests"], f["conversation"]["sent"]) == (7, 4, 0)
    assert (f["conversation_verify"]["reused"], f["conversation_verify"]["requests"], f["conversation_verify"]["sent"]) == (0, 7, 6)
    assert [(r.key, r.instances) for r in second.rows] == [(r.key, r.instances) for r in first.rows]
    assert all(("radvlm/conversation-verify/v1", "stricter") in r.prompts for r in second.rows if r.task != "report_generation")


def test_estimate_from_the_graph_counts_stored_cached_and_to_send(sources, tmp_path, monkeypatch):
    with FakeProviderServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        out, cache = tmp_path / "out", tmp_path / "cache.sqlite"
        before = _estimate(sources, cache, "--verify", "openai:judge")
        assert [(s, before[s]["requests"], before[s]["to_send"]) for s in before] == [
            ("prior_removal", 8, 8), ("conversation", 11, 11), ("conversation_verify", 11, 11)]
        args = _build_args(sources, out, cache, "--approve-credentialed", "openai", "--verify", "openai:judge")
        assert CliRunner().invoke(app, args).exit_code == 0
        calls = server.calls
        # the finished build: stored outputs reused, failed conversations answered from the cache,
        # verification sized on the 7 conversations that exist (and the 4 failed ones, were they retried)
        done = _estimate(sources, cache, "--verify", "openai:judge", "--out", str(out))
        assert (done["prior_removal"]["reused_from_build"], done["prior_removal"]["to_send"]) == (8, 0)
        assert (done["conversation"]["reused_from_build"], done["conversation"]["already_cached"],
                done["conversation"]["to_send"]) == (7, 11, 0)
        assert done["conversation_verify"]["reused_from_build"] == 7
        # another folder, the same cache: cached answers are parsed, so what they make is known; m4's
        # rewrite came from a repair, which the estimate does not replay: its conversation is projected
        # from the extracted report (one request to send)
        warm = _estimate(sources, cache, "--verify", "openai:judge", "--out", str(tmp_path / "elsewhere"))
        assert [(s, warm[s]["reused_from_build"], warm[s]["already_cached"], warm[s]["to_send"]) for s in warm][:2] == [
            ("prior_removal", 0, 8, 0), ("conversation", 0, 10, 1)]
        assert server.calls == calls


def test_adjudication_is_applied_without_sending(sources, tmp_path, monkeypatch):
    """Two verifiers disagree on two conversations: both are queued (ids are the rows' ids); a
    person accepts one and rejects the other; `adjudicate apply` folds that in, sending nothing."""

    def two_judges(model, system, messages):
        if model == "judge-b" and "check training conversations" in (system or ""):
            report = _field(_text(messages[0]["content"]), "Report")
            if report in ("not available", "Heart size is normal."):  # m2 (no report left), m4
                return json.dumps({"consistent": False, "reason": "not supported"}), None
        return responder(model, system, messages)

    with FakeProviderServer(two_judges) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        out = tmp_path / "out"
        args = _build_args(sources, out, tmp_path / "cache.sqlite", "--approve-credentialed", "openai",
                           "--verify", "openai:judge", "--verify", "openai:judge-b")
        runner = CliRunner()
        assert runner.invoke(app, args).exit_code == 0
        manifest = json.loads((out / "build/manifest.json").read_text())
        queue = [json.loads(line) for line in (out / QUEUE_FILE).read_text().splitlines()]
        assert sorted(e["id"] for e in queue) == ["conversation/mimic-cxr/m2", "conversation/mimic-cxr/m4"]
        assert all(e["item"]["task"] == "conversation" and e["item"]["conversation"] and set(e["verdicts"]) ==
                   {"openai:judge", "openai:judge-b"} for e in queue)
        assert manifest["llm"]["pipeline"]["adjudication_pending"] == 2
        assert manifest["llm"]["verification"]["cohen_kappa"] is not None
        assert manifest["counts"]["verification_disagree"] == 2 and manifest["splits"]["conversation"] == {"train": 2, "test": 1}

        decisions = tmp_path / "decisions.jsonl"
        decided = {"conversation/mimic-cxr/m4": "accept", "conversation/mimic-cxr/m2": "reject"}
        decisions.write_text("".join(json.dumps({**e, "decision": decided[e["id"]]}) + "\n" for e in queue))
        calls = server.calls
        result = runner.invoke(app, ["adjudicate", "apply", str(out), str(decisions)])
        assert result.exit_code == 0, result.output
        assert server.calls == calls, "applying decisions must not send anything"
    manifest = json.loads((out / "build/manifest.json").read_text())
    assert {n: f["sent"] for n, f in manifest["llm"]["pipeline"]["stages"].items()} == {
        "prior_removal": 0, "conversation": 0, "conversation_verify": 0}
    assert manifest["llm"]["pipeline"]["adjudication_pending"] == 0 and (out / QUEUE_FILE).read_text() == ""
    assert manifest["splits"]["conversation"] == {"train": 3, "test": 1} and manifest["rejects"]["adjudicator_rejected"] == 1
    assert "m4" in {r["id"].rsplit("/", 1)[1] for r in _rows(out, "conversation")}
