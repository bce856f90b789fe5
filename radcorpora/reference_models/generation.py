"""Greedy generation from a (fine-tuned) reference model: the next assistant turn of LLaVA-style
histories, batched and left-padded, images in the `<image>` placeholders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from radcorpora.reference_models.collate import to_messages


@torch.no_grad()
def answer_turns(model: Any, processor: Any, histories: Sequence[Sequence[dict[str, str]]],
                 images: Sequence[Sequence[Image.Image] | None], max_new_tokens: int) -> list[str]:
    """Greedy next assistant turn for each LLaVA history (human/gpt turns ending with a human one),
    as one left-padded batch; `images[i]` fill history i's `<image>` placeholders (None: withheld).
    Every family's processor inputs go to `generate` as they come (Qwen's image grids, Mllama's
    tiles and cross-attention mask, Idefics3's pixel mask); a checkpoint whose generation config
    names no pad token (Llama's) pads with the tokenizer's."""
    model.eval()
    device = next(model.parameters()).device
    processor.tokenizer.padding_side = "left"
    messages = [to_messages(history, pictures) for history, pictures in zip(histories, images)]
    batch = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                          add_generation_prompt=True, processor_kwargs={"padding": True})
    batch = {k: v.to(device) for k, v in batch.items()}
    pad = {} if model.generation_config.pad_token_id is not None else {"pad_token_id": processor.tokenizer.pad_token_id}
    output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, **pad)
    new = output[:, batch["input_ids"].shape[1]:]
    return [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
