"""The tiny reference model, fine-tuning and evaluation on CPU: masks, loss, resume, save/reload."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from radcorpora.corpora.radimagenet_vqa.spec import SPEC as RADIMAGENET_VQA
from radcorpora.publish.views import QuestionView
from radcorpora.reference_models import collate, sft
from radcorpora.reference_models.data import evaluation_rows, training_examples, training_texts

RECIPE = RADIMAGENET_VQA.evaluation
from radcorpora.reference_models.evaluate import evaluate_radimagenet_vqa, generate, question_prompt
from radcorpora.reference_models.models import (
    CHAT_TEMPLATE,
    ModelSpecError,
    build_tiny,
    load_model,
    resolve_model,
)


@pytest.fixture(scope="module")
def tiny(demo_build, tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "base", training_texts(demo_build, RECIPE), vocab_size=600)


@pytest.fixture(scope="module")
def examples(demo_build):
    examples = training_examples(demo_build, RECIPE)
    assert isinstance(examples, QuestionView)
    return examples


def _quick(**update) -> sft.SFTConfig:
    return sft.PRESETS["tiny-lora"].model_copy(update={"max_steps": 12, "batch_size": 4, "log_every": 1,
                                                       "warmup_steps": 2, **update})


def test_labels_cover_assistant_answers_only(tiny, examples):
    _, processor = load_model(tiny)
    rows = [examples[i] for i in range(6)]
    batch = collate.collate(processor, rows, text_only=False, max_length=512)
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == image_id).any(), "image tokens expected in the prompt"
    for i, row in enumerate(rows):
        labelled = batch["labels"][i][batch["labels"][i] != -100]
        # exactly the answer and the end-of-turn token: no prompt, image or padding token
        assert tokenizer.decode(labelled) == row["conversations"][1]["value"] + "<|im_end|>"
        assert not (labelled == image_id).any()
    with pytest.raises(collate.TrainingError, match=rf"{rows[0]['id']} \(\d+ tokens\)"):
        collate.collate(processor, rows, text_only=False, max_length=20)
    text_batch = collate.collate(processor, rows, text_only=True, max_length=512)
    assert "pixel_values" not in text_batch and not (text_batch["input_ids"] == image_id).any()


def test_prefix_masks_match_generation_tag_masks(tiny, examples):
    """Real checkpoints' templates have no {% generation %} tags: the fallback must find the same tokens."""
    _, processor = load_model(tiny)
    rows = [examples[i] for i in range(5)]
    multi_turn = {"image": rows[0]["image"], "conversations": [*rows[0]["conversations"], *[
        {"from": t["from"], "value": t["value"].replace("<image>\n", "")} for t in rows[1]["conversations"]]]}
    tagged = collate.collate(processor, [*rows, multi_turn], text_only=False, max_length=512)
    plain = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    processor.chat_template = processor.tokenizer.chat_template = plain
    assert not collate.marks_assistant_turns(processor)
    fallback = collate.collate(processor, [*rows, multi_turn], text_only=False, max_length=512)
    assert torch.equal(tagged["labels"], fallback["labels"])
    assert (tagged["labels"][-1] != -100).sum() > (tagged["labels"][0] != -100).sum()  # both answers of two turns


def test_lora_training_lowers_loss_and_reloads_identically(tiny, examples, demo_build, tmp_path):
    out = tmp_path / "run"
    result = sft.train(tiny, examples, out, _quick(max_steps=30))
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3
    assert (out / "adapter/adapter_config.json").exists() and not list(out.glob("checkpoint-*"))

    rows = evaluation_rows(demo_build, RECIPE, limit=12)
    prompts = [question_prompt(r["question"], r["choices"]) for r in rows]
    model, processor, trained = sft.load_trained(out)
    assert trained is not None and trained.method == "lora" and trained.steps == result.steps
    first = generate(model, processor, rows, prompts, text_only=False)
    again = generate(*sft.load_trained(out / "adapter")[:2], rows, prompts, text_only=False)  # a bare adapter folder
    merged_dir = tmp_path / "merged"
    model.merge_and_unload().save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
    merged = generate(*load_model(merged_dir), rows, prompts, text_only=False)
    base = generate(*load_model(tiny), rows, prompts, text_only=False)
    assert first == again == merged
    assert first != base


def test_killed_training_resumes_to_the_same_weights(tiny, examples, tmp_path):
    config = _quick(method="full", max_steps=8, save_every=4, learning_rate=1e-3)
    straight = sft.train(tiny, examples, tmp_path / "straight", config)

    class Killed(Exception):
        pass

    def kill_at_step_6(message: str) -> None:
        if message.startswith("step 6/"):
            raise Killed

    with pytest.raises(Killed):
        sft.train(tiny, examples, tmp_path / "killed", config, log=kill_at_step_6)
    assert [p.name for p in (tmp_path / "killed").glob("checkpoint-*")] == ["checkpoint-4"]
    said: list[str] = []
    resumed = sft.train(tiny, examples, tmp_path / "killed", config, log=said.append)
    assert said[0] == "resuming from checkpoint-4"
    assert resumed.steps == straight.steps == 8
    assert resumed.last_loss == pytest.approx(straight.last_loss, rel=1e-5)
    a = load_model(tmp_path / "straight/model")[0].state_dict()
    b = load_model(tmp_path / "killed/model")[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # a finished run is returned as it is; other settings in the same folder are refused
    assert sft.train(tiny, examples, tmp_path / "straight", config).seconds == straight.seconds
    with pytest.raises(sft.SettingsChanged, match="other settings"):
        sft.train(tiny, examples, tmp_path / "straight", config.model_copy(update={"learning_rate": 5e-4}))


def test_evaluation_writes_a_traceable_table(tiny, demo_build):
    rows = evaluation_rows(demo_build, RECIPE, limit=27)
    model, processor = load_model(tiny)
    metrics, samples = evaluate_radimagenet_vqa(model, processor, rows)
    assert metrics["questions"] == len(samples) == 27
    for cell, accuracy in metrics["by_task_and_type"].items():
        task, qtype = cell.split("/")
        hits = [s["correct"] for s in samples if s["task"] == task and s["question_type"] == qtype]
        assert accuracy == round(100 * sum(hits) / len(hits), 2)
    assert metrics["accuracy"] == round(100 * sum(s["correct"] for s in samples) / 27, 2)


def test_model_specs(tmp_path, demo_build):
    with pytest.raises(ModelSpecError, match="not a checkpoint folder"):
        resolve_model(f"hf:{tmp_path}/nothing", tmp_path, list)
    with pytest.raises(ModelSpecError, match="expected `tiny`"):
        resolve_model("qwen", tmp_path, list)
    built = resolve_model("tiny", tmp_path, lambda: training_texts(demo_build, RECIPE))
    assert resolve_model(f"hf:{built}", tmp_path, list) == built
    assert resolve_model("tiny", tmp_path, lambda: pytest.fail("rebuilt")) == built  # reused, not rebuilt


def test_train_and_evaluate_commands(demo_build, tmp_path):
    from typer.testing import CliRunner

    from radcorpora.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    trained = runner.invoke(app, ["train", str(demo_build), "--model", "tiny", "--out", str(out),
                                  "--preset", "tiny-lora", "--max-steps", "3", "--text-only"])
    assert trained.exit_code == 0, trained.output
    assert (out / "tiny-base/config.json").exists() and (out / "adapter/adapter_config.json").exists()
    evaluated = runner.invoke(app, ["evaluate", str(demo_build), "--adapter", str(out), "--limit", "9"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "images withheld" in evaluated.output  # a text-only run is evaluated text-only
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert metrics["questions"] == len(predictions) == 9
    assert metrics["accuracy"] == round(100 * sum(p["correct"] for p in predictions) / 9, 2)

    bad = runner.invoke(app, ["train", str(demo_build), "--model", "qwen", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "expected `tiny`" in bad.output
    held_out = runner.invoke(app, ["train", str(demo_build), "--model", "tiny", "--out", str(tmp_path / "y"),
                                   "--config", "benchmark"])
    assert held_out.exit_code == 2 and "held-out evaluation config" in held_out.output
