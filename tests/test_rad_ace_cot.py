"""rad-ace-cot: readers, checks, end-to-end builds (offline and through a local OpenAI/Anthropic
server), the LLM pipeline (resume after a kill, a changed verification prompt, three verifiers),
adjudication, the per-stage figures in manifest, card and preview, the estimate and the CSV export."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from datasets import load_dataset
from helpers import build_rad_ace_cot
from test_llm_pipeline import hand_fleiss
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.corpora.rad_ace_cot.build import QUEUE_FILE, RadAceCotConfig, VerifyStage
from radcorpora.demo.pubmedvision import write_demo_pubmedvision, write_demo_vqa_rad
from radcorpora.llm.session import LLMSettings
from radcorpora.ops.cot import CotBounds, cot_problems, split_cot
from radcorpora.publish.card import pipeline_order
from radcorpora.publish.preview import render_preview
from radcorpora.sources.errors import SourceError
from radcorpora.sources.pubmedvision import modality_class, scan_pubmedvision
from radcorpora.sources.vqa_rad import read_vqa_rad_test
from radcorpora.store.state import LLM_STORE
from radcorpora.testing.fake_llm_server import FakeProviderServer

KEY = "sk-test-cot-0123456789"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cot-sources")
    write_demo_pubmedvision(root / "pubmedvision")
    write_demo_vqa_rad(root / "vqa-rad")
    return root / "pubmedvision", root / "vqa-rad"


@pytest.mark.parametrize(("value", "expected"), [
    ("Computed Tomography (CT)", "CT"), ("CT", "CT"), ("ct scan", "CT"), ("CTA", "CT"),
    ("Magnetic Resonance Imaging (MRI)", "MR"), ("MR", "MR"), ("mri", "MR"), ("MRCP", "MR"),
    ("Digital Photography", None), ("X-ray", None), ("Positron Emission Tomography (PET)", None),
    ("PET-CT", None), ("CT and MRI", None), ("Doctor", None), ("", None), (None, None),
])
def test_modality_matcher(value, expected):
    assert modality_class(value) == expected


def test_reader_streams_keeps_ct_mr_and_reports_what_it_skipped(sources):
    scan = scan_pubmedvision(sources[0])
    assert {s.modality for s in scan.samples} == {"CT", "MR"}
    assert scan.counts["not_ct_mr"] == 4
    assert [r.reason for r in scan.rejects] == ["image_file_missing"]
    assert scan.rejects[0].row is not None and "pmc_" in scan.rejects[0].detail
    assert any(v.startswith("Digital Photography -> skipped") for v in scan.modality_values)
    multi = [s for s in scan.samples if len(s.images) == 2]
    assert multi and all("<image>" not in s.question for s in scan.samples)


def test_reader_errors_name_the_file(tmp_path):
    (tmp_path / "PubMedVision_Alignment_VQA.json").write_text('{"not": "an array"')
    with pytest.raises(SourceError, match="PubMedVision_Alignment_VQA.json"):
        scan_pubmedvision(tmp_path)
    with pytest.raises(SourceError, match="PubMedVision_InstructionTuning_VQA.json"):
        scan_pubmedvision(tmp_path, "instruction")
    (tmp_path / "PubMedVision_Alignment_VQA.json").write_text(json.dumps([{
        "id": "Alignment_VQA_1", "image": ["images/a.jpg"], "modality": "X-ray", "body_part": "Chest",
        "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "d"}]}]))
    with pytest.raises(SourceError, match=r"no usable CT/MR sample.*X-ray -> skipped"):
        scan_pubmedvision(tmp_path)


def test_vqa_rad_osf_release_uses_the_official_test_split(tmp_path, sources):
    mirror = read_vqa_rad_test(sources[1])
    assert mirror.source_format == "parquet" and len(mirror.questions) == 8
    assert {q.answer_type for q in mirror.questions} == {"OPEN", "CLOSED"}
    images = tmp_path / "VQA_RAD Image Folder"
    images.mkdir()
    (images / "synpic1.jpg").write_bytes(mirror.questions[0].image)
    rows = [{"qid": 1, "image_name": "synpic1.jpg", "question": "Is this normal?", "answer": "No",
             "answer_type": "CLOSED", "phrase_type": "freeform", "image_organ": "HEAD"},
            {"qid": 2, "image_name": "synpic1.jpg", "question": "How many lesions?", "answer": 2,
             "answer_type": "OPEN", "phrase_type": "test_freeform", "image_organ": "HEAD", "question_type": "COUNT"},
            {"qid": 3, "image_name": "missing.jpg", "question": "Where?", "answer": "left",
             "answer_type": "OPEN", "phrase_type": "test_para", "image_organ": "CHEST"}]
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    test = read_vqa_rad_test(tmp_path)
    assert [q.id for q in test.questions] == ["2"]
    assert test.questions[0].answer == "2" and test.questions[0].organ == "HEAD"
    assert [r.reason for r in test.rejects] == ["image_file_missing"]


def test_cot_rules():
    bounds = CotBounds(think_min_words=3)
    assert split_cot("<think>a b c</think>\n<answer>yes</answer>") == ("a b c", "yes")
    assert split_cot("<answer>x</answer><think>y</think>") is None
    assert split_cot("preamble <think>a</think><answer>b</answer>") is None
    assert cot_problems("I see a mass here", "mass", bounds) == []
    problems = cot_problems("The description says there is a mass", "mass", bounds)
    assert problems and problems[0].startswith("source_text_leak")
    assert cot_problems("too short", "mass", bounds)[0].startswith("think_length")


def offline_build(source: Path, out: Path, vqa_rad: Path | None, cache: Path, **config) -> object:
    return build_rad_ace_cot(source, out, RadAceCotConfig(llm="offline", **config),
                             LLMSettings(cache_path=str(cache)), vqa_rad=vqa_rad)


def test_offline_build_loads_through_datasets_and_is_reproducible(sources, tmp_path):
    first = offline_build(sources[0], tmp_path / "a", sources[1], tmp_path / "c1.sqlite")
    assert first.report.valid, first.report.summary()
    default = load_dataset(str(tmp_path / "a"))
    assert set(default) == {"train", "validation"}
    row = default["train"][0]
    assert split_cot(row["cot_output"]) == (row["think"], row["answer"])
    assert row["conversations"][0]["value"].count("<image>") == len(row["images"])
    evaluation = load_dataset(str(tmp_path / "a"), "eval")["test"]
    assert len(evaluation) == 8 and evaluation[0]["image"] is not None
    second = offline_build(sources[0], tmp_path / "b", sources[1], tmp_path / "c2.sqlite")
    for shard in sorted((tmp_path / "a" / "data").rglob("*.parquet")):
        assert shard.read_bytes() == (tmp_path / "b" / shard.relative_to(tmp_path / "a")).read_bytes()
    again = offline_build(sources[0], tmp_path / "a", sources[1], tmp_path / "c1.sqlite")
    assert again.state == "complete" and second.manifest["splits"] == first.manifest["splits"]
    # each row's id is checked once, in the build's report and in `validate --deep`, however many
    # rules read the rows (the corpus rules parse every record as an object)
    rows = sum(n for splits in first.manifest["splits"].values() for n in splits.values())
    from radcorpora.registry import validate

    for report in (first.report, validate(tmp_path / "a", deep=True, image_check="crc")):
        checks = {c.name: c for c in report.checks}
        assert checks["unique_ids"].checked == rows and checks["record_objects"].checked == rows, report.summary()


def _generator(model, system, messages):
    """A stand-in reasoning model on the wire: leaks source language for knee questions."""
    text = messages[-1]["content"]
    question = text.rsplit("Question:", 1)[-1].strip()
    findings = text.split("Findings:", 1)[-1].split("Question:", 1)[0].strip()
    think = " ".join(["I examine the image carefully and note each structure in turn."] * 4)
    if "ligament" in question or "meniscus" in question:
        think += " The description says there is a tear."
    first = findings.split(". ")[0]
    return f"<think>{think} {first}.</think>\n<answer>{first}.</answer>", "hidden chain"


def _verifier_a(model, system, messages):
    return json.dumps({"consistent": True, "reason": "matches"}), None


def _verifier_b(model, system, messages):
    text = messages[-1]["content"] if isinstance(messages[-1]["content"], str) else messages[-1]["content"][0]["text"]
    brain = "brain" in text.lower()
    return json.dumps({"consistent": not brain, "reason": "brain cases doubted" if brain else "fine"}), None


def test_build_through_real_sdks_with_two_verifiers_and_adjudication(sources, tmp_path, monkeypatch):
    with FakeProviderServer(_generator) as gen, FakeProviderServer(_verifier_b) as judge:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", gen.openai_base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", judge.base_url)
        # the OpenAI-wire verifier agrees with everything; the Anthropic one doubts brain cases
        gen.responder = lambda model, system, messages: (
            _verifier_a(model, system, messages) if model == "judge-a" else _generator(model, system, messages))
        out = tmp_path / "build"
        runner = CliRunner()
        args = ["build", "rad-ace-cot", "--source", str(sources[0]), "--out", str(out), "--llm", "openai:deepseek-reasoner",
                "--verify", "openai:judge-a", "--verify", "anthropic:claude-haiku-4-5", "--cache", str(tmp_path / "c.sqlite"),
                "--concurrency", "4"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "build/manifest.json").read_text())
        assert manifest["rejects"]["cot_check_source_text_leak"] == 4  # 2 knee cases x 2 repeats
        queue = [json.loads(line) for line in (out / QUEUE_FILE).read_text().splitlines()]
        assert queue and all("brain" in q["item"]["description"].lower() for q in queue)
        assert all(set(q) == {"id", "item", "verdicts", "decision", "note"} and q["decision"] is None
                   and {"question", "cot_output", "images"} <= set(q["item"]) and len(q["verdicts"]) == 2 for q in queue)
        verification = manifest["llm"]["verification"]
        assert verification["outcomes"]["disagree"] == len(queue)
        assert "cohen_kappa" in verification and "percent_agreement" in verification
        assert manifest["llm"]["usage"]["models"]["openai:deepseek-reasoner"]["reasoning_tokens"] > 0
        assert "LLM stages" in (out / "README.md").read_text()
        rows_before = sum(manifest["splits"]["default"].values())

        # a person accepts the first queued sample and rejects the rest
        decisions = tmp_path / "decisions.jsonl"
        decisions.write_text("\n".join(json.dumps({**q, "decision": "accept" if i == 0 else "reject"})
                                       for i, q in enumerate(queue)))
        calls = gen.calls + judge.calls
        result = runner.invoke(app, ["adjudicate", "apply", str(out), str(decisions)])
        assert result.exit_code == 0, result.output
        assert gen.calls + judge.calls == calls, "applying decisions must not send anything"
        manifest = json.loads((out / "build/manifest.json").read_text())
        assert {name: f["sent"] for name, f in manifest["llm"]["pipeline"]["stages"].items()} == {"cot": 0, "verify": 0}
        assert manifest["llm"]["pipeline"]["adjudication_pending"] == 0
        assert sum(manifest["splits"]["default"].values()) == rows_before + 1
        assert manifest["rejects"]["adjudicator_rejected"] == len(queue) - 1
        assert (out / QUEUE_FILE).read_text() == ""
        rows = load_dataset(str(out))
        adjudicated = [r["id"] for split in rows.values() for r in split if r["verification"] == "adjudicated"]
        assert adjudicated == [queue[0]["id"]]

        bad = tmp_path / "bad.csv"
        bad.write_text("Alignment_VQA_99999,accept\n")
        result = runner.invoke(app, ["adjudicate", "apply", str(out), str(bad)])
        assert result.exit_code == 2 and "not in this build's adjudication queue" in result.output
        undecided = tmp_path / "undecided.csv"
        undecided.write_text("id,decision\n")
        result = runner.invoke(app, ["adjudicate", "apply", str(out), str(undecided)])
        assert result.exit_code == 2 and "nothing to apply" in result.output


def test_export_csv_and_estimate(sources, tmp_path):
    build = tmp_path / "build"
    offline_build(sources[0], build, None, tmp_path / "c.sqlite")
    runner = CliRunner()
    result = runner.invoke(app, ["export", "rad-ace-csv", str(build), "--out", str(tmp_path / "cot.csv")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "cot.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["filename", "modality", "cot_output", "question"]
    assert re.fullmatch(r"\['images/pmc_\d+_0\.jpg'(, 'images/pmc_\d+_1\.jpg')?\]", rows[0]["filename"])
    result = runner.invoke(app, ["estimate", "rad-ace-cot", "--source", str(sources[0]), "--llm", "openai:gpt-4o",
                                 "--rpm", "10", "--concurrency", "100", "--json", "--cache", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.output[result.output.index("{"):])
    stage = estimate["stages"][0]
    assert stage["requests"] == 32 and stage["limited_by"] == "rpm" and stage["minutes_online"] == pytest.approx(3.2)
    assert stage["cost_usd_batch"] == pytest.approx(stage["cost_usd_online"] / 2, abs=1e-4)


# --------------------------------------------------------------------------- the LLM pipeline

GENERATOR = "deepseek-reasoner"
LEAKED = ("ligament", "meniscus")  # _generator leaks source language for these: the cot checks reject them


def sent(server: FakeProviderServer, model: str) -> int:
    """Requests for `model` that reached the server (counted at the wire, not by the build)."""
    return sum(body.get("model") == model for body in server.request_bodies)


def candidates(source: Path) -> list:
    """The demo samples whose chain of thought passes the checks, worked out from the source."""
    return [s for s in scan_pubmedvision(source).samples if not any(w in s.question for w in LEAKED)]


@pytest.fixture
def servers(monkeypatch):
    """An OpenAI-wire server (the generator and OpenAI judges) and an Anthropic-wire one."""
    with FakeProviderServer(_generator) as gen, FakeProviderServer(_verifier_b) as judge:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", gen.openai_base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", judge.base_url)
        gen.responder = lambda model, system, messages: (
            _verifier_a(model, system, messages) if model.startswith("judge-") else _generator(model, system, messages))
        yield gen, judge


def build_args(source: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["build", "rad-ace-cot", "--source", str(source), "--out", str(out), "--llm", f"openai:{GENERATOR}",
            "--verify", "openai:judge-a", "--verify", "anthropic:claude-haiku-4-5", "--cache", str(cache),
            "--concurrency", "4", *extra]


def test_a_killed_build_resumes_mid_pipeline_without_asking_for_the_cot_again(sources, tmp_path, servers, monkeypatch):
    gen, judge = servers
    out, runner = tmp_path / "build", CliRunner()

    class Killed(Exception):
        pass

    def killed(self, row):
        raise Killed

    real = VerifyStage.prompt
    monkeypatch.setattr(VerifyStage, "prompt", killed)  # the process dies as the verify node starts
    result = runner.invoke(app, build_args(sources[0], out, tmp_path / "c1.sqlite"))
    assert isinstance(result.exception, Killed)
    assert sent(gen, GENERATOR) == 32 and gen.calls == 32 and judge.calls == 0
    stored = (out / LLM_STORE / "cot.jsonl").read_text().splitlines()
    assert len(stored) == 32 and not (out / "build/manifest.json").exists()

    # the rerun takes the stored chains of thought: with an empty answer cache it still asks none again
    monkeypatch.setattr(VerifyStage, "prompt", real)
    result = runner.invoke(app, build_args(sources[0], out, tmp_path / "empty.sqlite"))
    assert result.exit_code == 0, result.output
    n = len(candidates(sources[0]))
    assert sent(gen, GENERATOR) == 32 and sent(gen, "judge-a") == n and judge.calls == n
    figures = json.loads((out / "build/manifest.json").read_text())["llm"]["pipeline"]["stages"]
    assert (figures["cot"]["reused"], figures["cot"]["requests"], figures["cot"]["sent"]) == (32, 0, 0)
    assert (figures["verify"]["requests"], figures["verify"]["sent"], figures["verify"]["items"]) == (2 * n, 2 * n, n)
    assert figures["cot"]["rejected"] == 32 - n and figures["cot"]["outputs"] == n


def test_a_changed_verification_prompt_re_sends_only_the_verification(sources, tmp_path, servers):
    gen, judge = servers
    out, runner, cache = tmp_path / "build", CliRunner(), tmp_path / "c.sqlite"
    assert runner.invoke(app, build_args(sources[0], out, cache)).exit_code == 0
    n = len(candidates(sources[0]))
    assert (sent(gen, GENERATOR), sent(gen, "judge-a"), judge.calls) == (32, n, n)
    rows = load_dataset(str(out))

    prompt = tmp_path / "verify.yaml"
    prompt.write_text("id: my-audit/v2\nsystem: |\n  AUDIT V2: judge radiology reasoning; answer in JSON.\nuser: |\n"
                      "  Findings: {description}\n  Question: {question}\n  Reasoning: {cot}\n"
                      "  Reply {{\"consistent\": true or false, \"reason\": \"...\"}}\n")
    # another prompt is another build: --overwrite keeps the pipeline's stored outputs (build/llm)
    result = runner.invoke(app, build_args(sources[0], out, cache, "--verify-prompt", str(prompt), "--overwrite"))
    assert result.exit_code == 0, result.output
    assert sent(gen, GENERATOR) == 32, "no chain of thought is asked for again"
    assert (sent(gen, "judge-a"), judge.calls) == (2 * n, 2 * n)
    assert all("AUDIT V2" in body["messages"][0]["content"] for body in gen.request_bodies[-n:])
    assert all("AUDIT V2" in body["system"] for body in judge.request_bodies[-n:])
    manifest = json.loads((out / "build/manifest.json").read_text())
    cot, verify = manifest["llm"]["pipeline"]["stages"]["cot"], manifest["llm"]["pipeline"]["stages"]["verify"]
    assert (cot["sent"], cot["cached"], cot["reused"]) == (0, 0, 32) and verify["sent"] == 2 * n
    assert "my-audit/v2" in manifest["prompts"]
    again = load_dataset(str(out))
    assert [r["cot_output"] for r in again["train"]] == [r["cot_output"] for r in rows["train"]]


def _judge_c(model, system, messages):
    text = messages[-1]["content"] if isinstance(messages[-1]["content"], str) else messages[-1]["content"][0]["text"]
    doubt = "brain" in text.lower() or "liver" in text.lower()
    return json.dumps({"consistent": not doubt, "reason": "doubted" if doubt else "fine"}), None


def test_three_verifiers_give_fleiss_kappa_in_manifest_card_and_preview(sources, tmp_path, servers):
    gen, _ = servers
    # judge-a and the Anthropic judge doubt brain cases, judge-c brain and liver cases
    gen.responder = lambda model, system, messages: (
        _verifier_b(model, system, messages) if model == "judge-a" else _judge_c(model, system, messages)
        if model == "judge-c" else _generator(model, system, messages))
    out = tmp_path / "build"
    result = CliRunner().invoke(app, build_args(sources[0], out, tmp_path / "c.sqlite", "--verify", "openai:judge-c"))
    assert result.exit_code == 0, result.output

    def has(sample, word):
        return word in (sample.description + sample.question).lower()

    ratings = [[not has(s, "brain"), not has(s, "brain"), not (has(s, "brain") or has(s, "liver"))]
               for s in candidates(sources[0])]
    fails, queued = sum(not any(r) for r in ratings), sum(any(r) and not all(r) for r in ratings)
    assert fails and queued  # both categories occur: kappa is defined
    manifest = json.loads((out / "build/manifest.json").read_text())
    audit = manifest["llm"]["pipeline"]["audits"]["verify"]
    assert audit["fleiss_kappa"] == pytest.approx(hand_fleiss(ratings), abs=1e-4) and "cohen_kappa" not in audit
    assert audit["outcomes"] == {"disagree": queued, "fail": fails, "pass": len(ratings) - fails - queued}
    assert audit["percent_agreement"] == pytest.approx(round(100 * (len(ratings) - queued) / len(ratings), 2))
    assert manifest["llm"]["verification"]["fleiss_kappa"] == audit["fleiss_kappa"]
    assert manifest["rejects"]["verifier_inconsistent"] == fails and manifest["llm"]["adjudication_pending"] == queued
    assert len((out / QUEUE_FILE).read_text().splitlines()) == queued
    card = (out / "README.md").read_text()
    assert f"Fleiss' kappa {audit['fleiss_kappa']}" in card and f"agreement {audit['percent_agreement']}%" in card
    assert "Audit `verify` by 3 model(s)" in card and f"Awaiting adjudication: {queued}" in card
    html, _ = render_preview(out)
    assert f"<th>fleiss kappa</th><td>{audit['fleiss_kappa']}</td>" in html


def _table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the markdown table row that starts with `first_cell`."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _html_row(html: str, first_cell: str) -> list[str]:
    """The cells of the preview's pipeline table row that starts with `first_cell`."""
    table = html[html.index("<h3>pipeline stages</h3>"):]
    table = table[:table.index("</table>")]
    row = re.search(rf"<tr><td>{re.escape(first_cell)}</td>(.*?)</tr>", table).group(1)
    return [first_cell, *re.findall(r"<td[^>]*>(.*?)</td>", row)]


def test_card_and_preview_show_the_per_stage_figures_of_an_offline_build(sources, tmp_path):
    build = tmp_path / "build"
    outcome = offline_build(sources[0], build, None, tmp_path / "c.sqlite", verifiers=["offline:a", "offline:b"])
    assert outcome.report.valid, outcome.report.summary()
    figures = outcome.manifest["llm"]["pipeline"]
    cot, verify = figures["stages"]["cot"], figures["stages"]["verify"]
    # the offline stand-in writes a passing chain of thought for every one of the 32 samples
    assert (cot["items"], cot["requests"], cot["sent"], cot["parsed"], cot["outputs"]) == (32, 32, 32, 32, 32)
    assert (verify["requests"], verify["sent"], verify["outputs"]) == (64, 64, 32)
    card = (build / "README.md").read_text()
    assert _table_row(card, "`cot`") == [
        "`cot`", "`offline:stand-in`", "input", "32", "32", "0", "0", "32", "0", "32", "0", "0", "32",
        f"{cot['held']['input_tokens']} / {cot['held']['output_tokens']}", "$0.0000", "$0.0000"]
    assert _table_row(card, "`verify`")[:13] == [
        "`verify`", "`offline:a`, `offline:b`", "cot", "32", "64", "0", "0", "64", "0", "64", "0", "0", "32"]
    # two auditors that always agree on "consistent": 100 %, and kappa undefined rather than 1 or 0
    assert "agreement 100.0%, Cohen's kappa undefined" in card and "Awaiting adjudication: 0" in card
    html, _ = render_preview(build)
    assert _html_row(html, "cot") == ["cot", "offline:stand-in", "32", "32", "0", "0", "32", "0", "32", "0", "0", "32",
                                      f"{cot['held']['input_tokens']:,}", f"{cot['held']['output_tokens']:,}",
                                      "0.0000", "0.0000"]
    assert _html_row(html, "verify")[:12] == ["verify", "offline:a, offline:b", "32", "64", "0", "0", "64", "0", "64",
                                              "0", "0", "32"]
    assert "<th>percent agreement</th><td>100.0</td>" in html
    assert "<th>cohen kappa</th><td>undefined (every verdict in one category)</td>" in html
    # the manifest on disk holds stages sorted by name; card and preview show them in graph order
    assert pipeline_order({"verify": {"consumes": "cot"}, "a_late": {"consumes": "verify"},
                           "cot": {"consumes": "input"}}) == ["cot", "verify", "a_late"]


def test_estimate_reads_the_pipeline_graph_and_the_outputs_a_build_stored(sources, tmp_path):
    build, cache = tmp_path / "build", tmp_path / "c.sqlite"
    runner = CliRunner()
    args = ["estimate", "rad-ace-cot", "--source", str(sources[0]), "--llm", "openai:gpt-4o", "--verify",
            "openai:gpt-4o-mini", "--json", "--cache", str(cache)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    before = {s["stage"]: s for s in json.loads(result.output[result.output.index("{"):])["stages"]}
    # verification is sized from the findings standing in for the chains of thought, one per sample
    assert (before["cot"]["to_send"], before["verify"]["to_send"], before["verify"]["expected_items"]) == (32, 32, 32.0)

    offline_build(sources[0], build, None, cache, verifiers=["offline:judge"])
    args = ["estimate", "rad-ace-cot", "--source", str(sources[0]), "--llm", "offline", "--verify", "offline:judge",
            "--json", "--cache", str(tmp_path / "empty.sqlite")]
    fresh = json.loads((r := runner.invoke(app, args)).output[r.output.index("{"):])
    stored = json.loads((r := runner.invoke(app, [*args, "--out", str(build)])).output[r.output.index("{"):])
    assert [(s["stage"], s["to_send"]) for s in fresh["stages"]] == [("cot", 32), ("verify", 32)]
    # with the build folder, its stored outputs count as done: nothing to send, every request reused
    assert [(s["stage"], s["to_send"], s["reused_from_build"]) for s in stored["stages"]] == [("cot", 0, 32),
                                                                                           ("verify", 0, 32)]
