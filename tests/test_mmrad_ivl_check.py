"""`radcorpora check` on an mmrad-ivl build: the paper's contrast (crops vs no crops) plus the
text-only twin, each trained (a step of the tiny model: the wiring and the report, not the
verdict) and evaluated on the held-out test split; the report holds all three, passes on the
crops - no-crops gap, keeps per-sample predictions and writes the card section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from radcorpora import cli
from radcorpora.reference_models.check import CheckConfig, CheckRefused, read_check, run_check
from radcorpora.reference_models.metric_kit import Kit
from radcorpora.registry import CORPORA

runner = CliRunner()


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    sources = CORPORA["mmrad-ivl"].demo.write_sources(tmp_path_factory.mktemp("mm-src"), {})
    out = tmp_path_factory.mktemp("mm-check") / "build"
    result = runner.invoke(cli.app, [
        "build", "mmrad-ivl", "--gemex-thinkvg", str(sources["gemex_thinkvg"]), "--mimic-cxr", str(sources["mimic_cxr"]),
        "--mimic-cxr-reports", str(sources["mimic_cxr_reports"]), "--out", str(out), "--cache", str(out.parent / "c.sqlite"),
        "--llm", "offline", "--auditor", "offline", "--crop-margin", "0.05", "--audit-sample", "4"])
    assert result.exit_code == 0, result.output
    return out


def test_check_runs_the_papers_contrast_and_the_text_only_twin(build):
    recipe = CORPORA["mmrad-ivl"].evaluation
    said: list[str] = []
    report = run_check(build, CheckConfig(preset="tiny-lora", max_steps=1, eval_limit=1, margin=5.0), recipe,
                       log=said.append, kit=Kit(meteor=None), max_new_tokens=6)
    assert list(report["variants"]) == ["crops", "no-crops", "text-only"]
    assert report["contrast"]["model"] == "crops" and report["contrast"]["baseline"] == "no-crops"
    assert "no-crops" in report["contrast"]["rule"]
    scores = {name: v["score"] for name, v in report["variants"].items()}
    assert report["metric"] == "report_rouge_l" and all(isinstance(s, float) for s in scores.values())
    assert report["gap"] == round(scores["crops"] - scores["no-crops"], 2)
    assert report["passed"] is (report["gap"] >= 5.0)
    assert report["gaps"] == {"crops - no-crops": report["gap"], "crops - text-only": round(scores["crops"] - scores["text-only"], 2)}
    assert report["image"] == report["variants"]["crops"] and report["text_only"] == report["variants"]["text-only"]
    assert report["variants"]["text-only"]["images"] is False and report["settings"]["eval_split"] == "test"
    for result in report["variants"].values():
        metrics = result["metrics"]
        assert {"report_bleu1", "report_bleu4", "report_rouge_l", "grounding_consistency", "grounded_share"} <= set(metrics)
        assert "skipped" in metrics["radgraph"] and metrics["generation_consistency"].startswith("n/a")
        lines = (build / result["predictions"]).read_text().splitlines()
        assert len(lines) == report["settings"]["eval_rows"] == 1 and json.loads(lines[0])["reference_steps"]
        assert result["train"]["steps"] == 1
    # the crops model saw its images: the crops conversation has one human turn per image
    crops_examples = report["variants"]["crops"]["training_examples"]
    assert crops_examples == report["variants"]["no-crops"]["training_examples"] == report["settings"]["training_examples"]
    card = (build / "README.md").read_text()
    assert "## Reference check" in card and "Pass rule: the crops model's report ROUGE-L" in card
    section = card.split("## Reference check", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["", "crops", "no-crops", "text-only twin"]
    assert "build/reference_check/{crops,no-crops,text-only}/" in section
    assert read_check(build)["gap"] == report["gap"] and any(m.startswith("[no-crops]") for m in said)

    with pytest.raises(CheckRefused, match="add no-crops"):
        run_check(build, CheckConfig(preset="tiny-lora", max_steps=1), recipe, variants=["crops", "text-only"])
    refused = runner.invoke(cli.app, ["check", str(build), "--variant", "crops", "--variant", "sideways"])
    assert refused.exit_code == 2 and "no variant 'sideways'" in refused.output


def test_train_text_only_trains_the_checks_twin_and_evaluate_asks_with_it(build, tmp_path):
    """`train --text-only` trains what `check` trains as the text-only twin (the no-crops
    conversation, images withheld), not the crops conversation stripped of its images; the run
    records the rendering and `evaluate` asks with it by default."""
    from radcorpora.reference_models.data import training_examples

    recipe = CORPORA["mmrad-ivl"].evaluation
    out = tmp_path / "twin"
    result = runner.invoke(cli.app, ["train", str(build), "--model", "tiny", "--preset", "tiny-lora", "--max-steps", "1",
                                     "--text-only", "--out", str(out)])
    assert result.exit_code == 0, result.output
    trained = json.loads((out / "train_result.json").read_text())
    assert trained["variant"] == "text-only" and trained["text_only"] is True and "(text-only)" in result.output
    twin, crops = (training_examples(build, recipe, variant=v) for v in ("text-only", "crops"))
    assert twin[0]["conversations"] != crops[0]["conversations"]  # the two renderings differ: the choice matters
    assert [t["value"] for t in twin[0]["conversations"]] == \
        [t["value"] for t in training_examples(build, recipe, variant="no-crops")[0]["conversations"]]

    asked = runner.invoke(cli.app, ["evaluate", str(build), "--adapter", str(out), "--limit", "1"])
    assert asked.exit_code == 0, asked.output
    assert "(text-only, " in asked.output and "images withheld" in asked.output

    # the crops rendering cuts the one response into a gpt turn per crop: every one trains (as in
    # `check`), where the config's intent (final_assistant) would train the last piece only
    crops = tmp_path / "crops"
    result = runner.invoke(cli.app, ["train", str(build), "--model", "tiny", "--preset", "tiny-lora", "--max-steps", "1",
                                     "--out", str(crops)])
    assert result.exit_code == 0, result.output
    settings = json.loads((crops / "run_settings.json").read_text())
    assert settings["variant"] == "crops" and "loss" not in settings  # all_assistant is the unmarked default
    assert json.loads((out / "run_settings.json").read_text())["loss"] == "final_assistant"  # the twin: one turn

    bad = runner.invoke(cli.app, ["train", str(build), "--model", "tiny", "--out", str(tmp_path / "bad"),
                                  "--variant", "sideways"])
    assert bad.exit_code == 2 and "no variant 'sideways'" in bad.output and not (tmp_path / "bad").exists()
