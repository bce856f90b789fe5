"""ct-reasoning's training examples and benchmark (`vqa_thinking`, held-out test split).

A row becomes one turn: its axial slice PNGs (one `<image>` each, when the build has `--slices N`)
then the question; the answer is the thinking then the short answer, in `<think>..</think>
<answer>..</answer>` tags (the thinking kept apart, as the record keeps it). Metrics as the mu2
paper reports them, on the answer, 0-100: BLEU, ROUGE-1, METEOR, BERTScore (when its model is on
disk), GREEN (pluggable; skipped when absent); answer accuracy by an LLM judge when one is given,
else by normalised match (the normalised reference said as whole words in the answer).

`radcorpora check` needs slice images: a build made without `--slices` has no pixels for the image
model to beat its text-only twin with, and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from radcorpora.ops.cot import split_cot
from radcorpora.schemas.interleaved import IMAGE_PLACEHOLDER
from radcorpora.spec.evaluation import (
    CorpusEvaluation,
    EvalContext,
    JudgeItem,
    MetricKit,
    Query,
    contains_answer,
    normalise,
    percent,
    queries_from_example,
)

MAX_NEW_TOKENS = 384
TEXT_METRICS = ("bleu", "rouge_1", "meteor")


def slices_of(row: dict[str, Any]) -> list[Any]:
    """The row's slice images, in stored order (none when built without --slices)."""
    return [s["image"] for s in (row.get("volume") or {}).get("slices") or []]


def answer_text(thinking: str, answer: str) -> str:
    return f"<think>\n{thinking}\n</think>\n<answer>{answer}</answer>"


def example(row: dict[str, Any], ctx: EvalContext) -> dict[str, Any]:
    """{id, images, conversations} of a vqa_thinking row: the slices then the question; the
    thinking and the answer apart, in tags."""
    images = slices_of(row)
    human = f"{IMAGE_PLACEHOLDER * len(images)}\n{row['question']}" if images else row["question"]
    return {"id": row["id"], "images": images,
            "conversations": [{"from": "human", "value": human},
                              {"from": "gpt", "value": answer_text(row["thinking"], row["answer"])}]}


def queries(rows: Sequence[dict[str, Any]], ctx: EvalContext) -> list[Query]:
    return [queries_from_example(example(row, ctx), i, MAX_NEW_TOKENS) for i, row in enumerate(rows)]


def matches(prediction: str, reference: str) -> bool:
    """Normalised match: equal after normalisation, or the whole reference said in the answer."""
    return normalise(prediction) == normalise(reference) or contains_answer(prediction, reference)


def score(asked: Sequence[Query], answers: Sequence[Sequence[str]], rows: Sequence[dict[str, Any]],
          kit: MetricKit) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    samples = []
    for query, said in zip(asked, answers):
        row, output = rows[query.row], said[0]
        parts = split_cot(output)
        answer = parts[1] if parts else output
        samples.append({"id": row["id"], "question": row["question"], "focus": row["focus"],
                        "reference": row["answer"], "prediction": output, "well_formed": parts is not None,
                        "parsed_answer": answer, "matched": matches(answer, row["answer"])})
    predictions, references = [s["parsed_answer"] for s in samples], [s["reference"] for s in samples]
    text = kit.text(predictions, references, TEXT_METRICS)
    for name, values in text.pop("per_sample", {}).items():
        for sample, value in zip(samples, values):
            sample[name] = value
    metrics: dict[str, Any] = {"questions": len(samples), "format_rate": percent([s["well_formed"] for s in samples]),
                               **text, "bertscore": kit.bertscore(predictions, references),
                               "green": kit.green(predictions, references),
                               "match_accuracy": percent([s["matched"] for s in samples])}
    judge = kit.judge
    if judge is None:
        metrics["answer_accuracy"] = metrics["match_accuracy"]
        metrics["accuracy_by"] = "normalised match"
        return metrics, samples
    items = [JudgeItem(s["id"], s["question"], s["reference"], s["parsed_answer"],
                       rows[q.row]["lineage"]["licence_class"]) for s, q in zip(samples, asked)]
    judgements = judge.open_answers(items)
    for sample, judgement in zip(samples, judgements):
        sample["correct"] = bool(judgement.parsed and judgement.parsed.correct)
        if judgement.error:
            sample["judge_error"] = judgement.error
    metrics["answer_accuracy"] = percent([s["correct"] for s in samples])
    metrics["accuracy_by"] = f"LLM judge {judge.spec}"
    metrics["judge"] = {"model": judge.spec, "answers": len(items), "failed": sum(j.error is not None for j in judgements)}
    return metrics, samples


def check_refusal(manifest: dict[str, Any]) -> str | None:
    settings = ((manifest.get("fingerprint") or {}).get("config")) or {}
    if not settings.get("slices"):
        return ("this ct-reasoning build has no slice images (built without --slices): rebuild it with "
                "`--slices N` so the image model has pixels to beat its text-only twin with")
    return None


EVALUATION = CorpusEvaluation(
    "vqa_thinking", "vqa_thinking", "test", preset="rad-ace", queries=queries, score=score,
    primary=lambda metrics: "answer_accuracy" if "judge" in metrics else "rouge_1", example=example,
    row_images=slices_of, check_refusal=check_refusal)
