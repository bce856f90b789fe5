"""Evaluating a (fine-tuned) reference model with a corpus' own metrics.

radimagenet-vqa: closed answers are read on word boundaries ("nodule" is not "no"), multiple
choice letters are read robustly (a bare letter, "(B)", "answer: B", or the option's text), open
answers by normalised match; accuracy by task x question type as in the paper. Per-sample
predictions are written next to the metrics so every number can be traced.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from radcorpora.reference_models.sft import decode_images, to_messages

LETTERS = "ABCD"
MC_INSTRUCTION = "Answer with the letter of the correct option."


def question_prompt(question: str, choices: Sequence[str] | None) -> str:
    """The human turn used both to train the check model and to evaluate it."""
    if not choices:
        return f"<image>\n{question}"
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    return f"<image>\n{question}\n{options}\n{MC_INSTRUCTION}"


def normalise(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_LETTER = re.compile(r"^\s*(?:the\s+)?(?:answer\s*(?:is)?\s*[:\-]?\s*)?\(?([A-D])\)?(?:[.):,\s]|$)", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\b(?:answer|option)\s*(?:is|:)\s*\(?([A-D])\)?\b", re.IGNORECASE)


def parse_closed(prediction: str) -> str | None:
    match = _YES_NO.search(prediction)
    return match.group(1).lower() if match else None


def parse_letter(prediction: str, choices: Sequence[str]) -> str | None:
    for pattern in (_LETTER, _ANSWER_IS):
        match = pattern.search(prediction)
        if match and match.group(1).upper() in LETTERS[:len(choices)]:
            return match.group(1).upper()
    said = normalise(prediction)
    named = [LETTERS[i] for i, c in enumerate(choices) if normalise(c) and normalise(c) in said]
    return named[0] if len(named) == 1 else None


def score_radimagenet_vqa(row: dict[str, Any], prediction: str) -> tuple[bool, str | None]:
    """(correct, parsed answer) for one benchmark question."""
    qtype = row["question_type"]
    if qtype == "closed":
        parsed = parse_closed(prediction)
        return parsed == row["answer"].lower(), parsed
    if qtype == "multiple_choice":
        parsed = parse_letter(prediction, row["choices"] or [])
        return parsed == row["answer"].upper(), parsed
    parsed = normalise(prediction)
    truth = normalise(row["metadata"]["correct_text"] or row["answer"])
    return bool(parsed) and (parsed == truth or re.search(rf"\b{re.escape(truth)}\b", parsed) is not None), parsed


@torch.no_grad()
def generate(model: Any, processor: Any, rows: Sequence[dict[str, Any]], prompts: Sequence[str], text_only: bool,
             max_new_tokens: int = 16, batch_size: int = 16) -> list[str]:
    """Greedy answers, one per (row, prompt)."""
    model.eval()
    device = next(model.parameters()).device
    processor.tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        messages = [to_messages([{"from": "human", "value": prompt}], None if text_only else decode_images(row))
                    for row, prompt in zip(chunk, prompts[start:start + batch_size])]
        batch = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                              add_generation_prompt=True, processor_kwargs={"padding": True})
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        new = output[:, batch["input_ids"].shape[1]:]
        answers += [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def evaluate_radimagenet_vqa(model: Any, processor: Any, rows: Sequence[dict[str, Any]], text_only: bool = False,
                             batch_size: int = 16) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-sample predictions) on benchmark rows."""
    prompts = [question_prompt(r["question"], r["choices"]) for r in rows]
    predictions = generate(model, processor, rows, prompts, text_only, batch_size=batch_size)
    cells: dict[tuple[str, str], list[bool]] = defaultdict(list)
    samples = []
    for row, prediction in zip(rows, predictions):
        correct, parsed = score_radimagenet_vqa(row, prediction)
        task = row["metadata"]["question_id"].split("_")[0]
        cells[(task, row["question_type"])].append(correct)
        samples.append({"id": row["id"], "task": task, "question_type": row["question_type"], "answer": row["answer"],
                        "prediction": prediction, "parsed": parsed, "correct": correct})
    table = {f"{task}/{qtype}": round(100 * sum(v) / len(v), 2) for (task, qtype), v in sorted(cells.items())}
    overall = round(100 * sum(s["correct"] for s in samples) / len(samples), 2) if samples else 0.0
    return {"accuracy": overall, "by_task_and_type": table, "questions": len(samples)}, samples
