"""Trainer exports of configs stored in their corpus' own shape (mmrad-ivl's trace rows, ct-reasoning's
four configs): each row is exported as its conversation (`ConfigSpec.conversation`), in a chosen
rendering (`--variant`), with the loss intent that rendering carries. Checked against the rows
read here from the build's Parquet: image order and bytes, `<image>` tags, turns, texts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.registry import CORPORA

runner = CliRunner()
FORMATS = ("llava", "sharegpt", "trl", "swift")


def _rows(build: Path, config: str, split: str) -> dict[str, dict]:
    found = {}
    for path in sorted((build / "data" / config).glob(f"{split}-*.parquet")):
        found.update({r["id"]: r for r in pq.read_table(path).to_pylist()})
    return found


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _export(build: Path, out: Path, *args: str) -> dict:
    result = runner.invoke(app, ["export", str(build), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / "export_settings.json").read_text())


@pytest.fixture(scope="module")
def mmrad(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mm-export")
    sources = CORPORA["mmrad-ivl"].demo.write_sources(root / "src", {})
    out = root / "build"
    result = runner.invoke(app, [
        "build", "mmrad-ivl", "--gemex-thinkvg", str(sources["gemex_thinkvg"]), "--mimic-cxr", str(sources["mimic_cxr"]),
        "--mimic-cxr-reports", str(sources["mimic_cxr_reports"]), "--out", str(out), "--cache", str(root / "c.sqlite"),
        "--llm", "offline", "--auditor", "offline", "--crop-margin", "0.05", "--audit-sample", "0"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ct-export")
    sources = CORPORA["ct-reasoning"].demo.write_sources(root / "src", {})
    out = root / "build"
    result = runner.invoke(app, [
        "build", "ct-reasoning", "--ct-rate", str(sources["ct_rate"]), "--amos-mm", str(sources["amos_mm"]),
        "--abdomen-atlas", str(sources["abdomen_atlas"]), "--out", str(out), "--cache", str(root / "c.sqlite"),
        "--llm", "offline", "--slices", "2", "--questions-per-report", "2", "--rewrite", "--translate", "de"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_mmrad_ivl_exports_its_crops_conversation(mmrad, tmp_path, fmt):
    """Crops (the default): the full image with the instruction, then one human turn per crop, each
    gpt turn a piece of the response; images in `<image>` order are the row's stored images; every
    assistant turn trains (the rendering's intent, recorded); the files load with `datasets`."""
    settings = _export(mmrad, tmp_path / fmt, "--format", fmt)
    assert settings["rendering"] == "crops" and settings["loss"] == "all_assistant"
    rows = _rows(mmrad, "default", "train")
    name = f"default-train.{'json' if fmt == 'llava' else 'jsonl'}"
    path = tmp_path / fmt / name
    lines = json.loads(path.read_text()) if fmt == "llava" else [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == len(rows) > 0
    assert load_dataset("json", data_files=str(path), split="train").num_rows == len(rows)
    for line in lines:
        row = rows[line["id"]]
        images = line.get("image") or line.get("images")
        assert [_sha((tmp_path / fmt / p).read_bytes()) for p in images] == [_sha(i["bytes"]) for i in row["images"]]
        if fmt == "llava":
            turns = line["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * len(row["images"])
            said = [t["value"] for t in turns]
            assert sum(s.count("<image>") for s in said) == len(row["images"])
            joined = " <image> ".join(said[1::2])  # the response again, cut at its crops (nothing lost)
            assert " ".join(joined.split()) == " ".join(row["response"].split())
            assert said[0] == row["prompt"] and row["report"] in said[-1]
        if fmt == "swift":
            assistant = [m for m in line["messages"] if m["role"] == "assistant"]
            assert len(assistant) == len(row["images"]) and all(m["loss"] for m in assistant)


def test_mmrad_ivl_no_crops_and_refusals(mmrad, tmp_path):
    settings = _export(mmrad, tmp_path / "nc", "--format", "llava", "--variant", "no-crops")
    assert settings["rendering"] == "no-crops" and settings["loss"] == "final_assistant"
    rows = _rows(mmrad, "default", "train")
    for line in json.loads((tmp_path / "nc/default-train.json").read_text()):
        row = rows[line["id"]]
        assert [t["from"] for t in line["conversations"]] == ["human", "gpt"] and len(line["image"]) == 1
        assert _sha((tmp_path / "nc" / line["image"][0]).read_bytes()) == _sha(row["images"][0]["bytes"])
        assert "<image>" not in line["conversations"][1]["value"] and row["report"] in line["conversations"][1]["value"]
    for args, message in ((["--format", "llava", "--variant", "text-only"], "withholds the images at training time"),
                          (["--format", "trl", "--variant", "sideways"], "no variant 'sideways'"),
                          (["--format", "mmrad-ivl-jsonl", "--variant", "crops"], "own layout")):
        result = runner.invoke(app, ["export", str(mmrad), "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_ct_reasoning_exports_every_config(ct, tmp_path):
    """vqa_thinking as the reference models train on it (slices, question; thinking and answer in
    tags), report_thinking (slices; the narrative as the thinking, the report as the answer), and the
    rewrite and translation as text-to-text turns; sharegpt and trl."""
    expected_images = {"vqa_thinking": 2, "report_thinking": 2, "report_rewrite": 0, "translation": 0}
    for config, n_images in expected_images.items():
        rows = _rows(ct, config, "train")
        out = tmp_path / config
        settings = _export(ct, out, "--format", "sharegpt", "--config", config)
        assert settings["loss"] == ("final_assistant" if config in ("vqa_thinking", "report_thinking") else "all_assistant")
        lines = [json.loads(x) for x in (out / f"{config}-train.jsonl").read_text().splitlines()]
        assert len(lines) == len(rows) > 0
        for line in lines:
            row = rows[line["id"]]
            human, gpt = (t["value"] for t in line["conversations"])
            assert [t["from"] for t in line["conversations"]] == ["human", "gpt"]
            assert len(line["images"]) == human.count("<image>") == n_images
            if n_images:
                assert [_sha((out / p).read_bytes()) for p in line["images"]] == \
                    [_sha(s["image"]["bytes"]) for s in row["volume"]["slices"]]
            if config == "vqa_thinking":
                assert human.endswith(row["question"]) and gpt == f"<think>\n{row['thinking']}\n</think>\n<answer>{row['answer']}</answer>"
            elif config == "report_thinking":
                assert gpt.endswith(f"<answer>{row['report']}</answer>")
                assert all(row[k] in gpt for k in ("findings_rationale", "impression_rationale", "follow_up_rationale"))
            elif config == "report_rewrite":
                assert human.endswith(row["report"]) and gpt == row["rewrite"]
            else:
                assert "into German" in human and human.endswith(row["report"]) and gpt == row["translation"]
    trl = _export(ct, tmp_path / "trl", "--format", "trl", "--config", "translation")
    assert trl["rendering"] == "image" and (tmp_path / "trl/translation-train.jsonl").exists()


def test_variant_refused_for_a_config_that_holds_its_conversations(demo_build, tmp_path):
    result = runner.invoke(app, ["export", str(demo_build), "--format", "llava", "--variant", "crops",
                                 "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "holds its conversations as they are" in result.output
