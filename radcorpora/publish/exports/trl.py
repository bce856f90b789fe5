"""TRL layout for vision-language SFT and DPO: JSON Lines with an `images` column (paths relative
to the export folder) and conversational messages whose content is typed blocks, `{"type": "image"}`
where each `<image>` stood (TRL's `prepare_multimodal_messages` fills them with the images).

Loss, carried by the row layout TRL reads:
* "all_assistant": `messages` rows; train with `SFTConfig(assistant_only_loss=True)` (every
  assistant turn; the chat template must mark assistant turns with `{% generation %}`);
* "final_assistant": prompt/completion rows (`prompt` = every turn before the last assistant turn,
  `completion` = that turn); TRL's default `completion_only_loss` trains the completion only;
* "preference" (pairs): `prompt` (the prompt's messages), `chosen` and `rejected` (one assistant
  message each) for `DPOTrainer`, plus `chosen_score` / `rejected_score` where the rows have them.

Several images: `images` lists them in `<image>` order and each message's image blocks follow
that order across the messages, which is how TRL's `prepare_multimodal_messages` assigns them.

Load with `datasets.load_dataset("json", data_files=...)`, join each image path to the export
folder and cast `images` to `Sequence(Image())` (see tests/test_exports.py)."""

from __future__ import annotations

from typing import Any

from radcorpora.publish.exports.common import Example, Source, scores

NAME = "trl"
EXTENSION = "jsonl"
AS_LIST = False
PREFERENCE = True
ROLES = {"human": "user", "gpt": "assistant"}


def layout(source: Source) -> str:
    if source.preference:
        return "preference"
    return "prompt_completion" if source.loss == "final_assistant" else "messages"


def blocks(text: str) -> list[dict[str, Any]]:
    """`<image>` tags -> image blocks, in place; the text around them -> text blocks. Every block
    has both keys so JSON readers see one struct type."""
    out: list[dict[str, Any]] = []
    for i, piece in enumerate(text.split("<image>")):
        if i > 0:
            out.append({"type": "image", "text": None})
        piece = piece.strip("\n") if i > 0 else piece.rstrip("\n")
        if piece:
            out.append({"type": "text", "text": piece})
    return out or [{"type": "text", "text": ""}]


def message(turn: dict[str, str]) -> dict[str, Any]:
    return {"role": ROLES[turn["from"]], "content": blocks(turn["value"])}


def record(example: Example, source: Source, where: str) -> dict[str, Any]:
    messages = [message(t) for t in example.conversations]
    if example.preference:
        return {"id": example.id, "images": example.images, "prompt": messages,
                "chosen": [message({"from": "gpt", "value": example.chosen})],
                "rejected": [message({"from": "gpt", "value": example.rejected})], **scores(example)}
    if source.loss == "final_assistant":
        return {"id": example.id, "images": example.images, "prompt": messages[:-1], "completion": messages[-1:]}
    return {"id": example.id, "images": example.images, "messages": messages}


def trainer_notes(sources: list[Source]) -> dict[str, Any]:
    layouts = sorted({layout(s) for s in sources})
    notes: dict[str, Any] = {"layouts": layouts}
    if "messages" in layouts:
        notes["sft_config"] = {"assistant_only_loss": True}
    if "prompt_completion" in layouts:
        notes["sft_config_prompt_completion"] = {"completion_only_loss": True}
    if "preference" in layouts:
        notes["trainer"] = "DPOTrainer"
    return {"trl": notes}
