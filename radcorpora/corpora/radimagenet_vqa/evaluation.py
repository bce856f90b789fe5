"""radimagenet-vqa's benchmark: each question asked with the wording the builder rendered its
training turns with (`build.render_question`, through `prompt_renderer`); closed answers read on
word boundaries ("nodule" is not "no"), multiple-choice letters read robustly (a bare letter,
"(B)", "answer: B", or the option's text), open answers by normalised match or an LLM judge;
accuracy by task x question type as in the paper."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from radcorpora.spec.evaluation import (
    CorpusEvaluation,
    EvalContext,
    JudgeItem,
    MetricKit,
    Query,
    normalise,
    parse_closed,
    percent,
)

LETTERS = "ABCD"
MAX_NEW_TOKENS = 24
_LETTER = re.compile(r"^\s*(?:the\s+)?(?:answer\s*(?:is)?\s*[:\-]?\s*)?\(?([A-D])\)?(?:[.):,\s]|$)", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\b(?:answer|option)\s*(?:is|:)\s*\(?([A-D])\)?\b", re.IGNORECASE)


def parse_letter(prediction: str, choices: Sequence[str]) -> str | None:
    for pattern in (_LETTER, _ANSWER_IS):
        match = pattern.search(prediction)
        if match and match.group(1).upper() in LETTERS[:len(choices)]:
            return match.group(1).upper()
    said = normalise(prediction)
    named = [LETTERS[i] for i, c in enumerate(choices) if normalise(c) and normalise(c) in said]
    return named[0] if len(named) == 1 else None


def score_answer(row: dict[str, Any], prediction: str) -> tuple[bool, str | None]:
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


def human_turn(row: dict[str, Any], ctx: EvalContext) -> str:
    """The human turn a benchmark row is asked with: the builder's own renderer for this build
    (its seed and wording), the same function its `instruct` training turns were rendered by."""
    from radcorpora.corpora.radimagenet_vqa.build import prompt_renderer

    render = ctx.memo("render", lambda: prompt_renderer(ctx.manifest))
    return f"<image>\n{render(row)}"


def queries(rows: Sequence[dict[str, Any]], ctx: EvalContext) -> list[Query]:
    return [Query(row["id"], i, (human_turn(row, ctx),), MAX_NEW_TOKENS) for i, row in enumerate(rows)]


def score(asked: Sequence[Query], answers: Sequence[Sequence[str]], rows: Sequence[dict[str, Any]],
          kit: MetricKit) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    samples = []
    for query, said in zip(asked, answers):
        row, prediction = rows[query.row], said[0]
        correct, parsed = score_answer(row, prediction)
        samples.append({"id": row["id"], "task": row["metadata"]["question_id"].split("_")[0],
                        "question_type": row["question_type"], "question": row["question"], "answer": row["answer"],
                        "prediction": prediction, "parsed": parsed, "correct": correct})
    metrics: dict[str, Any] = {}
    judge = kit.judge
    if judge is not None:
        open_ones = [(s, rows[q.row]) for s, q in zip(samples, asked) if rows[q.row]["question_type"] == "open"]
        items = [JudgeItem(s["id"], r["question"], r["metadata"]["correct_text"] or r["answer"], s["prediction"],
                           r["lineage"]["licence_class"]) for s, r in open_ones]
        judgements = judge.open_answers(items)
        for (sample, _), judgement in zip(open_ones, judgements):
            sample["matched"] = sample["correct"]
            sample["correct"] = bool(judgement.parsed and judgement.parsed.correct)
            if judgement.error:
                sample["judge_error"] = judgement.error
        metrics["judge"] = {"model": judge.spec, "open_answers": len(items),
                            "failed": sum(j.error is not None for j in judgements)}
    cells: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for sample in samples:
        cells[(sample["task"], sample["question_type"])].append(sample["correct"])
    metrics.update({"accuracy": percent([s["correct"] for s in samples]),
                    "by_task_and_type": {f"{task}/{qtype}": percent(v) for (task, qtype), v in sorted(cells.items())},
                    "questions": len(samples)})
    return metrics, samples


EVALUATION = CorpusEvaluation(
    "instruct", "benchmark", "test", preset="radimagenet-vqa", queries=queries, score=score,
    primary=lambda metrics: "accuracy", per_question=frozenset({"instruct"}), alignment_config="alignment")
