"""LLaVA / RadVLM release layout: one JSON list per config/split of
`{id, image, conversations: [{from: human|gpt, value}]}`, `<image>` where the model sees each image,
`image` a path relative to the export folder.

Several images (a config with an `images` list): `image` is the list of paths, in `<image>` order,
the form LLaVA-NeXT / LLaVA-OneVision's `train.py` reads (one `<image>` per path); LLaVA-1.5's
`train.py` takes one path per row and cannot train these rows. Preference pairs: LLaVA has no
preference form; the export is refused naming the formats that have one.

Loss: the LLaVA code base trains every `gpt` turn, which is "all_assistant". A "final_assistant"
conversation with one assistant turn (rad-ace-cot) says the same thing; one with several is refused
(use `swift` or `trl`)."""

from __future__ import annotations

from typing import Any

from radcorpora.publish.exports.common import (
    PREFERENCE_FORMATS,
    Example,
    ExportError,
    Source,
    one_target_only,
)

NAME = "llava"
EXTENSION = "json"
AS_LIST = True
PREFERENCE = False  # no preference form: refused before anything is written


def layout(source: Source) -> str:
    return "llava (image list)" if source.multi_image else "llava"


def record(example: Example, source: Source, where: str) -> dict[str, Any]:
    if example.preference:
        raise ExportError(f"{where}: row {example.id!r} is a preference pair; `llava` holds SFT conversations "
                          f"only (use --format {PREFERENCE_FORMATS})")
    one_target_only(example, source.loss, NAME, where)
    image: Any = example.images if source.multi_image else (example.images[0] if example.images else None)
    return {"id": example.id, "image": image, "conversations": example.conversations}


def trainer_notes(sources: list[Source]) -> dict[str, Any]:
    notes: dict[str, Any] = {"data_path": [f"{s.config}-{s.split}.json" for s in sources], "image_folder": ".",
                             "loss": "every gpt turn (LLaVA preprocess masks human turns)"}
    if any(s.multi_image for s in sources):
        notes["images"] = ("`image` is a list of paths in <image> order: LLaVA-NeXT / LLaVA-OneVision train.py "
                           "reads it; LLaVA-1.5 train.py takes one image per row")
    return {"llava": notes}
