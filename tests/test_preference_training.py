"""Preference (DPO) training of the tiny model through TRL's DPOTrainer: the first loss is ln 2
(policy = reference), the trained model's implicit reward prefers the chosen answers (computed
here from log-probabilities, not by TRL), a killed full run with images resumes to the same
weights (the reference stays the untrained base), and `radcorpora train` reads TRL preference
JSONL (as `radcorpora export --format trl` writes it) and a preference build's PreferencePair rows."""

from __future__ import annotations

import hashlib
import io
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from PIL import Image
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.reference_models import preference, sft
from radcorpora.reference_models.models import build_tiny, load_model

FINDINGS = ["A nodule in the left upper lobe.", "Pleural effusion on the right.", "Cardiomegaly.",
            "A fracture of the sixth rib.", "No acute findings."]
WRONG = ["The scan is of a knee.", "Nothing can be seen.", "A cat.", "The image is blank.", "Unclear."]


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (56, 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pairs(n: int, images: bool) -> list[dict]:
    pairs = []
    for i in range(n):
        pair = {"prompt": [{"role": "user", "content": [*([{"type": "image"}] if images else []),
                                                        {"type": "text", "text": f"Report the finding {i}."}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": FINDINGS[i % 5]}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": WRONG[i % 5]}]}]}
        if images:
            pair["images"] = [Image.open(io.BytesIO(_png(i))).convert("RGB")]
        pairs.append(pair)
    return pairs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [f"Report the finding {i}." for i in range(10)] + FINDINGS * 20 + WRONG * 20
    return build_tiny(tmp_path_factory.mktemp("tiny") / "base", texts, vocab_size=300, image_side=56)


def _config(**update) -> sft.SFTConfig:
    return sft.PRESETS["tiny-dpo"].model_copy(update={"max_steps": 4, **update})


def _completion_logprob(model, processor, pair: dict) -> float:
    """Sum of log p(completion tokens | prompt), from the chat template and the logits."""
    tokenizer = processor.tokenizer
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    text = pair["completion"]["content"][0]["text"] + "<|im_end|>"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1]
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logprobs[len(prompt_ids) - 1:].sum())


def _margin(model, processor, pairs: list[dict]) -> float:
    """Mean log p(chosen) - log p(rejected) over the pairs."""
    total = 0.0
    for pair in pairs:
        chosen, rejected = ({**pair, "completion": pair[k][0]} for k in ("chosen", "rejected"))
        total += _completion_logprob(model, processor, chosen) - _completion_logprob(model, processor, rejected)
    return total / len(pairs)


def test_dpo_with_lora_prefers_the_chosen_answers(tiny, tmp_path):
    pairs = _pairs(8, images=False)
    out = tmp_path / "run"
    config = _config(method="lora", learning_rate=5e-3, lora_r=8, lora_alpha=16, max_steps=6)
    result = preference.train_preference(tiny, pairs, out, config)
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged] == [1, 2, 3, 4, 5, 6]
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # -log sigmoid(0): policy = reference
    assert logged[-1]["loss"] < 0.9 * math.log(2)
    assert result.objective == "dpo" and result.steps == 6 and (out / "adapter/adapter_config.json").exists()
    assert json.loads((out / "run_settings.json").read_text())["objective"] == "dpo"

    trained, processor, how = sft.load_trained(out)
    base, _ = load_model(tiny)
    assert how is not None and how.objective == "dpo"
    assert _margin(trained.eval(), processor, pairs) > _margin(base.eval(), processor, pairs) + 0.1

    assert preference.train_preference(tiny, pairs, out, config).seconds == result.seconds  # finished: as it is
    with pytest.raises(sft.SettingsChanged, match="other settings"):
        preference.train_preference(tiny, pairs, out, config.model_copy(update={"dpo_beta": 0.5}))


def test_killed_full_dpo_run_with_images_resumes_to_the_same_weights(tiny, tmp_path):
    pairs = _pairs(6, images=True)
    config = _config(max_steps=4, save_every=2, batch_size=2)
    straight = preference.train_preference(tiny, pairs, tmp_path / "straight", config)

    class Killed(Exception):
        pass

    def kill_at_step_3(message: str) -> None:
        if message.startswith("step 3/"):
            raise Killed

    with pytest.raises(Killed):
        preference.train_preference(tiny, pairs, tmp_path / "killed", config, log=kill_at_step_3)
    said: list[str] = []
    resumed = preference.train_preference(tiny, pairs, tmp_path / "killed", config, log=said.append)
    assert said[0] == "resuming from checkpoint-2"
    assert straight.first_loss == pytest.approx(math.log(2), abs=1e-4)
    # a reference rebuilt from the checkpoint would shift every loss after the resume
    assert resumed.last_loss == pytest.approx(straight.last_loss, rel=1e-4)
    a = load_model(tmp_path / "straight/model")[0].state_dict()
    b = load_model(tmp_path / "killed/model")[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def _trl_folder(folder):
    """What `radcorpora export PREFERENCE_BUILD --format trl` writes: preference-train.jsonl, images/."""
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(4):
        data = _png(i)
        name = f"images/{hashlib.sha256(data).hexdigest()}.png"
        (folder / name).write_bytes(data)
        lines.append(json.dumps({
            "id": f"scan-{i}", "images": [name], "chosen_score": 0.9, "rejected_score": 0.1,
            "prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                    {"type": "text", "text": f"Report the finding {i}."}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": FINDINGS[i]}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": WRONG[i]}]}]}))
    (folder / "preference-train.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_train_command_on_trl_preference_jsonl(tmp_path):
    source = _trl_folder(tmp_path / "trl")
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(source), "--model", "tiny", "--out", str(out), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "DPO" in result.output and "4 pairs" in result.output
    trained = json.loads((out / "train_result.json").read_text())
    assert trained["objective"] == "dpo" and trained["steps"] == 2 and trained["config"]["method"] == "full"
    assert (out / "tiny-base/config.json").exists() and (out / "model/config.json").exists()

    jsonl = source / "preference-train.jsonl"
    jsonl.write_text(jsonl.read_text().splitlines()[0] + "\n{\"prompt\": []}\n")
    bad = runner.invoke(app, ["train", str(source), "--model", "tiny", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "preference-train.jsonl:2" in bad.output
    (tmp_path / "empty").mkdir()
    nothing = runner.invoke(app, ["train", str(tmp_path / "empty"), "--model", "tiny", "--out", str(tmp_path / "y")])
    assert nothing.exit_code == 2 and "neither a build folder" in nothing.output
    rendering = runner.invoke(app, ["train", str(source), "--model", "tiny", "--out", str(tmp_path / "z"),
                                    "--variant", "crops"])
    assert rendering.exit_code == 2 and "--variant: preference pairs come in one rendering" in rendering.output


def test_preference_build_rows_train_through_the_command(tmp_path):
    """A build whose config has loss intent "preference" (ct-reasoning-dpo's `preference`) holds
    PreferencePair rows (LLaVA turns, `<image>` placeholders): read as TRL rows, and trained on
    by `radcorpora train BUILD` without naming the config."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from radcorpora.schemas.common import ImageData, Lineage, Turn
    from radcorpora.schemas.interleaved import ImageProvenance
    from radcorpora.schemas.preference import PreferencePair
    from radcorpora.store.atomic import write_json

    def pair(i: int) -> PreferencePair:
        images = [_png(2 * i), _png(2 * i + 1)]
        return PreferencePair(
            id=f"p{i}", images=[ImageData(bytes=b, path=f"{k}.png") for k, b in enumerate(images)],
            image_provenance=[ImageProvenance(source_sha256=hashlib.sha256(b).hexdigest()) for b in images],
            prompt=[Turn(**{"from": "human", "value": "<image>\n<image>\nCompare the two slices."})],
            chosen=Turn(**{"from": "gpt", "value": FINDINGS[i]}), rejected=Turn(**{"from": "gpt", "value": WRONG[i]}),
            chosen_score=0.8, rejected_score=0.2, scorer="rougeL",
            lineage=Lineage(source_dataset="x", source_id=str(i), source_split="train", licence_class="public",
                            image_sha256=hashlib.sha256(images[0]).hexdigest()))

    build = tmp_path / "build"
    shard = build / "data/preference/train-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([pair(i).model_dump(by_alias=True) for i in range(3)]), shard)
    write_json(build / "build/manifest.json", {"corpus": "ct-reasoning-dpo"})

    row = preference.read_parquet_pairs([shard])[0]
    assert row["prompt"] == [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                          {"type": "text", "text": "Compare the two slices."}]}]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": FINDINGS[0]}]}]
    assert [np.asarray(i).shape for i in row["images"]] == [(56, 56, 3)] * 2
    text_only = preference.read_parquet_pairs([shard], text_only=True)[0]
    assert "images" not in text_only and [b["type"] for b in text_only["prompt"][0]["content"]] == ["text"]

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(build), "--model", "tiny", "--out", str(out), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert "3 pairs" in result.output and "(preference)" in result.output
    trained = json.loads((out / "train_result.json").read_text())
    assert trained["objective"] == "dpo" and trained["steps"] == 1
    assert trained["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
