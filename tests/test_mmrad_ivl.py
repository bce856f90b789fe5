"""mmrad-ivl: an offline CLI build on the demo sources checked against values computed here (rows,
image order, placeholders, crops = the box's pixels by numpy, patient splits, the stratified
benchmark), a build killed mid-pipeline resuming without asking again, the roles through the real
OpenAI and Anthropic SDKs against the fake server with an adjudication round trip, the estimate,
the public JSONL export and the fidelity sheet read back."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from radcorpora import cli
from radcorpora.corpora.mmrad_ivl.build import SHEET_FILE, benchmark_ids, fidelity_figures
from radcorpora.corpora.mmrad_ivl.llm import ReflectStage
from radcorpora.llm.audit import QUEUE_FILE
from radcorpora.registry import CORPORA
from radcorpora.schemas.regions import normalise_region, region_group
from radcorpora.sources.gemex import scan_gemex_thinkvg
from radcorpora.store.state import LLM_STORE
from radcorpora.testing.fake_llm_server import FakeProviderServer

KEY = "sk-test-mmrad-0123456789"
runner = CliRunner()


@pytest.fixture(scope="module")
def spec():
    return CORPORA["mmrad-ivl"]


@pytest.fixture(scope="module")
def sources(spec, tmp_path_factory):
    return spec.demo.write_sources(tmp_path_factory.mktemp("mmrad-sources"), {})


def args(sources, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["build", "mmrad-ivl", "--gemex-thinkvg", str(sources["gemex_thinkvg"]), "--mimic-cxr",
            str(sources["mimic_cxr"]), "--mimic-cxr-reports", str(sources["mimic_cxr_reports"]), "--out", str(out),
            "--cache", str(cache), *extra]


def rows_of(out: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for path in sorted((out / "data" / "default").glob("*.parquet")):
        found.setdefault(path.name.split("-")[0], []).extend(pq.read_table(path).to_pylist())
    return found


def official_splits(mimic: Path) -> dict[str, tuple[str, str]]:
    """dicom_id -> (subject, split) read straight from the split CSV."""
    import gzip

    text = gzip.decompress((mimic / "mimic-cxr-2.0.0-split.csv.gz").read_bytes()).decode()
    return {r["dicom_id"]: (r["subject_id"], {"validate": "validation"}.get(r["split"], r["split"]))
            for r in csv.DictReader(io.StringIO(text))}


def outward(box: list[float], width: int, height: int, margin: float) -> list[int]:
    """The crop rectangle, computed here: widen by margin, round outwards, clamp."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return [max(0, math.floor((x1 - dx) * width + 1e-9)), max(0, math.floor((y1 - dy) * height + 1e-9)),
            min(width, math.ceil((x2 + dx) * width - 1e-9)), min(height, math.ceil((y2 + dy) * height - 1e-9))]


@pytest.fixture(scope="module")
def offline_build(spec, sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("mmrad-build")
    out = root / "build"
    given = args(sources, out, root / "c.sqlite", "--llm", "offline", "--auditor", "offline", "--crop-margin", "0.05",
                 "--audit-sample", "6")
    (root / "args.json").write_text(json.dumps(given))
    result = runner.invoke(cli.app, given)
    assert result.exit_code == 0, result.output
    return out


def test_offline_build_rows_images_crops_and_splits(offline_build, sources):
    out = offline_build
    rows = rows_of(out)
    scan = scan_gemex_thinkvg(sources["gemex_thinkvg"])
    boxes = {image.image_id: {} for image in scan.images}
    for image in scan.images:
        for q in image.questions:
            for r in q.regions:
                boxes[image.image_id].setdefault(normalise_region(r.region), []).append(r.box.xyxy)
    every = [r for split in rows.values() for r in split]
    assert len(every) == len(scan.images) == 19  # every demo image: its left-breast step alone is dropped
    manifest = json.loads((out / "build/manifest.json").read_text())
    assert manifest["rejects"]["region_outside_mapping"] == 1 and manifest["licence_class"] == "credentialed"
    for row in every:
        source = Path(sources["mimic_cxr"]) / "files" / row["images"][0]["path"]
        assert row["images"][0]["bytes"] == source.read_bytes()  # the full image first, as read
        assert row["prompt"].count("<image>") == 1
        assert row["response"].count("<image>") == len(row["images"]) - 1 == len(row["steps"])
        assert [s["image"] for s in row["steps"]] == list(range(1, len(row["images"])))
        groups = [s["group"] for s in row["steps"]]
        assert groups == [g for g in ("mediastinal", "lung", "bone", "other") if g in groups]
        full = np.asarray(Image.open(io.BytesIO(row["images"][0]["bytes"])))
        height, width = full.shape[:2]
        for k, step in enumerate(row["steps"]):
            assert all(region_group(r) == step["group"] for r in step["regions"])
            corners = [c for r in step["regions"] for c in boxes[row["id"]][normalise_region(r)]]
            union = [min(c[0] for c in corners), min(c[1] for c in corners),
                     max(c[2] for c in corners), max(c[3] for c in corners)]
            assert [step["box"][k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx(union)
            cut = outward(union, width, height, 0.05)
            assert step["crop_pixels"] == cut and step["box_pixels"] == outward(union, width, height, 0.0)
            crop = np.asarray(Image.open(io.BytesIO(row["images"][step["image"]]["bytes"])))
            assert np.array_equal(crop, full[cut[1]:cut[3], cut[0]:cut[2]])
            assert f"[{', '.join(map(str, step['box_pixels']))}]" in row["response"].split("\n\n")[k]
        assert row["response"].rstrip().endswith(row["report"])
    # MIMIC's official split, no patient in two splits; the benchmark comes out of train
    official = official_splits(Path(sources["mimic_cxr"]))
    patients: dict[str, set[str]] = {}
    for split, split_rows in rows.items():
        for row in split_rows:
            subject, expected = official[row["id"]]
            assert row["subject_id"] == subject and (expected == split or (split, expected) == ("benchmark", "train"))
            patients.setdefault(subject, set()).add(split)
    assert all(len(s) == 1 for s in patients.values())
    train = len(rows["train"]) + len(rows["benchmark"])
    assert len(rows["benchmark"]) == round(0.05 * train) == 1  # every demo trace has 4 steps: one stratum
    figures = manifest["figures"]
    assert figures["traces"] == 19 and figures["steps_grounded_share"] == 1.0
    assert figures["mean_steps_per_trace"] == pytest.approx(sum(len(r["steps"]) for r in every) / 19, abs=1e-3)
    words = sum(len(s["text"].split()) for r in every for s in r["steps"]) / 19
    assert figures["mean_rationale_words"] == pytest.approx(words, abs=0.05)
    assert manifest["fidelity"]["sample"] == 6 and manifest["fidelity"]["scored"] == 6
    readme = (out / "README.md").read_text()
    assert "mean steps per trace" in readme and "LLM stages" in readme


def test_benchmark_is_stratified_by_steps_and_patient_disjoint():
    train = {f"t{i}": (f"p{i // 2}", 2 + i % 3) for i in range(300)}  # strata of 100 traces, 2 per patient
    chosen, strata = benchmark_ids(train, 0.05, seed=3)
    # each patient's two traces lie in two strata: quotas of 5 are met to within 2, the total to within 1
    assert all(abs(v["benchmark"] - 5) <= 2 and v["benchmark"] + v["train"] == 100 for v in strata.values())
    assert abs(len(chosen) - 15) <= 1
    assert {str(n): sum(train[i][1] == n for i in chosen) for n in (2, 3, 4)} == {k: v["benchmark"] for k, v in
                                                                                 strata.items()}
    single = {f"t{i}": (f"p{i}", 2 + i % 3) for i in range(300)}  # one trace per patient: exact quotas
    assert {k: v["benchmark"] for k, v in benchmark_ids(single, 0.05, seed=3)[1].items()} == {"2": 5, "3": 5, "4": 5}
    taken = {train[i][0] for i in chosen}
    assert all(train[i][0] not in taken for i in set(train) - chosen)
    assert benchmark_ids(train, 0.05, seed=3)[0] == chosen != benchmark_ids(train, 0.05, seed=4)[0]


def test_export_is_the_public_example_layout(offline_build, tmp_path):
    target = tmp_path / "export"
    result = runner.invoke(cli.app, ["export", str(offline_build), "--format", "mmrad-ivl-jsonl", "--out", str(target)])
    assert result.exit_code == 0, result.output
    rows = rows_of(offline_build)
    lines = [json.loads(x) for x in (target / "train.jsonl").read_text().splitlines()]
    assert len(lines) == len(rows["train"]) and all(set(line) == {"prompt", "response", "images"} for line in lines)
    for line, row in zip(lines, sorted(rows["train"], key=lambda r: r["id"])):
        assert line["images"][0].endswith("problem_image_1.jpg")
        assert [Path(p).name for p in line["images"][1:]] == [f"reasoning_image_{k}.png"
                                                               for k in range(1, len(line["images"]))]
        assert line["response"].count("<image>") == len(line["images"]) - 1
        assert [(target / p).read_bytes() for p in line["images"]] == [i["bytes"] for i in row["images"]]


def test_fidelity_sheet_read_back_gives_human_agreement(offline_build, tmp_path):
    with open(offline_build / SHEET_FILE, newline="") as handle:
        sheet = list(csv.DictReader(handle))
    assert len(sheet) == 6 and all(r["ai_score"] in "12345" and r["expert_score"] == "" for r in sheet)
    ai = {r["id"]: int(r["ai_score"]) for r in sheet}
    expert = {i: (s if n % 2 else s - 1) for n, (i, s) in enumerate(sorted(ai.items()))}
    figures = fidelity_figures(ai, expert)
    assert figures["human_agreement"]["exact"] == pytest.approx(3 / 6)
    assert figures["human_agreement"]["within_one"] == 1.0
    assert figures["share_ge_4"] == pytest.approx(sum(v >= 4 for v in ai.values()) / 6)
    observed, weights = np.zeros((5, 5)), np.array([[(i - j) ** 2 / 16 for j in range(5)] for i in range(5)])
    for i, score in ai.items():
        observed[score - 1, expert[i] - 1] += 1
    chance = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    kappa = 1 - (weights * observed).sum() / (weights * chance).sum()  # quadratic-weighted, by hand
    assert figures["human_agreement"]["weighted_kappa"] == pytest.approx(kappa, abs=1e-4)

    # the filled sheet, read back by a rebuild: the figures land in the manifest, nothing is sent again
    filled = tmp_path / "sheet.csv"
    with open(filled, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(sheet[0]))
        writer.writeheader()
        writer.writerows({**r, "expert_score": str(expert[r["id"]])} for r in sheet)
    manifest = json.loads((offline_build / "build/manifest.json").read_text())
    again = runner.invoke(cli.app, [*json.loads((offline_build.parent / "args.json").read_text()), "--fidelity-expert",
                                    str(filled), "--overwrite"])
    assert again.exit_code == 0, again.output
    manifest = json.loads((offline_build / "build/manifest.json").read_text())
    assert manifest["fidelity"]["human_agreement"] == figures["human_agreement"]
    assert manifest["llm"]["pipeline"]["stages"]["summarise"]["requests"] == 0
    assert "Against a human expert" in (offline_build / "README.md").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("id,expert_score\nx,7\n")
    refused = runner.invoke(cli.app, [*json.loads((offline_build.parent / "args.json").read_text()),
                                      "--fidelity-expert", str(bad)])
    assert refused.exit_code == 2 and "row 2" in refused.output and "Traceback" not in refused.output


def test_a_killed_build_resumes_without_asking_again(spec, sources, tmp_path, monkeypatch):
    class Killed(Exception):
        pass

    def killed(self, row):
        raise Killed

    out = tmp_path / "build"
    real = ReflectStage.prompt
    monkeypatch.setattr(ReflectStage, "prompt", killed)  # dies as the reflect node starts
    result = runner.invoke(cli.app, args(sources, out, tmp_path / "c1.sqlite", "--llm", "offline", "--auditor", "offline"))
    assert isinstance(result.exception, Killed)
    assert len((out / LLM_STORE / "summarise.jsonl").read_text().splitlines()) == 19
    monkeypatch.setattr(ReflectStage, "prompt", real)
    result = runner.invoke(cli.app, args(sources, out, tmp_path / "empty.sqlite", "--llm", "offline", "--auditor",
                                         "offline"))
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "build/manifest.json").read_text())["llm"]["pipeline"]["stages"]
    assert (stages["summarise"]["reused"], stages["summarise"]["requests"]) == (19, 0)
    assert stages["reflect"]["requests"] == 19


def test_estimate_counts_the_roles(spec, sources, tmp_path):
    result = runner.invoke(cli.app, ["estimate", "mmrad-ivl", "--gemex-thinkvg", str(sources["gemex_thinkvg"]),
                                     "--mimic-cxr", str(sources["mimic_cxr"]), "--mimic-cxr-reports",
                                     str(sources["mimic_cxr_reports"]), "--llm", "openai:gpt-4o", "--auditor",
                                     "anthropic:claude-haiku-4-5", "--audit-sample", "5", "--json", "--cache",
                                     str(tmp_path / "none.sqlite")])
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.output[result.output.index("{"):])
    assert [(s["stage"], s["requests"]) for s in estimate["stages"]] == [
        ("summarise", 19), ("reflect", 19), ("cross_audit", 19), ("fidelity", 5)]


# --------------------------------------------------------------------------- through the real SDKs


def _text(messages) -> str:
    content = messages[-1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def _generator(model, system, messages):
    text = _text(messages)
    if "use these names exactly" in text:
        names = [line[2:] for line in text.split("use these names exactly):\n", 1)[1].split("\n\n")[0].splitlines()]
        return json.dumps({"steps": [{"region": n, "text": f"The {n} looks as described."} for n in names]}), None
    steps = json.loads(text.split("(JSON):\n", 1)[1].split("\n\n")[0])
    before = steps[0]["text"]
    steps[0]["text"] = before.replace("looks as described", "agrees with the report")
    return json.dumps({"steps": steps, "changes": [{"step": 0, "before": before, "after": steps[0]["text"],
                                                    "reason": "worded as the report"}]}), None


def _judge(model, system, messages):
    doubt = model == "judge-b" and "nodule" in _text(messages).split("(JSON):")[0].lower()
    return json.dumps({"consistent": not doubt, "reason": "nodule doubted" if doubt else "fine"}), None


def test_roles_through_real_sdks_and_adjudication_round_trip(spec, sources, tmp_path, monkeypatch):
    with FakeProviderServer() as gen, FakeProviderServer(_judge) as judge:
        gen.responder = lambda model, system, messages: (
            _judge(model, system, messages) if model.startswith("judge") else _generator(model, system, messages))
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", gen.openai_base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", judge.base_url)
        out = tmp_path / "build"
        base = args(sources, out, tmp_path / "c.sqlite", "--llm", "openai:writer", "--auditor", "openai:judge-a",
                    "--auditor", "anthropic:judge-b", "--audit-sample", "0")
        refused = runner.invoke(cli.app, base)
        assert refused.exit_code == 2 and "credentialed" in refused.output and gen.calls == 0
        result = runner.invoke(cli.app, [*base, "--approve-credentialed", "openai", "--approve-credentialed",
                                         "anthropic"])
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "build/manifest.json").read_text())
        queue = [json.loads(line) for line in (out / QUEUE_FILE).read_text().splitlines()]
        nodule = sum("nodule" in r["report"].lower() for split in rows_of(out).values() for r in split) + len(queue)
        assert queue and all("nodule" in q["item"]["report"].lower() for q in queue)
        assert all(q["item"]["changes"][0]["reason"] == "worded as the report" for q in queue)
        assert manifest["llm"]["verification"]["outcomes"]["disagree"] == len(queue)
        assert "cohen_kappa" in manifest["llm"]["verification"]
        kept = sum(manifest["splits"]["default"].values())
        assert kept + len(queue) == 19 and nodule >= len(queue)
        row = next(r for split in rows_of(out).values() for r in split)
        change = row["llm"]["reflection_changes"][0]
        assert change["step"] == 0 and "agrees with the report" in change["after"]

        decisions = tmp_path / "decisions.jsonl"
        decisions.write_text("\n".join(json.dumps({**q, "decision": "accept" if i == 0 else "reject"})
                                       for i, q in enumerate(queue)))
        calls = gen.calls + judge.calls
        result = runner.invoke(cli.app, ["adjudicate", "apply", str(out), str(decisions)])
        assert result.exit_code == 0, result.output
        assert gen.calls + judge.calls == calls, "applying decisions must not send anything"
        manifest = json.loads((out / "build/manifest.json").read_text())
        assert sum(manifest["splits"]["default"].values()) == kept + 1
        assert manifest["rejects"].get("adjudicator_rejected", 0) == len(queue) - 1
        adjudicated = [r["id"] for split in rows_of(out).values() for r in split
                       if r["llm"]["verification"] == "adjudicated"]
        assert adjudicated == [queue[0]["id"]]
