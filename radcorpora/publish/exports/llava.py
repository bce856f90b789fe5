"""LLaVA / RadVLM release layout: one JSON list per config/split of
`{id, image, conversations: [{from: human|gpt, value}]}`, `<image>` where the model sees each image,
`image` a path relative to the export folder (a list of paths for multi-image corpora).

Loss: the LLaVA code base trains every `gpt` turn, which is "all_assistant". A "final_assistant"
conversation with one assistant turn (rad-ace-cot) says the same thing; one with several is refused
(use `swift` or `trl`)."""

from __future__ import annotations

from typing import Any

from radcorpora.publish.exports.common import Example, ExportError, Source, one_target_only

NAME = "llava"
EXTENSION = "json"
AS_LIST = True


def layout(source: Source) -> str:
    return "llava"


def record(example: Example, source: Source, where: str) -> dict[str, Any]:
    if example.preference:
        raise ExportError(f"{where}: row {example.id!r} is a preference pair; `llava` holds SFT conversations "
                          "only (use --format trl, sharegpt or swift)")
    one_target_only(example, source.loss, NAME, where)
    image: Any = example.images if source.multi_image else (example.images[0] if example.images else None)
    return {"id": example.id, "image": image, "conversations": example.conversations}


def trainer_notes(sources: list[Source]) -> dict[str, Any]:
    return {"llava": {"data_path": [f"{s.config}-{s.split}.json" for s in sources], "image_folder": ".",
                      "loss": "every gpt turn (LLaVA preprocess masks human turns)"}}
