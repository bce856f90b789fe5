"""radvlm's benchmark, per task of the rows given: classification macro-F1 over the 14 CheXpert
labels read from free text with negation handled; grounding mAP at IoU 0.5 and mean IoU (boxes
parsed from the answer in any common form); report ROUGE-L and BLEU (+ RadEval's clinical metrics
when installed). Every instance is asked with its own stored human turn (the training turn).
Conversations (`conversation`, `conversation_grounded`) are answered turn by turn with the model's
own answers in the history and scored 0-10 by an LLM judge when one is given."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from radcorpora.corpora.radvlm.records import ALL_CONFIGS, CONVERSATION_TASKS
from radcorpora.llm.errors import ComplianceError
from radcorpora.spec.evaluation import (
    ConversationItem,
    CorpusEvaluation,
    EvalContext,
    MetricKit,
    Query,
)

MAX_NEW_TOKENS = 96
CONVERSATION_MAX_NEW_TOKENS = 128
GROUNDING_TASKS = ("anatomical_grounding", "abnormality_grounding", "abnormality_detection", "phrase_grounding")


def strip_image(text: str) -> str:
    return text.replace("<image>\n", "").replace("<image>", "").strip()


def first_turn(instance: dict[str, Any]) -> str:
    """An instance's human turn as trained: `<image>` first, then the prompt."""
    return f"<image>\n{strip_image(instance['conversations'][0]['value'])}"


def conversation_rounds(instance: dict[str, Any]) -> list[tuple[str, str]]:
    """(human turn as written, expected gpt answer) of each round of a conversation instance."""
    turns = instance["conversations"]
    return [(turns[k]["value"], turns[k + 1]["value"]) for k in range(0, len(turns) - 1, 2)]


def queries(rows: Sequence[dict[str, Any]], ctx: EvalContext) -> list[Query]:
    """Single-turn instances first (in row order), then conversations: one query per instance."""
    single, talks = [], []
    for i, row in enumerate(rows):
        for instance in row["instances"]:
            if row["task"] in CONVERSATION_TASKS:
                rounds = conversation_rounds(instance)
                talks.append(Query(instance["id"], i, tuple(q for q, _ in rounds), CONVERSATION_MAX_NEW_TOKENS,
                                   meta={"references": [a for _, a in rounds]}))
            else:
                single.append(Query(instance["id"], i, (first_turn(instance),), MAX_NEW_TOKENS,
                                    meta={"reference": instance["conversations"][1]["value"], "instance": instance}))
    return single + talks


def primary(metrics: dict[str, Any]) -> str:
    """The headline metric of the tasks evaluated: classification macro-F1, else grounding mAP,
    else report ROUGE-L, else the conversation judge's score on 0-100 (when it scored any)."""
    for key in ("classification_macro_f1", "abnormality_grounding_map50", "phrase_grounding_map50",
                "anatomical_grounding_map50", "abnormality_detection_map50", "report_rouge_l",
                *(f"{task}_judge_score_100" for task in CONVERSATION_TASKS)):
        if metrics.get(key) is not None:
            return key
    return "instances"


def score(asked: Sequence[Query], answers: Sequence[Sequence[str]], rows: Sequence[dict[str, Any]],
          kit: MetricKit, uncertain: str = "absent") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from radcorpora.ops.boxes import parse_boxes
    from radcorpora.ops.chexpert_mentions import macro_f1, predicted_labels
    from radcorpora.schemas.boxes import Box

    samples: list[dict[str, Any]] = []
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    talks = [(q, a) for q, a in zip(asked, answers) if rows[q.row]["task"] in CONVERSATION_TASKS]
    for query, said in zip(asked, answers):
        row = rows[query.row]
        if row["task"] in CONVERSATION_TASKS:
            continue
        sample = {"id": query.id, "task": row["task"], "prompt": strip_image(query.turns[0]),
                  "reference": query.meta["reference"], "prediction": said[0]}
        samples.append(sample)
        by_task[row["task"]].append({"sample": sample, "row": row, "instance": query.meta["instance"]})
    metrics: dict[str, Any] = {"instances": len(samples)}
    if "abnormality_classification" in by_task:
        items = by_task["abnormality_classification"]
        predicted = [predicted_labels(x["sample"]["prediction"], uncertain) for x in items]
        truth = [set(x["row"]["positive_labels"]) or {"No Finding"} for x in items]
        for x, p in zip(items, predicted):
            x["sample"]["parsed_labels"] = sorted(p)
        f1, per_label = macro_f1(predicted, truth)
        metrics["classification_macro_f1"] = round(100 * f1, 2)
        metrics["classification_f1_by_label"] = {k: round(100 * v, 2) for k, v in per_label.items()}
    for task in GROUNDING_TASKS:
        if task not in by_task:
            continue
        items = by_task[task]
        predictions = [parse_boxes(x["sample"]["prediction"]) for x in items]
        targets = [[Box.model_validate(b) for b in x["instance"]["boxes"]] for x in items]
        for x, p in zip(items, predictions):
            x["sample"]["parsed_boxes"] = [list(b.xyxy) for b in p]
        found = kit.grounding_map(predictions, targets)
        metrics[f"{task}_map50"] = round(100 * max(found["map50"], 0.0), 2)
        metrics[f"{task}_mean_iou"] = round(100 * found["mean_iou"], 2)
    if "report_generation" in by_task:
        items = by_task["report_generation"]
        predictions = [x["sample"]["prediction"] for x in items]
        references = [x["row"]["report"] or x["sample"]["reference"] for x in items]
        text = kit.text(predictions, references, ("rouge_l", "bleu"))
        text.pop("per_sample", None)
        metrics.update({f"report_{k}": v for k, v in text.items()})
        metrics["report_clinical"] = kit.radeval(predictions, references)
    if talks:
        found_metrics, talked = score_conversations(talks, rows, kit)
        metrics.update(found_metrics)
        samples += talked
        metrics["instances"] = len(samples)
    return metrics, samples


def score_conversations(talks: Sequence[tuple[Query, Sequence[str]]], rows: Sequence[dict[str, Any]],
                        kit: MetricKit) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics per config (= the row's task): `<task>_conversations`, `<task>_rounds`,
    `<task>_judge` (did it run, with what), and with a judge `<task>_judge_score` (mean over judged
    conversations, 0-10), `<task>_judge_score_100` (x10), `<task>_judged`, `<task>_judge_failures`
    (no reply, refused, no valid score line after the repair: counted, never dropped)."""
    judge = kit.judge
    samples: list[dict[str, Any]] = []
    for query, said in talks:
        row = rows[query.row]
        samples.append({"id": query.id, "task": row["task"], "source": row["source"], "rounds": len(query.turns),
                        "turns": [{"question": strip_image(q), "reference": ref, "prediction": pred}
                                  for q, ref, pred in zip(query.turns, query.meta["references"], said)],
                        "judge_status": "not_run", "judge_score": None, "judge_reason": None, "judge_error": None})
    refused = None
    if judge is not None and samples:
        asked = [ConversationItem(s["id"], [(t["question"], t["reference"], t["prediction"]) for t in s["turns"]],
                                  rows[q.row]["lineage"]["licence_class"]) for s, (q, _) in zip(samples, talks)]
        try:
            judgements = judge.conversation(asked)
        except ComplianceError as exc:  # credentialed rows, unapproved provider: nothing was sent
            refused = f"refused: {exc}"
            judgements = [None for _ in asked]
        for sample, judgement in zip(samples, judgements):
            if judgement is not None and judgement.parsed is not None:
                sample.update(judge_status="scored", judge_score=judgement.parsed.score,
                              judge_reason=judgement.parsed.reason)
            else:
                sample.update(judge_status="failed", judge_error=judgement.error if judgement is not None else refused)
    metrics: dict[str, Any] = {}
    for task in sorted({s["task"] for s in samples}):
        mine = [s for s in samples if s["task"] == task]
        metrics[f"{task}_conversations"] = len(mine)
        metrics[f"{task}_rounds"] = sum(s["rounds"] for s in mine)
        if judge is None:
            metrics[f"{task}_judge"] = {"run": False, "reason": "no judge given (--judge PROVIDER:MODEL)"}
            continue
        scores = [s["judge_score"] for s in mine if s["judge_status"] == "scored"]
        mean = round(sum(scores) / len(scores), 3) if scores else None
        metrics[f"{task}_judge"] = {"run": True, "model": judge.spec, **({"error": refused} if refused else {})}
        metrics[f"{task}_judge_score"] = mean
        metrics[f"{task}_judge_score_100"] = round(10 * mean, 2) if mean is not None else None
        metrics[f"{task}_judged"] = len(scores)
        metrics[f"{task}_judge_failures"] = len(mine) - len(scores)
    return metrics, samples


EVALUATION = CorpusEvaluation(
    "abnormality_classification", "abnormality_classification", "test", preset="radvlm", queries=queries,
    score=score, primary=primary, per_instance=frozenset(ALL_CONFIGS), judged_configs=CONVERSATION_TASKS)
