"""radvlm's LLM stages (prior-study removal, conversations, verification) end to end through the
real OpenAI and Anthropic SDK clients against the local wire-format server: replies that are not
JSON, wrong roles, too few rounds, leaked prior-study language and boxes not among the given ones
get one repair, then land in the ledger and the rejects; a rerun sends nothing; a killed build
resumes to the same bytes; credentialed text is refused to an unapproved provider; the batch path;
the estimate; the rule-based mode."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from radcorpora.corpora.radvlm import build as rv
from radcorpora.corpora.radvlm import settings as rv_settings
from radcorpora.corpora.radvlm import sources as radvlm_sources
from radcorpora.cli import app
from radcorpora.ops.boxes import boxes_text
from radcorpora.ops.prior_study import prior_study_phrases
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.cxr import GroundedFinding, StudyReport
from radcorpora.testing.fake_llm_server import FakeProviderServer
from test_radvlm_build import _image, _labels

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
            from radcorpora.registry import build
            from radcorpora.llm.session import LLMSettings

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
