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


def conversations_of(row: dict[str, Any]) -> list[dict[str, str]]:
    """A row's LLaVA turns: its `conversations`, or its `prompt` and `response` as one human and one
    gpt turn (MMRad-IVL's layout, where the response holds one `<image>` per crop)."""
    if row.get("conversations") is not None:
        return row["conversations"]
    if row.get("prompt") is not None and row.get("response") is not None:
        return [{"from": "human", "value": row["prompt"]}, {"from": "gpt", "value": row["response"]}]
    raise TrainingError(f"row {row.get('id', '?')}: neither `conversations` nor `prompt` and `response`")


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


def _text_ids(processor: Any, messages: list[dict[str, Any]], add_generation_prompt: bool, skip: set[int]) -> list[int]:
    """The rendered conversation's tokens, image placeholders and their framing left out."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return [i for i in processor.tokenizer(text, add_special_tokens=False)["input_ids"] if i not in skip]


def assistant_mask_by_prefix(processor: Any, batch_messages: Sequence[list[dict[str, Any]]],
                             input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             row_ids: Sequence[Any] | None = None) -> torch.Tensor:
    """The assistant-token mask for templates without generation tags (most real checkpoints): each
    assistant turn spans from the end of the conversation before it plus the generation prompt to
    the end of the conversation through it, trailing template whitespace left out.

    Spans are found among the text tokens only (image tokens set apart), so they hold whatever
    each image expands to, which can depend on the whole row (LLaVA-OneVision gives a row of
    several images fewer tokens per image). Each prefix must render to the tokens the whole
    conversation starts with; a template that renders earlier turns differently (e.g. one that
    drops past reasoning) is refused, never mislabelled."""
    mask = torch.zeros_like(input_ids)
    skip = image_token_ids(processor)
    for b, messages in enumerate(batch_messages):
        name = row_ids[b] if row_ids is not None else b
        positions = [j for j in range(input_ids.shape[1]) if attention_mask[b, j] and int(input_ids[b, j]) not in skip]
        present = [int(input_ids[b, j]) for j in positions]
        full = _text_ids(processor, messages, False, skip)
        shift = len(present) - len(full)  # tokens the processor put before the rendered text (a bos)
        if shift < 0 or present[shift:] != full:
            raise TrainingError(f"row {name}: the processor's tokens differ from the rendered chat template's, so its "
                                "assistant tokens cannot be found by prefix; use a template with {% generation %} markers")
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = _text_ids(processor, messages[:k], True, skip)
            through = _text_ids(processor, messages[:k + 1], False, skip)
            if full[:len(prefix)] != prefix or full[:len(through)] != through:
                raise TrainingError(f"row {name}: the chat template renders the conversation up to assistant turn {k} "
                                    "differently from the whole conversation, so its assistant tokens cannot be found "
                                    "by prefix; use a template with {% generation %} markers")
            start, end = len(prefix), len(through)
            while end > start and not processor.tokenizer.decode([full[end - 1]]).strip():
                end -= 1
            for p in range(start, end):
                mask[b, positions[shift + p]] = 1
    return mask


def image_token_ids(processor: Any) -> set[int]:
    """Token ids that stand for image content or frame it (image/video pads, Qwen's vision start and
    end, Idefics3's fake-around and global-image tokens and tile tags): never predicted, so never in
    the loss, even where a corpus puts images in an assistant turn (MMRad-IVL's crops)."""
    ids: set[Any] = {getattr(processor, name, None) for name in (
        "image_token_id", "video_token_id", "fake_image_token_id", "global_image_token_id",
        "vision_start_token_id", "vision_end_token_id")}
    ids |= set(getattr(processor, "row_col_ids", None) or [])
    vocab = processor.tokenizer.get_vocab()
    ids |= {vocab[t] for t in ("<|vision_start|>", "<|vision_end|>") if t in vocab}
    return {i for i in ids if isinstance(i, int) and i != processor.tokenizer.unk_token_id}


def _check_image_parts(processor: Any, rows: Sequence[dict[str, Any]], batch_messages: Sequence[list[dict[str, Any]]]) -> None:
    """Every image part of a message must reach the rendered text as one image placeholder: a
    template that drops images (Qwen3-VL's renders none in assistant turns) is named with the row."""
    token = getattr(processor, "image_token", None)
    if not token:
        return
    for row, messages in zip(rows, batch_messages):
        parts = {m["role"]: 0 for m in messages}
        for m in messages:
            parts[m["role"]] += sum(1 for p in m["content"] if p.get("type") == "image")
        if not sum(parts.values()):
            continue
        rendered = processor.apply_chat_template(messages, tokenize=False).count(token)
        if rendered != sum(parts.values()):
            where = ", ".join(f"{n} in {r} turns" for r, n in parts.items() if n)
            raise TrainingError(f"row {row.get('id', '?')}: {sum(parts.values())} image(s) ({where}) but this model's "
                                f"chat template renders {rendered} {token}: it drops images in some turns")


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
    turn, or only the last where the corpus' loss intent is "final_assistant" (as the exports say).
    Image tokens are never labelled. Rows may hold several images (`images`, one per `<image>` in
    turn order) and images in assistant turns; whatever inputs the family's processor makes
    (Qwen's grids, Mllama's tiles and cross-attention mask, Idefics3's pixel mask) are returned."""
    batch_messages = [to_messages(conversations_of(r), None if text_only else decode_images(r)) for r in rows]
    if not text_only:
        _check_image_parts(processor, rows, batch_messages)
    tagged = marks_assistant_turns(processor)
    batch = processor.apply_chat_template(batch_messages, tokenize=True, return_dict=True, return_tensors="pt",
                                          return_assistant_tokens_mask=tagged, processor_kwargs={"padding": True})
    if tagged:
        mask = batch.pop("assistant_masks")
    else:
        mask = assistant_mask_by_prefix(processor, batch_messages, batch["input_ids"], batch["attention_mask"],
                                        [r.get("id", i) for i, r in enumerate(rows)])
    if loss == "final_assistant":
        mask = final_turn_only(mask)
    labels = batch["input_ids"].clone()
    labels[mask == 0] = -100
    labels[torch.isin(labels, torch.tensor(sorted(image_token_ids(processor)), dtype=labels.dtype))] = -100
    batch["labels"] = labels
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    too_long = [f"{row.get('id', i)} ({n} tokens)" for i, (row, n) in enumerate(zip(rows, lengths)) if n > max_length]
    if too_long:
        raise TrainingError(f"example(s) longer than max_length {max_length}: {', '.join(too_long)}; truncating "
                            "would cut image tokens or answers: raise max_length in the preset")
    return dict(batch)
