"""Turning a build's LLaVA-style rows into model inputs: chat messages with image parts, the
tokenised batch, and labels on exactly the assistant tokens the corpus' loss intent marks (from
the template's `{% generation %}` tags, or by rendered prefixes where a template has none)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image


class TrainingError(RuntimeError):
    """A training run cannot start or go on as asked; the message says why."""


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


_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def marks_assistant_turns(processor: Any) -> bool:
    """Whether the chat template wraps assistant turns in `{% generation %}` (the tokenizer can then
    return the assistant mask itself)."""
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None) or ""
    return bool(_GENERATION_TAG.search(template if isinstance(template, str) else json.dumps(template)))


def _rendered_length(processor: Any, messages: list[dict[str, Any]], add_generation_prompt: bool) -> int:
    encoded = processor.apply_chat_template([messages], tokenize=True, return_dict=True,
                                            add_generation_prompt=add_generation_prompt)
    return len(encoded["input_ids"][0])


def assistant_mask_by_prefix(processor: Any, batch_messages: Sequence[list[dict[str, Any]]],
                             input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The assistant-token mask for templates without generation tags (most real checkpoints): each
    assistant turn spans from the end of the conversation before it plus the generation prompt to
    the end of the conversation through it, trailing template whitespace left out."""
    mask = torch.zeros_like(input_ids)
    left = processor.tokenizer.padding_side == "left"
    for b, messages in enumerate(batch_messages):
        offset = input_ids.shape[1] - int(attention_mask[b].sum()) if left else 0
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = _rendered_length(processor, messages[:k], add_generation_prompt=True)
            end = _rendered_length(processor, messages[:k + 1], add_generation_prompt=False)
            while end > start and not processor.tokenizer.decode(input_ids[b, offset + end - 1]).strip():
                end -= 1
            mask[b, offset + start:offset + end] = 1
    return mask


def final_turn_only(mask: torch.Tensor) -> torch.Tensor:
    """Keep, per row, only the last run of assistant tokens (loss intent "final_assistant")."""
    out = torch.zeros_like(mask)
    for b in range(mask.shape[0]):
        ones = torch.nonzero(mask[b]).flatten().tolist()
        if ones:
            start = ones[-1]
            while start > 0 and mask[b, start - 1]:
                start -= 1
            out[b, start:ones[-1] + 1] = 1
    return out


def collate(processor: Any, rows: Sequence[dict[str, Any]], text_only: bool, max_length: int,
            loss: str = "all_assistant") -> dict[str, torch.Tensor]:
    """Tokenised batch with labels = input ids on assistant tokens, -100 elsewhere: every assistant
    turn, or only the last where the corpus' loss intent is "final_assistant" (as the exports say)."""
    batch_messages = [to_messages(r["conversations"], None if text_only else decode_images(r)) for r in rows]
    tagged = marks_assistant_turns(processor)
    batch = processor.apply_chat_template(batch_messages, tokenize=True, return_dict=True, return_tensors="pt",
                                          return_assistant_tokens_mask=tagged, processor_kwargs={"padding": True})
    if tagged:
        mask = batch.pop("assistant_masks")
    else:
        mask = assistant_mask_by_prefix(processor, batch_messages, batch["input_ids"], batch["attention_mask"])
    if loss == "final_assistant":
        mask = final_turn_only(mask)
    labels = batch["input_ids"].clone()
    labels[mask == 0] = -100
    batch["labels"] = labels
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    too_long = [f"{row.get('id', i)} ({n} tokens)" for i, (row, n) in enumerate(zip(rows, lengths)) if n > max_length]
    if too_long:
        raise TrainingError(f"example(s) longer than max_length {max_length}: {', '.join(too_long)}; truncating "
                            "would cut image tokens or answers: raise max_length in the preset")
    return dict(batch)
