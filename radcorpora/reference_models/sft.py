"""LoRA fine-tuning on a built corpus: loss on assistant tokens only (every assistant turn),
gradient accumulation, cosine schedule with warmup, bf16 where the hardware has it, resumable
checkpoints and a training log.

Examples come from a build's LLaVA-style `conversations` (`human`/`gpt` turns, `<image>`
placeholders) and its image column(s). The text-only twin sees the same conversations with the
images withheld: the shortcut test every build is checked against.
"""

from __future__ import annotations

import io
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from pydantic import BaseModel, Field
from transformers import get_cosine_schedule_with_warmup

from radcorpora.reference_models.models import load_model

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # language tower
                  "qkv", "attn.proj", "mlp.0", "mlp.2"]  # vision tower and merger


class SFTConfig(BaseModel):
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(TARGET_MODULES))
    modules_to_save: list[str] = Field(default_factory=list)  # e.g. ["lm_head"] where the base is random
    learning_rate: float = 2e-4
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(4, ge=1)
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; overrides epochs
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = 0.01
    max_length: int = Field(2048, ge=16)
    seed: int = 0
    save_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)


PRESETS: dict[str, SFTConfig] = {
    # RAD-ACE recipe (paper, section 3.2): r 16, alpha 16 on both towers, lr 2e-4, 2 x 4, 2 epochs.
    "rad-ace": SFTConfig(),
    # RadImageNet-VQA: short answers, many questions per image; a lower rate and one epoch.
    "radimagenet-vqa": SFTConfig(learning_rate=1e-4, batch_size=4, grad_accum=4, epochs=1.0, warmup_steps=100,
                                 max_length=1024),
    # The tiny random-init model of the build check: the head and both towers learn from scratch.
    "tiny-check": SFTConfig(lora_r=16, lora_alpha=32, modules_to_save=["lm_head", "embed_tokens"],
                            learning_rate=3e-3, batch_size=8, grad_accum=1, epochs=3.0, warmup_steps=10,
                            weight_decay=0.0, max_length=512, save_every=100),
}


def to_messages(conversations: Sequence[dict[str, str]], images: Sequence[Image.Image] | None) -> list[dict[str, Any]]:
    """LLaVA turns -> chat messages; each `<image>` becomes an image part (dropped when images is None)."""
    messages = []
    pool = list(images or [])
    for turn in conversations:
        role = "user" if turn["from"] == "human" else "assistant"
        parts: list[dict[str, Any]] = []
        pieces = turn["value"].split("<image>")
        for i, piece in enumerate(pieces):
            if i > 0 and images is not None and pool:
                parts.append({"type": "image", "image": pool.pop(0)})
            text = piece.strip("\n") if i > 0 else piece.rstrip("\n")
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": role, "content": parts or [{"type": "text", "text": ""}]})
    return messages


def decode_images(row: dict[str, Any]) -> list[Image.Image]:
    raw = row.get("images") if row.get("images") is not None else [row.get("image")]
    out = []
    for item in raw:
        if item is None:
            continue
        if isinstance(item, Image.Image):
            out.append(item.convert("RGB"))
        else:
            out.append(Image.open(io.BytesIO(item["bytes"])).convert("RGB"))
    return out


def collate(processor: Any, rows: Sequence[dict[str, Any]], text_only: bool, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenised batch with labels = input ids on assistant tokens, -100 elsewhere."""
    batch_messages = [to_messages(r["conversations"], None if text_only else decode_images(r)) for r in rows]
    batch = processor.apply_chat_template(batch_messages, tokenize=True, return_dict=True, return_tensors="pt",
                                          return_assistant_tokens_mask=True, processor_kwargs={"padding": True})
    mask = batch.pop("assistant_masks")
    labels = batch["input_ids"].clone()
    labels[mask == 0] = -100
    batch["labels"] = labels
    if batch["input_ids"].shape[1] > max_length:
        raise ValueError(f"a batch is {batch['input_ids'].shape[1]} tokens long, more than max_length {max_length}; "
                         "truncating would cut image tokens or answers")
    return dict(batch)


class TrainResult(BaseModel):
    out: str
    steps: int
    examples_seen: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    samples_per_second: float
    tokens_per_second: float


def _latest_checkpoint(out: Path) -> Path | None:
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def train(model_path: Path, rows: Sequence[dict[str, Any]], out: Path, config: SFTConfig,
          text_only: bool = False, log: Any = None) -> TrainResult:
    """LoRA SFT of the checkpoint at `model_path` on `rows`; adapter saved to `out/adapter`.
    A run interrupted after a checkpoint resumes from it when started again with the same `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model, processor = load_model(model_path)
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    resume = _latest_checkpoint(out)
    if resume is not None:
        model = PeftModel.from_pretrained(model, resume, is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                 lora_dropout=config.lora_dropout, target_modules=config.target_modules,
                                                 modules_to_save=config.modules_to_save or None))
    model.to(device)
    steps_per_epoch = math.ceil(len(rows) / (config.batch_size * config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup_steps, total_steps // 2), total_steps)
    step = 0
    if resume is not None:
        state = torch.load(resume / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
    order_rng = random.Random(config.seed)
    micro_batches: list[list[int]] = []
    while len(micro_batches) < total_steps * config.grad_accum:
        epoch = list(range(len(rows)))
        order_rng.shuffle(epoch)
        micro_batches += [epoch[i:i + config.batch_size] for i in range(0, len(epoch), config.batch_size)]
    log_path = out / "train_log.jsonl"
    started, tokens, seen, first_loss, last_loss = time.time(), 0, 0, None, None
    model.train()
    while step < total_steps:
        optimizer.zero_grad()
        accumulated = 0.0
        for micro in micro_batches[step * config.grad_accum:(step + 1) * config.grad_accum]:
            batch = {k: v.to(device) for k, v in collate(processor, [rows[i] for i in micro], text_only,
                                                         config.max_length).items()}
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(**batch).loss / config.grad_accum
            loss.backward()
            accumulated += loss.item()
            tokens += int(batch["attention_mask"].sum())
            seen += len(micro)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        first_loss = accumulated if first_loss is None else first_loss
        last_loss = accumulated
        if step % config.log_every == 0 or step == total_steps:
            with open(log_path, "a") as handle:
                handle.write(json.dumps({"step": step, "loss": round(accumulated, 5),
                                         "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - started, 2)}) + "\n")
            if log:
                log(f"step {step}/{total_steps} loss {accumulated:.4f}")
        if step % config.save_every == 0 and step < total_steps:
            checkpoint = out / f"checkpoint-{step}"
            model.save_pretrained(checkpoint)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
                       checkpoint / "trainer_state.pt")
    model.save_pretrained(out / "adapter")
    (out / "adapter" / "base_model.txt").write_text(str(Path(model_path).resolve()))
    seconds = time.time() - started
    result = TrainResult(out=str(out), steps=step, examples_seen=seen, seconds=round(seconds, 2), first_loss=first_loss,
                         last_loss=last_loss, samples_per_second=round(seen / seconds, 2) if seconds else 0.0,
                         tokens_per_second=round(tokens / seconds, 1) if seconds else 0.0)
    (out / "train_result.json").write_text(result.model_dump_json(indent=2))
    return result
