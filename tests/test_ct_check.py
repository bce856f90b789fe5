"""`radcorpora check` on ct-reasoning: a build with `--slices N` trains the image model (slice PNGs)
and its text-only twin (a step of the tiny model: the wiring and the report, not the verdict); a
build without slices is refused with exit 2 and one line saying to build with --slices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from radcorpora import cli
from radcorpora.reference_models.check import CheckConfig, run_check
from radcorpora.reference_models.metric_kit import Kit
from radcorpora.registry import CORPORA

runner = CliRunner()
FLAGS = {"ct_rate": "--ct-rate", "amos_mm": "--amos-mm", "abdomen_atlas": "--abdomen-atlas"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return CORPORA["ct-reasoning"].demo.write_sources(tmp_path_factory.mktemp("ct-src"), {})


def _build(sources, out: Path, *extra: str) -> Path:
    result = runner.invoke(cli.app, ["build", "ct-reasoning", *[x for k, f in FLAGS.items() for x in (f, str(sources[k]))],
                                     "--out", str(out), "--cache", str(out.parent / "c.sqlite"), "--llm", "offline",
                                     "--questions-per-report", "3", *extra])
    assert result.exit_code == 0, result.output
    return out


def test_check_compares_the_slice_model_with_its_text_only_twin(sources, tmp_path):
    build = _build(sources, tmp_path / "slices", "--slices", "2")
    report = run_check(build, CheckConfig(preset="tiny-lora", max_steps=1, eval_limit=2), CORPORA["ct-reasoning"].evaluation,
                       kit=Kit(meteor=None), max_new_tokens=6)
    assert list(report["variants"]) == ["image", "text-only"] and report["metric"] == "rouge_1"
    image, text = report["image"], report["text_only"]
    assert report["gap"] == round(image["score"] - text["score"], 2) and report["passed"] is (report["gap"] >= 5.0)
    assert report["settings"]["eval_config"] == "vqa_thinking" and report["settings"]["eval_rows"] == 2
    for result in (image, text):
        metrics = result["metrics"]
        assert {"bleu", "rouge_1", "answer_accuracy", "format_rate"} <= set(metrics)
        assert metrics["accuracy_by"] == "normalised match"
        assert "skipped" in metrics["bertscore"] and "skipped" in metrics["green"]
        samples = [json.loads(x) for x in (build / result["predictions"]).read_text().splitlines()]
        assert len(samples) == 2 and all({"reference", "prediction", "parsed_answer", "matched"} <= set(s) for s in samples)
    card = (build / "README.md").read_text()
    assert "## Reference check" in card and "text-only twin" in card


def test_a_build_without_slices_is_refused(sources, tmp_path):
    build = _build(sources, tmp_path / "plain")
    result = runner.invoke(cli.app, ["check", str(build), "--max-steps", "1"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--slices" in lines[0] and "Traceback" not in result.output
    assert not (build / "build" / "reference_check").exists()  # refused before any training


def test_train_on_another_config_renders_its_own_rows(sources, tmp_path):
    """`train --config report_thinking` trains that config's conversations (the slices and the
    report-writing instruction; the narrative then the report), not the vqa_thinking renderer (a
    KeyError traceback before); `evaluate --config report_thinking` is refused in one line: the
    corpus' metrics score vqa_thinking only."""
    from radcorpora.corpora.ct_reasoning import conversations
    from radcorpora.reference_models.data import training_examples

    build = _build(sources, tmp_path / "b", "--slices", "2")
    out = tmp_path / "run"
    result = runner.invoke(cli.app, ["train", str(build), "--config", "report_thinking", "--model", "tiny",
                                     "--preset", "tiny-lora", "--max-steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    recipe = CORPORA["ct-reasoning"].evaluation
    examples = training_examples(build, recipe, "report_thinking", render=conversations.report_thinking)
    first = examples[0]
    assert first["conversations"][0]["value"].count("<image>") == len(first["images"]) == 2
    assert first["conversations"][1]["value"].startswith("<think>\nFindings: ")
    with pytest.raises(Exception, match="declares no conversation"):
        training_examples(build, recipe, "report_thinking")  # without its renderer: refused, not a KeyError
    asked = runner.invoke(cli.app, ["evaluate", str(build), "--adapter", str(out), "--config", "report_thinking"])
    assert asked.exit_code == 2 and "score `vqa_thinking` rows only" in asked.output
