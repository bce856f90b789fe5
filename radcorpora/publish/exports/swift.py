"""ms-swift standard layout: JSON Lines of `{id, messages: [{role, content, loss?}], images}`,
`<image>` tags in the content, image paths relative to the export folder. Preference pairs: the
messages end with the chosen answer and `rejected_response` holds the other (ms-swift's DPO keys).

Loss: ms-swift reads a per-message `loss` flag on assistant messages; every assistant message
carries it, true where the corpus says the turn trains ("all_assistant": every one,
"final_assistant": only the last)."""

from __future__ import annotations

from typing import Any

from radcorpora.publish.exports.common import Example, Source, target_turns

NAME = "swift"
EXTENSION = "jsonl"
AS_LIST = False
ROLES = {"human": "user", "gpt": "assistant"}


def layout(source: Source) -> str:
    return "messages+loss"


def record(example: Example, source: Source, where: str) -> dict[str, Any]:
    if example.preference:
        messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in example.conversations]
        messages.append({"role": "assistant", "content": example.chosen})
        return {"id": example.id, "messages": messages, "rejected_response": example.rejected,
                "images": example.images}
    targets = target_turns(example, source.loss)
    messages = []
    for turn, trains in zip(example.conversations, targets):
        message: dict[str, Any] = {"role": ROLES[turn["from"]], "content": turn["value"]}
        if turn["from"] == "gpt":
            message["loss"] = trains
        messages.append(message)
    return {"id": example.id, "messages": messages, "images": example.images}


def trainer_notes(sources: list[Source]) -> dict[str, Any]:
    return {"ms-swift": {"dataset": [f"{s.config}-{s.split}.jsonl" for s in sources],
                         "loss": "per assistant message `loss` flag (overrides --loss_scale's base strategy)"}}
