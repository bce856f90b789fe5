"""LLaMA-Factory ShareGPT layout: JSON Lines of `{id, conversations: [{from, value}], images}` (or
`{id, conversations, chosen, rejected, images}` for preference pairs) and a `dataset_info.json`
with one entry per config/split (formatting, columns, tags; `ranking` for pairs). Image paths are
relative to the export folder, which is LLaMA-Factory's `dataset_dir` (and default `media_dir`);
`images` keeps the `<image>` order (LLaMA-Factory pairs the k-th tag with the k-th path). A pair's
prompt is the conversation (ending with a human turn), `chosen` / `rejected` gpt turns (its
ranking form), plus `chosen_score` / `rejected_score` where the rows have them (not read).

Loss: LLaMA-Factory trains every assistant turn (its default `mask_history: false`) = "all_assistant".
A "final_assistant" conversation with one assistant turn says the same thing; one with several is
refused (use `swift` or `trl`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from radcorpora.publish.exports.common import Example, Source, one_target_only, scores

NAME = "sharegpt"
EXTENSION = "jsonl"
AS_LIST = False
PREFERENCE = True
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}


def layout(source: Source) -> str:
    return "sharegpt ranking" if source.preference else "sharegpt"


def record(example: Example, source: Source, where: str) -> dict[str, Any]:
    if example.preference:
        return {"id": example.id, "conversations": example.conversations,
                "chosen": {"from": "gpt", "value": example.chosen},
                "rejected": {"from": "gpt", "value": example.rejected}, "images": example.images, **scores(example)}
    one_target_only(example, source.loss, NAME, where)
    return {"id": example.id, "conversations": example.conversations, "images": example.images}


def dataset_name(source: Source) -> str:
    return f"{source.corpus}_{source.config}_{source.split}".replace("-", "_")


def dataset_info(sources: list[Source], preference: dict[str, bool]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for source in sources:
        file_name = f"{source.config}-{source.split}.{EXTENSION}"
        columns = {"messages": "conversations", "images": "images"}
        entry: dict[str, Any] = {"file_name": file_name, "formatting": "sharegpt"}
        if preference.get(file_name):
            entry["ranking"] = True
            columns.update(chosen="chosen", rejected="rejected")
        entry["columns"] = columns
        entry["tags"] = dict(TAGS)
        info[dataset_name(source)] = entry
    return info


def finish(folder: Path, sources: list[Source], preference: dict[str, bool]) -> None:
    text = json.dumps(dataset_info(sources, preference), indent=2, ensure_ascii=False) + "\n"
    (folder / "dataset_info.json").write_text(text, encoding="utf-8")


def trainer_notes(sources: list[Source]) -> dict[str, Any]:
    return {"llamafactory": {"dataset_dir": ".", "dataset": ",".join(dataset_name(s) for s in sources),
                             "mask_history": False, "loss": "every assistant turn"}}
