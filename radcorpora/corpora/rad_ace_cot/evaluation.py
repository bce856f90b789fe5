"""rad-ace-cot's benchmark (VQA-RAD test questions, each asked on its own with the image then the
question, as its chains of thought are trained): the rate of well-formed think/answer outputs,
answer accuracy (yes/no on word boundaries, other answers by normalised containment), ROUGE-L and
BLEU of the answer, and with a judge the paper's five 1-5 criteria."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from radcorpora.ops.cot import split_cot
from radcorpora.spec.evaluation import (
    CorpusEvaluation,
    EvalContext,
    JudgeItem,
    MetricKit,
    Query,
    contains_answer,
    normalise,
    parse_closed,
    percent,
)

MAX_NEW_TOKENS = 512
CRITERIA = ("clinical_relevance", "factuality", "reasoning_coherence", "completeness", "final_answer_quality")


def human_turn(question: str) -> str:
    """The human turn of a rad-ace-cot example: the image, then the question (as in training)."""
    return f"<image>\n{question}"


def score_vqa_rad(answer_type: str, truth: str, answer: str) -> bool:
    """A VQA-RAD answer: yes/no on word boundaries, other answers by normalised containment."""
    truth_norm = normalise(truth)
    if answer_type == "CLOSED" and truth_norm in {"yes", "no"}:
        return parse_closed(answer) == truth_norm
    return contains_answer(answer, truth)


def queries(rows: Sequence[dict[str, Any]], ctx: EvalContext) -> list[Query]:
    return [Query(row["id"], i, (human_turn(row["question"]),), MAX_NEW_TOKENS) for i, row in enumerate(rows)]


def score(asked: Sequence[Query], answers: Sequence[Sequence[str]], rows: Sequence[dict[str, Any]],
          kit: MetricKit) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    samples = []
    for query, said in zip(asked, answers):
        row, output = rows[query.row], said[0]
        parts = split_cot(output)
        answer = parts[1] if parts else output
        samples.append({"id": row["id"], "question": row["question"], "answer_type": row["answer_type"],
                        "reference": row["answer"], "prediction": output, "well_formed": parts is not None,
                        "parsed_answer": answer, "correct": score_vqa_rad(row["answer_type"], row["answer"], answer)})
    by_type = {kind: percent([s["correct"] for s in samples if s["answer_type"] == kind]) for kind in ("CLOSED", "OPEN")}
    text = kit.text([s["parsed_answer"] for s in samples], [s["reference"] for s in samples], ("rouge_l", "bleu"))
    text.pop("per_sample", None)
    metrics: dict[str, Any] = {
        "questions": len(samples),
        "format_rate": percent([s["well_formed"] for s in samples]),
        "answer_accuracy": percent([s["correct"] for s in samples]),
        "closed_accuracy": by_type["CLOSED"], "open_accuracy": by_type["OPEN"],
        **text,
    }
    judge = kit.judge
    if judge is not None:
        items = [JudgeItem(s["id"], s["question"], s["reference"], s["prediction"], rows[q.row]["lineage"]["licence_class"])
                 for s, q in zip(samples, asked)]
        scored = []
        for sample, judgement in zip(samples, judge.criteria(items)):
            if judgement.parsed is not None:
                sample["judge"] = judgement.parsed.model_dump()
                scored.append(judgement.parsed)
            else:
                sample["judge_error"] = judgement.error
        means = {c: round(sum(getattr(s, c) for s in scored) / len(scored), 3) if scored else None for c in CRITERIA}
        overall = round(sum(s.mean() for s in scored) / len(scored), 3) if scored else None
        metrics["judge"] = {"model": judge.spec, "scored": len(scored), "failed": len(samples) - len(scored),
                            "criteria": means, "mean": overall}
        # On 0-100 like the other metrics, so a margin in points means the same for every corpus.
        metrics["judge_score"] = round(100 * (overall - 1) / 4, 2) if overall is not None else 0.0
    return metrics, samples


EVALUATION = CorpusEvaluation(
    "default", "eval", "test", preset="rad-ace", queries=queries, score=score,
    primary=lambda metrics: "judge_score" if "judge_score" in metrics else "answer_accuracy")
