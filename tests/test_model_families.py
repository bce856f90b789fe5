"""Real model families by `--model hf:PATH`: a tiny random-init checkpoint of each family, built
offline (reference_models/families.py), through the assistant-span fallback (their released chat
templates carry no generation markers), multi-image rows, left-padded generation, and
`radcorpora train` / `evaluate` (and `check` for one family) on the demo build."""

from __future__ import annotations

import io
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from conftest import copy_tree
from PIL import Image
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.corpora.radimagenet_vqa.spec import SPEC as RADIMAGENET_VQA
from radcorpora.reference_models import collate
from radcorpora.reference_models.data import training_examples, training_texts
from radcorpora.reference_models.families import FAMILIES, tiny_checkpoint
from radcorpora.reference_models.generation import answer_turns
from radcorpora.reference_models.models import (
    FAMILY_NAMES,
    ModelSpecError,
    load_model,
    resolve_model,
)

RECIPE = RADIMAGENET_VQA.evaluation
# what the template puts between the generation prompt and the answer: SmolVLM's prompt is
# "Assistant:" and its turns "Assistant: <text>", so the model learns the space too
LEAD = {"idefics3": " "}
REAL_PROCESSOR = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor",
                  "llava_onevision": "LlavaOnevisionProcessor", "mllama": "MllamaProcessor",
                  "idefics3": "Idefics3Processor"}


@pytest.fixture(scope="module")
def checkpoints(demo_build, tmp_path_factory):
    texts = training_texts(demo_build, RECIPE)[:3000]
    root = tmp_path_factory.mktemp("families")
    return {name: tiny_checkpoint(name, root / name, texts) for name, family in FAMILIES.items() if not family.missing()}


@pytest.fixture(params=list(FAMILIES))
def family(request, checkpoints):
    name = request.param
    if missing := FAMILIES[name].missing():
        import transformers

        pytest.skip(f"{name}: transformers {transformers.__version__} has no {', '.join(missing)}")
    return name


@pytest.fixture(scope="module")
def rows(demo_build):
    examples = training_examples(demo_build, RECIPE)
    return [examples[i] for i in range(4)]


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _labelled(processor, batch, i: int) -> str:
    labels = batch["labels"][i]
    return processor.tokenizer.decode(labels[labels != -100])


def _answers(row) -> list[str]:
    return [t["value"] for t in row["conversations"] if t["from"] == "gpt"]


def test_checkpoint_folders_load_as_their_family(family, checkpoints):
    """config.json names the family, the released template comes back (no generation markers, so
    training takes the prefix fallback), and the processor loads without torchvision."""
    folder = checkpoints[family]
    assert json.loads((folder / "config.json").read_text())["model_type"] == FAMILIES[family].model_type
    # the family's own processor class is named, as in a released checkpoint
    assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == REAL_PROCESSOR[family]
    model, processor = load_model(folder)
    assert processor.chat_template == FAMILIES[family].template
    assert not collate.marks_assistant_turns(processor)
    assert processor.image_token == FAMILIES[family].image_token
    assert processor.tokenizer.convert_tokens_to_ids(FAMILIES[family].turn_end) == model.generation_config.eos_token_id
    assert resolve_model(f"hf:{folder}", folder.parent, list) == folder


def test_labels_are_exactly_the_assistant_text(family, checkpoints, rows):
    """Prefix-fallback labels decode to the answers and the family's turn end, nothing else, with
    images and without, for every turn or only the last."""
    _, processor = load_model(checkpoints[family])
    end, lead = FAMILIES[family].turn_end, LEAD.get(family, "")
    multi_turn = {"id": "two-turns", "image": rows[0]["image"], "conversations": [*rows[0]["conversations"], *[
        {"from": t["from"], "value": t["value"].replace("<image>\n", "")} for t in rows[1]["conversations"]]]}
    batch_rows = [*rows, multi_turn]
    for text_only in (False, True):
        batch = collate.collate(processor, batch_rows, text_only=text_only, max_length=1024)
        assert ("pixel_values" in batch) != text_only
        for i, row in enumerate(batch_rows):
            assert _labelled(processor, batch, i) == "".join(f"{lead}{a}{end}" for a in _answers(row))
    last = collate.collate(processor, [multi_turn], text_only=False, max_length=1024, loss="final_assistant")
    assert _labelled(processor, last, 0) == f"{lead}{_answers(multi_turn)[-1]}{end}"


def _image_count(family: str, processor, batch, i: int) -> int:
    """Images the model sees in row i: runs of the image token (Mllama: one token per image)."""
    ids = (batch["input_ids"][i] == processor.image_token_id).int()
    return int(ids.sum()) if family == "mllama" else int(((ids[1:] == 1) & (ids[:-1] == 0)).sum() + ids[0])


def test_multi_image_rows_collate_train_and_generate(family, checkpoints, rows):
    """An MMRad-IVL-like row (full image, then two crops) next to a one-image row: every image
    reaches the model, the loss is finite, labels stay on the answer; crops inside the response
    (MMRad-IVL's own layout) are trained on the text around them, or refused by name where the
    family's template drops images in assistant turns (Qwen3-VL)."""
    model, processor = load_model(checkpoints[family])
    end, lead = FAMILIES[family].turn_end, LEAD.get(family, "")
    full, crops = rows[0]["image"], [_png((200, 10, 10), (40, 30)), _png((10, 200, 10), (20, 50))]
    in_prompt = {"id": "crops-in-prompt", "images": [full, *crops], "conversations": [
        {"from": "human", "value": "<image>\nThe full image, then two crops.\n<image>\n<image>\nWhich side?"},
        {"from": "gpt", "value": "The left lung."}]}
    batch = collate.collate(processor, [in_prompt, rows[1]], text_only=False, max_length=1024)
    assert [_image_count(family, processor, batch, i) for i in range(2)] == [3, 1]
    assert _labelled(processor, batch, 0) == f"{lead}The left lung.{end}"
    assert _labelled(processor, batch, 1) == f"{lead}{_answers(rows[1])[0]}{end}"
    assert torch.isfinite(model(**batch).loss)

    ivl = {"id": "ivl-trace", "images": [full, *crops], "prompt": "<image>\nFind the abnormal region.",
           "response": "Mediastinum: <image> normal. Lungs: <image> opacity on the left. Answer: left lung."}
    if family == "qwen3_vl":
        with pytest.raises(collate.TrainingError, match=r"row ivl-trace: 3 image\(s\) \(1 in user turns, 2 in assistant"):
            collate.collate(processor, [ivl], text_only=False, max_length=1024)
    else:
        traced = collate.collate(processor, [ivl, rows[1]], text_only=False, max_length=1024)
        assert _image_count(family, processor, traced, 0) == 3
        text = _labelled(processor, traced, 0)
        assert text.endswith(end)
        assert text.split() == f"{lead}{ivl['response'].replace('<image>', ' ')}{end}".split()
        assert torch.isfinite(model(**traced).loss)

    # left padding: a batch answers as each history does alone (greedy)
    long_question = {"from": "human", "value": rows[2]["conversations"][0]["value"] + " Answer in one word, please."}
    histories = [in_prompt["conversations"][:1], [long_question]]
    images = [collate.decode_images(in_prompt), collate.decode_images(rows[2])]
    batched = answer_turns(model, processor, histories, images, max_new_tokens=4)
    assert batched == [answer_turns(model, processor, [h], [p], max_new_tokens=4)[0] for h, p in zip(histories, images)]


def test_train_and_evaluate_by_cli(family, checkpoints, demo_build, tmp_path):
    """`radcorpora train --model hf:<tiny family checkpoint>` then `radcorpora evaluate` on its
    output. LoRA with the head and embeddings saved whole (tiny-lora: what a random base needs, and
    the module names differ per family)."""
    runner, out = CliRunner(), tmp_path / "run"
    trained = runner.invoke(app, ["train", str(demo_build), "--model", f"hf:{checkpoints[family]}", "--out", str(out),
                                  "--preset", "tiny-lora", "--max-steps", "2"])
    assert trained.exit_code == 0, trained.output
    assert (out / "adapter" / "adapter_config.json").exists()
    result = json.loads((out / "train_result.json").read_text())
    assert result["steps"] == 2
    assert result["variant"] is None  # rows rendered one way only: text_only says what the run saw
    evaluated = runner.invoke(app, ["evaluate", str(demo_build), "--adapter", str(out), "--limit", "5"])
    assert evaluated.exit_code == 0, evaluated.output
    predictions = (out / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 5 and json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_check_command_on_a_family_checkpoint(checkpoints, demo_build, tmp_path, family):
    """`radcorpora check --model hf:...` end to end on every family (both variants trained and
    evaluated; a margin no random model can miss, so the exit code is the check's plumbing)."""
    build = copy_tree(demo_build, tmp_path / "build")
    model = f"hf:{checkpoints[family]}"
    result = CliRunner().invoke(app, ["check", str(build), "--model", model, "--max-steps", "1", "--eval-limit", "4",
                                      "--margin", "-1000"])
    assert result.exit_code == 0, result.output
    report = json.loads((build / "build" / "reference_check.json").read_text())
    assert report["passed"] and report["settings"]["model"] == model


def test_model_family_names_and_refusals(demo_build, tmp_path):
    assert set(FAMILY_NAMES) == set(FAMILIES)
    (tmp_path / "text-only").mkdir()
    (tmp_path / "text-only" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelSpecError, match="'llama' is not a vision-language model"):
        resolve_model(f"hf:{tmp_path / 'text-only'}", tmp_path, list)
    with pytest.raises(ModelSpecError, match="unknown model family 'gemma'"):
        tiny_checkpoint("gemma", tmp_path / "gemma", ["a"])
    bad = CliRunner().invoke(app, ["train", str(demo_build), "--model", f"hf:{tmp_path / 'text-only'}",
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not a vision-language model" in bad.output and "Traceback" not in bad.output
