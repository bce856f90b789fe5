"""ct-reasoning: an offline CLI build on the demo CT sources checked against values computed here
(rows per config, splits from the readers, thinking apart from the answer, slices = the windowed
PNGs of sources.nifti, narrative order), the gate's rules and the leak detector on crafted text, a
build through the real OpenAI SDK against the fake server in which every gate rule, the LLM verdict
and the leak detector's repair-then-reject fire and are counted, a killed build resuming without
re-sending, the estimate of all roles together, and the CLI's messages for bad options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from radcorpora import cli
from radcorpora.corpora.ct_reasoning.checks import GATE_RULES, gate_problem, leaks, out_of_order
from radcorpora.corpora.ct_reasoning.llm import RefineStage, chosen_option
from radcorpora.ops.windowing import volume_slice
from radcorpora.registry import CORPORA
from radcorpora.sources.abdomen_atlas import scan_abdomen_atlas
from radcorpora.sources.amos_mm import scan_amos_mm
from radcorpora.sources.ct_rate import scan_ct_rate
from radcorpora.sources.nifti import axial_slices
from radcorpora.store.state import LLM_STORE
from radcorpora.testing.fake_llm_server import FakeProviderServer

KEY = "sk-test-ct-reasoning-0123456789"
runner = CliRunner()


@pytest.fixture(scope="module")
def spec():
    return CORPORA["ct-reasoning"]


@pytest.fixture(scope="module")
def sources(spec, tmp_path_factory):
    return spec.demo.write_sources(tmp_path_factory.mktemp("ct-sources"), {})


def source_args(sources, *keys: str) -> list[str]:
    flags = {"ct_rate": "--ct-rate", "amos_mm": "--amos-mm", "abdomen_atlas": "--abdomen-atlas"}
    return [x for k in (keys or tuple(flags)) for x in (flags[k], str(sources[k]))]


def args(sources, out: Path, cache: Path, *extra: str, keys: tuple[str, ...] = ()) -> list[str]:
    return ["build", "ct-reasoning", *source_args(sources, *keys), "--out", str(out), "--cache", str(cache), *extra]


def rows_of(out: Path, config: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for path in sorted((out / "data" / config).glob("*.parquet")):
        found.setdefault(path.name.split("-")[0], []).extend(pq.read_table(path).to_pylist())
    return found


def every(out: Path, config: str) -> list[dict]:
    return [r for rows in rows_of(out, config).values() for r in rows]


@pytest.fixture(scope="module")
def reports(sources):
    """scan id -> (split, report text, volume file, scale) read by the readers, not the build."""
    found = {}
    for scan in (scan_ct_rate(sources["ct_rate"]), scan_amos_mm(sources["amos_mm"]),
                 scan_abdomen_atlas(sources["abdomen_atlas"])):
        for r in scan.records:
            found[f"{r.source}/{r.scan_id}"] = (r.split, r.text, Path(scan.root) / r.volumes[0].path,
                                                (r.volumes[0].rescale_slope, r.volumes[0].rescale_intercept))
    return found


@pytest.fixture(scope="module")
def offline_build(spec, sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("ct-build")
    out = root / "build"
    result = runner.invoke(cli.app, args(sources, out, root / "c.sqlite", "--llm", "offline", "--questions-per-report",
                                         "5", "--slices", "2", "--rewrite", "--translate", "de"))
    assert result.exit_code == 0, result.output
    return out


def test_offline_build_rows_splits_thinking_and_slices(offline_build, reports, sources):
    out = offline_build
    assert len(reports) == 11  # 5 CT-RATE scans (one with two reconstructions), 3 AMOS-MM, 3 AbdomenAtlas
    vqa, narratives = every(out, "vqa_thinking"), every(out, "report_thinking")
    # the stand-in asks 5 questions per report (every demo report has a sentence for the fifth); the
    # gate's verdict drops the follow-up question of reports that recommend none (its answer is not in the report)
    follow = {i for i, (_, text, _, _) in reports.items() if re.search(r"follow|advis|recommend", text, re.I)}
    # plus AMOS-MM's own multiple-choice questions (2 per case), kept as an extra question source
    generated = [r for r in vqa if r["origin"] == "generated"]
    assert len(generated) == sum(5 if i in follow else 4 for i in reports) == 49
    qa = {(q.question, tuple(q.options[k] for k in "ABCD"), q.answer) for r in scan_amos_mm(sources["amos_mm"]).records
          for q in r.questions}
    sourced = [r for r in vqa if r["origin"] == "amos_mm_qa"]
    assert len(sourced) == 6 and {(r["question"], tuple(r["options"]), r["correct_option"]) for r in sourced} == qa
    assert all(chosen_option(r["answer"], r["options"]) == r["correct_option"] for r in sourced)
    assert all(r["source"] == "amos-mm" for r in sourced) and all(not r["options"] for r in generated)
    manifest = json.loads((out / "build/manifest.json").read_text())
    assert manifest["roles"]["gate"]["rejected"] == {"verifier_inconsistent": 11 - len(follow)}
    assert manifest["roles"]["questions"] == {"in": 11, "out": 55 + 6, "rejected": {}}
    assert manifest["licence_class"] == "restricted"
    # the sources' official splits, per config
    for config in ("vqa_thinking", "report_thinking", "report_rewrite", "translation"):
        for split, rows in rows_of(out, config).items():
            assert all(reports[f"{r['source']}/{r['scan_id']}"][0] == split for r in rows), config
    assert {s: len(r) for s, r in rows_of(out, "report_thinking").items()} == {
        s: sum(v[0] == s for v in reports.values()) for s in ("test", "train", "validation")}
    assert len(every(out, "report_rewrite")) == 11 and len(every(out, "translation")) == 11
    for row in vqa:
        assert "<think" not in row["answer"] and row["answer"] != row["thinking"]
        assert leaks(row["raw_thinking"]) and not leaks(row["thinking"])  # refine removed the citation
        assert row["thinking_from"] == "think_tags"
        if row["origin"] == "generated" and (row["focus"] != "follow_up" or "follow" in row["answer"].lower()):
            assert row["answer"][:-1].lower() in reports[f"{row['source']}/{row['scan_id']}"][1].lower()
        assert row["volume"]["sha256"] == row["lineage"]["image_sha256"]
    # slices: the N representative axial slices, windowed, exactly as sources.nifti + ops.windowing make them
    row = next(r for r in vqa if r["source"] == "amos-mm")
    _, _, path, scale = reports[f"amos-mm/{row['scan_id']}"]
    expected = [volume_slice(s.axis, s.index, s.hu).image.bytes for s in axial_slices(path, 2, *scale)]
    assert [s["image"]["bytes"] for s in row["volume"]["slices"]] == expected
    assert row["volume"]["path"] == f"imagesTr/{row['scan_id']}.nii.gz"
    for row in narratives:
        assert out_of_order(row["findings_rationale"]) is None
        assert all(not leaks(row[k]) for k in ("findings_rationale", "impression_rationale", "follow_up_rationale"))
        asked = [r["question"] for r in vqa if f"{r['source']}/{r['scan_id']}" == row["id"]]
        assert sorted(row["questions"]) == sorted(asked)
    amos = next(r for r in narratives if r["id"] == "amos-mm/amos_0001")
    text = amos["findings_rationale"].lower()
    assert text.index("lung bases") < text.index("hepatic")  # chest before abdomen
    assert all(r["language"] == "de" for r in every(out, "translation"))
    card = (out / "README.md").read_text()
    assert "CC BY-NC-SA" in card and "vacuous_thinking" in card and "## Roles" in card


def test_gate_rules_and_leak_detector_on_crafted_text():
    report = "A 4 mm solid nodule in the right lower lobe. No pleural effusion."
    good = ("On the lung window the right lower lobe holds a small rounded solid density with smooth margins, "
            "and the pleural spaces stay dark.")
    assert gate_problem("Is there a nodule?", good, "Yes, a 4 mm nodule.", report) is None
    crafted = {
        "not_english": "Im Lungenfenster zeigt der rechte Unterlappen einen kleinen runden soliden Herd mit glatten "
                       "Rändern, die Pleura ist frei.",
        "vacuous_thinking": "Is there a nodule? Yes, a 4 mm nodule.",
        "repetitive_thinking": "The nodule is in the right lower lobe. " * 3 + good,
        "domain_contradiction": good + " The nodule is stable in size.",
    }
    assert set(crafted) == set(GATE_RULES)
    for rule, thinking in crafted.items():
        assert gate_problem("Is there a nodule?", thinking, "Yes, a 4 mm nodule.", report)[0] == rule
    # a change word is fine when the report compares
    assert gate_problem("Is there a nodule?", good + " The nodule is stable in size.", "Yes.",
                        report + " Compared with the prior CT, unchanged.") is None
    assert leaks("As stated in the report, a nodule. The prior study showed it.") == ["As stated", "report",
                                                                                        "prior study"]
    assert leaks("A nodule is noted in the right lower lobe; the context is clear.") == []
    assert out_of_order("The liver is normal. The lungs are clear.") == ["abdomen", "chest"]
    assert out_of_order("The lungs are clear. The liver is normal. The bladder is normal.") is None


def test_a_killed_build_resumes_without_asking_again(spec, sources, tmp_path, monkeypatch):
    class Killed(Exception):
        pass

    def killed(self, row):
        raise Killed

    out = tmp_path / "build"
    real = RefineStage.prompt
    monkeypatch.setattr(RefineStage, "prompt", killed)  # dies as the refine node starts
    given = args(sources, out, tmp_path / "c1.sqlite", "--llm", "offline", "--questions-per-report", "3",
                 keys=("ct_rate",))
    result = runner.invoke(cli.app, given)
    assert isinstance(result.exception, Killed)
    assert len((out / LLM_STORE / "thinking.jsonl").read_text().splitlines()) == 15
    monkeypatch.setattr(RefineStage, "prompt", real)
    given[given.index("--cache") + 1] = str(tmp_path / "empty.sqlite")  # nothing to be found in a cache
    result = runner.invoke(cli.app, given)
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "build/manifest.json").read_text())["llm"]["pipeline"]["stages"]
    assert {n: (stages[n]["reused"], stages[n]["requests"]) for n in ("questions", "thinking", "gate")} == {
        "questions": (5, 0), "thinking": (15, 0), "gate": (15, 0)}
    assert stages["refine"]["requests"] == stages["gate"]["outputs"] > 0


def test_estimate_counts_every_role(spec, sources, tmp_path):
    result = runner.invoke(cli.app, ["estimate", "ct-reasoning", *source_args(sources), "--llm", "openai:gpt-4o",
                                     "--thinking-llm", "openai:o3-mini", "--questions-per-report", "5", "--json",
                                     "--cache", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.output[result.output.index("{"):])
    stages = {s["stage"]: s for s in estimate["stages"]}
    assert [s["stage"] for s in estimate["stages"]] == ["questions", "thinking", "gate", "refine", "narrative"]
    assert stages["questions"]["requests"] == 11 and stages["narrative"]["requests"] == 11
    assert stages["thinking"]["requests"] == stages["gate"]["requests"] == 11 * 5  # grows with the questions
    assert stages["refine"]["requests"] == round(11 * 5 * 0.85)
    assert stages["thinking"]["llm"] == "openai:o3-mini" and estimate["samples"] == 11


def test_cli_refuses_bad_options_with_a_message(spec, sources, tmp_path):
    for extra, words in ((["--translate", "german"], "two-letter"), (["--questions-per-report", "0"], ">= 1"),
                         (["--slices", "-1"], ">= 0")):
        result = runner.invoke(cli.app, args(sources, tmp_path / "o", tmp_path / "c", "--llm", "offline", *extra,
                                             keys=("ct_rate",)))
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, result.output
    none = runner.invoke(cli.app, ["build", "ct-reasoning", "--out", str(tmp_path / "o"), "--llm", "offline"])
    assert none.exit_code == 2 and "at least one source" in none.output, none.output


# --------------------------------------------------------------------------- through the real SDK


def _text(messages) -> str:
    content = messages[0]["content"]
    return content if isinstance(content, str) else content[0]["text"]


GOOD = ("I open the lung window and scroll from apex to base; in that lobe a small rounded solid density with "
        "smooth margins sits within the parenchyma, and the report says it is a nodule of about four millimetres.")
CRAFTED = {  # thinking for the four questions of the train_1_a report (right lower lobe): one rule each
    0: "Im Lungenfenster zeigt der rechte Unterlappen einen kleinen runden soliden Herd mit glatten Rändern.",
    1: "Nodule. Yes.",
    2: "The nodule sits in the posterior basal segment with smooth margins. " * 3,
    3: GOOD + " It is stable compared with before.",
}


def _responder(model, system, messages):
    text = _text(messages)
    if "oral-examination" in system:
        return json.dumps({"questions": [
            {"question": "What are the size and density of the nodule?", "focus": "lesion"},
            {"question": "In which lobe is the nodule?", "focus": "location"},
            {"question": "How certain is it that this is a benign nodule?", "focus": "certainty"},
            {"question": "What follow-up does the nodule need?", "focus": "follow_up"}]}), None
    if "Think step by step" in system:
        question = text.split("Question: ", 1)[1].splitlines()[0]
        index = ["size and density", "which lobe", "how certain", "follow-up"].index(
            next(k for k in ("size and density", "which lobe", "how certain", "follow-up") if k in question.lower()))
        thinking = CRAFTED[index] if "right lower lobe" in text else GOOD
        lobe = re.search(r"(right|left) (upper|lower) lobe", text).group(0)
        return f"A solid nodule in the {lobe}.", thinking + f" Lobe: {lobe}."  # reasoning channel apart
    if "reviewing questions" in system:
        bad = "left upper lobe" in text and "How certain" in text
        return json.dumps({"consistent": not bad, "reason": "unsupported certainty" if bad else "supported"}), None
    if "You edit radiology reasoning" in system:
        repair = len(messages) > 1
        if "right upper lobe" in text and "size and density" in text:
            return "As stated in the report, a nodule sits there.", None  # leaks twice: rejected
        if "right upper lobe" in text and "which lobe" in text and not repair:
            return "The report says a nodule is in the right upper lobe.", None  # leaks once: repaired
        lobe = re.search(r"(right|left) (upper|lower) lobe", text).group(0)
        return f"On the lung window a small solid nodule sits in the {lobe}, with smooth margins.", None
    if "explaining how you reached" in system:
        return json.dumps({"findings_rationale": "The lungs hold one small solid nodule. The liver is not imaged.",
                           "impression_rationale": "A solitary pulmonary nodule, most likely benign.",
                           "follow_up_rationale": "A follow-up CT is advised for a solid nodule."}), None
    raise AssertionError(f"unexpected request: {system!r}")


def test_roles_through_the_openai_sdk_every_gate_rule_and_the_leak_detector(spec, sources, tmp_path, monkeypatch):
    with FakeProviderServer(_responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        out = tmp_path / "build"
        result = runner.invoke(cli.app, args(sources, out, tmp_path / "c.sqlite", "--llm", "openai:writer",
                                             "--thinking-llm", "openai:thinker", "--questions-per-report", "4",
                                             keys=("ct_rate",)))
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "build/manifest.json").read_text())
        roles = manifest["roles"]
        assert roles["gate"]["rules"] == dict.fromkeys(GATE_RULES, 1)  # each crafted thinking, one rule each
        assert roles["thinking"]["rejected"] == {f"gate_{rule}": 1 for rule in GATE_RULES}
        assert roles["gate"]["rejected"] == {"verifier_inconsistent": 1}  # the LLM verdict
        assert roles["refine"]["rejected"] == {"refine_leak": 1}  # repaired once, leaked again: rejected
        stages = manifest["llm"]["pipeline"]["stages"]
        assert stages["refine"]["repaired"] == 1  # the one the repair fixed
        failures = [json.loads(x) for x in (out / "build/llm_failures.jsonl").read_text().splitlines()]
        assert [(f["stage"], f["kind"]) for f in failures] == [("ct_refine", "parse")]  # in the ledger
        rejects = [json.loads(x) for x in (out / "build/rejects.jsonl").read_text().splitlines()]
        assert sum(r["reason"] == "refine_leak" for r in rejects) == 1
        assert "no_item_kept" in {r["reason"] for r in rejects}  # train_1_a lost all four questions
        vqa = every(out, "vqa_thinking")
        assert len(vqa) == 5 * 4 - 4 - 1 - 1
        for row in vqa:  # reasoning from the provider's channel, apart from the content
            assert row["thinking_from"] == "reasoning_channel"
            assert row["answer"].startswith("A solid nodule in the") and "Lobe:" in row["raw_thinking"]
            assert "report" not in row["thinking"].lower()
        fixed = next(r for r in vqa if r["scan_id"] == "valid_1_a" and "which lobe" in r["question"].lower())
        assert fixed["thinking"].startswith("On the lung window")
        assert len(every(out, "report_thinking")) == 4
        assert "refine_leak" in (out / "README.md").read_text()
        calls = server.calls
        again = runner.invoke(cli.app, args(sources, out, tmp_path / "c.sqlite", "--llm", "openai:writer",
                                            "--thinking-llm", "openai:thinker", "--questions-per-report", "4",
                                            keys=("ct_rate",)))
        assert again.exit_code == 0 and server.calls == calls  # complete: nothing sent again


# --------------------------------------------------------------------------- volumes and validate


def test_every_volume_referenced_and_the_same_bytes_at_any_worker_count(sources, offline_build, tmp_path):
    """Volumes are hashed and sliced in chunks on the engine's executor: 1 and 2 workers write the
    same shards; every reconstruction of a scan is referenced by its own sha256."""
    import hashlib

    shards = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        result = runner.invoke(cli.app, args(sources, out, tmp_path / "c.sqlite", "--llm", "offline", "--slices", "2",
                                             "--questions-per-report", "2", "--workers", workers, keys=("ct_rate",)))
        assert result.exit_code == 0, result.output
        shards.append(json.loads((out / "build/manifest.json").read_text())["shards"])
    assert shards[0] == shards[1]
    row = next(r for r in every(offline_build, "report_thinking") if r["scan_id"] == "train_1_a")
    root = sources["ct_rate"]
    files = sorted(root.rglob("train_1_a_*.nii.gz"))
    assert len(files) == 2 and [v["sha256"] for v in row["volumes"]] == [
        hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert row["volumes"][0] == {**row["volume"], "slices": []} and all(not v["slices"] for v in row["volumes"])
    readable = sum((Path(found.root) / v.path).exists() for found in (
        scan_ct_rate(sources["ct_rate"]), scan_amos_mm(sources["amos_mm"]), scan_abdomen_atlas(sources["abdomen_atlas"]))
        for r in found.records for v in r.volumes)
    counted = json.loads((offline_build / "build/manifest.json").read_text())["counts"]["volumes_referenced"]
    assert counted == readable == sum(len(r["volumes"]) for r in every(offline_build, "report_thinking"))


def test_validate_reruns_the_gate_rules_on_built_rows(offline_build, tmp_path):
    import shutil

    import pyarrow as pa

    copy = tmp_path / "b"
    shutil.copytree(offline_build, copy)
    valid = runner.invoke(cli.app, ["validate", str(copy)])
    assert valid.exit_code == 0, valid.output
    checks = {c["name"]: c for c in json.loads((copy / "build/validation.json").read_text())["checks"]}
    for rule in GATE_RULES:
        assert checks[f"gate_{rule}"]["checked"] >= len(every(offline_build, "vqa_thinking"))
        assert checks[f"gate_{rule}"]["violations"] == 0
    shard = min((copy / "data/vqa_thinking").glob("train-*.parquet"))
    table = pq.read_table(shard)
    raw = table.column("raw_thinking").to_pylist()
    raw[0] = "Nodule. Yes."  # vacuous
    raw[1] = raw[1] + " The lesion is stable."  # no comparison in the report: a domain contradiction
    table = table.set_column(table.schema.get_field_index("raw_thinking"), table.schema.field("raw_thinking"),
                             pa.array(raw, pa.string()))
    pq.write_table(table, shard)
    broken = runner.invoke(cli.app, ["validate", str(copy)])
    assert broken.exit_code != 0
    checks = {c["name"]: c for c in json.loads((copy / "build/validation.json").read_text())["checks"]}
    assert checks["gate_vacuous_thinking"]["violations"] == 1
    assert checks["gate_domain_contradiction"]["violations"] == 1
    assert checks["gate_not_english"]["violations"] == 0


def test_preview_shows_the_per_role_table(offline_build, tmp_path):
    result = runner.invoke(cli.app, ["preview", str(offline_build), "--out", str(tmp_path / "p.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "p.html").read_text()
    section = page[page.index("<h2>Roles</h2>"):]
    section = section[:section.index("</table>")]
    manifest = json.loads((offline_build / "build/manifest.json").read_text())
    stages = manifest["llm"]["pipeline"]["stages"]
    shown = re.findall(r"<tr><td>(\w+)</td><td class=\"n\">([\d,]+)</td><td class=\"n\">([\d,]+)</td>"
                       r"<td class=\"n\">[\d,]+</td><td class=\"n\">([\d,]+)</td><td class=\"n\">([\d,]+)</td>", section)
    assert [r[0] for r in shown] == ["questions", "thinking", "gate", "refine", "narrative",
                                                                "rewrite", "rewrite_judge", "translate"]
    for role, given, sent, kept, rejected in shown:
        figures = manifest["roles"][role]
        assert (int(given), int(sent), int(kept), int(rejected)) == (
            figures["in"], stages[role]["sent"], figures["out"], sum(figures["rejected"].values()))
    assert "verifier_inconsistent: " in section and "vacuous_thinking: 0" in section


def test_the_driver_holds_one_scans_slices_at_a_time(sources, tmp_path, monkeypatch):
    """With --slices N the rows' slices are read back from the build's kept files as each scan's
    rows are written (rows of a scan are written one after another), not held for every scan from
    the start: scan_volumes keeps slice-less references, and while the shards are written each
    scan's slices are read once per config that has rows of it."""
    from collections import Counter

    from radcorpora.corpora.ct_reasoning import build as ct_build

    kept: dict = {}
    real_scan_volumes, real_read = ct_build.scan_volumes, ct_build.read_volume

    def scan_volumes(*a, **k):
        found, failed = real_scan_volumes(*a, **k)
        kept.update(found)
        return found, failed

    reads: Counter = Counter()
    writing: list[bool] = [False]

    def read_volume(job, out):
        if writing[0]:
            reads[job.path] += 1
        return real_read(job, out)

    real_write = ct_build.write_split

    def write_split(*a, **k):
        writing[0] = True
        return real_write(*a, **k)

    monkeypatch.setattr(ct_build, "scan_volumes", scan_volumes)
    monkeypatch.setattr(ct_build, "read_volume", read_volume)
    monkeypatch.setattr(ct_build, "write_split", write_split)
    out = tmp_path / "b"
    result = runner.invoke(cli.app, args(sources, out, tmp_path / "c.sqlite", "--llm", "offline", "--slices", "2",
                                         "--questions-per-report", "3"))
    assert result.exit_code == 0, result.output
    assert kept and all(not r.slices for v in kept.values() for r in v.refs)
    assert all(v.sliced is not None and v.sliced.slices == 2 for v in kept.values())
    configs = {"vqa_thinking", "report_thinking"}
    rows = {c: every(out, c) for c in configs}
    assert all(len(r["volume"]["slices"]) == 2 for c in configs for r in rows[c])
    scans_per_config = Counter(v.sliced.path for v in kept.values()
                               for c in configs if any(r["volume"]["sha256"] == v.refs[0].sha256 for r in rows[c]))
    assert reads and reads == scans_per_config  # once per scan and config, however many rows it has
    assert len(rows["vqa_thinking"]) > len(kept)  # several question rows per scan, their slices read once
