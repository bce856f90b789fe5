"""ms-swift standard layout: JSON Lines of `{id, messages: [{role, content, loss?}], images}`,
`<image>` tags in the content, image paths relative to the export folder, `images` in tag order
(ms-swift replaces the k-th tag with the k-th image). Preference pairs: the messages end with the
chosen answer and `rejected_response` holds the other (ms-swift's DPO/RLHF keys), plus
`chosen_score` / `rejected_score` where the rows have them (not read by ms-swift).

Loss: ms-swift reads a per-message `loss` flag on assistant messages; every assistant message
carries it, true where the corpus says the turn trains ("all_assistant": every one,
"final_assistant": only the last)."""

from __future__ import annotations

from typing import Any

from radcorpora.publish.exports.common import Example, Source, scores, target_turns

NAME = "swift"
EXTENSION = "jsonl"
AS_LIST = False
PREFERENCE = True
ROLES = {"human": "user", "gpt": "assistant"}


def layout(source: Source) -> str:
    return "messages+rejected_response" if source.preference else "messages+loss"


def record(example: Example, source: Source, where: str) -> dict[str, Any]:
    if example.preference:
        messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in example.conversations]
        messages.append({"role": "assistant", "content": example.chosen})
        return {"id": example.id, "messages": messages, "rejected_response": example.rejected,
                "images": example.images, **scores(example)}
    targets = target_turns(example, source.loss)
    messages = []
    for turn, trains in zip(example.conversations, targets):
        message: dict[str, Any] = {"role": ROLES[turn["from"]], "content": turn["value"]}
        if turn["from"] == "gpt":
            message["loss"] = trains
        messages.append(message)
    return {"id": example.id, "messages": messages, "images": example.images}


def trainer_notes(sources: list[Source]) -> dict[str, Any]:
    notes: dict[str, Any] = {"dataset": [f"{s.config}-{s.split}.jsonl" for s in sources],
                             "loss": "per assistant message `loss` flag (overrides --loss_scale's base strategy)"}
    if any(s.preference for s in sources):
        notes["rlhf"] = "preference rows: swift rlhf --rlhf_type dpo (messages end with the chosen answer)"
    return {"ms-swift": notes}
