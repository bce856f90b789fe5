"""Evaluating a (fine-tuned) reference model with a corpus' own metrics; `EVALUATORS` has one
entry per corpus.

radimagenet-vqa: closed answers are read on word boundaries ("nodule" is not "no"), multiple
choice letters are read robustly (a bare letter, "(B)", "answer: B", or the option's text), open
answers by normalised match offline or by an LLM judge; accuracy by task x question type as in
the paper. rad-ace-cot: the rate of well-formed think/answer outputs, answer accuracy against
VQA-RAD, ROUGE-L and BLEU, and the five-criteria LLM judge; each question is asked with its own
prompt. radvlm: per task (classification F1, grounding mAP, report text metrics), and multi-turn
conversations answered turn by turn with the model's own answers in the history, scored 0-10 by an
LLM judge. Every evaluation returns per-sample predictions next to its metrics, so every number can
be traced.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from radcorpora.corpora.radvlm.records import CONVERSATION_TASKS
from radcorpora.llm.errors import ComplianceError
from radcorpora.ops.cot import split_cot
from radcorpora.reference_models.collate import decode_images
from radcorpora.reference_models.generation import answer_turns
from radcorpora.reference_models.judge import (
    CRITERIA,
    ConversationItem,
    Judge,
    JudgeItem,
    Judgement,
)

LETTERS = "ABCD"
MC_INSTRUCTION = "Answer with the letter of the correct option."


def question_prompt(question: str, choices: Sequence[str] | None) -> str:
    """The human turn for a row whose corpus gives no renderer of its own (a foreign build); a
    corpus that has one is evaluated with the wording it trained on (`render` below)."""
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


def generate(model: Any, processor: Any, rows: Sequence[dict[str, Any]], prompts: Sequence[str], text_only: bool,
             max_new_tokens: int = 24, batch_size: int = 16) -> list[str]:
    """Greedy answers, one per (row, prompt)."""
    answers: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        answers += answer_turns(model, processor, [[{"from": "human", "value": p}] for p in prompts[start:start + batch_size]],
                                [None if text_only else decode_images(row) for row in chunk], max_new_tokens)
    return answers


def conversation_history(questions: Sequence[str], answers: Sequence[str]) -> list[dict[str, str]]:
    """The LLaVA turns shown to the model before it answers `questions[-1]`: every earlier question
    with the model's OWN answer to it (never the reference), so each turn is judged as it would
    play out in use."""
    assert len(answers) == len(questions) - 1
    turns: list[dict[str, str]] = []
    for question, answer in zip(questions, [*answers, None]):
        turns.append({"from": "human", "value": question})
        if answer is not None:
            turns.append({"from": "gpt", "value": answer})
    return turns


def generate_conversations(model: Any, processor: Any, rows: Sequence[dict[str, Any]],
                           questions: Sequence[Sequence[str]], text_only: bool, max_new_tokens: int = 128,
                           batch_size: int = 8) -> list[list[str]]:
    """The model's answers to every human turn of each conversation, in order, its own answers in
    the history. Conversations go in groups of `batch_size` (similar lengths together), batched
    turn by turn; each group's images are decoded once for all its turns."""
    answers: list[list[str]] = [[] for _ in questions]
    order = sorted(range(len(questions)), key=lambda i: len(questions[i]))
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        images = {i: None if text_only else decode_images(rows[i]) for i in group}
        for turn in range(max(len(questions[i]) for i in group)):
            active = [i for i in group if turn < len(questions[i])]
            replies = answer_turns(model, processor,
                                   [conversation_history(questions[i][:turn + 1], answers[i]) for i in active],
                                   [images[i] for i in active], max_new_tokens)
            for i, reply in zip(active, replies):
                answers[i].append(reply)
    return answers


IMAGE_COLUMNS = ("image", "images")


def without_images(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows' text fields, read once: iterating a `datasets.Dataset` would decode every image
    again for each pass over questions and answers (generation reads the images itself)."""
    if hasattr(rows, "remove_columns"):
        return list(rows.remove_columns([c for c in IMAGE_COLUMNS if c in rows.column_names]))
    return [{k: v for k, v in row.items() if k not in IMAGE_COLUMNS} for row in rows]


def _percent(hits: Sequence[bool]) -> float:
    return round(100 * sum(hits) / len(hits), 2) if hits else 0.0


def evaluate_radimagenet_vqa(model: Any, processor: Any, rows: Sequence[dict[str, Any]], text_only: bool = False,
                             batch_size: int = 16, judge: Judge | None = None,
                             render: Callable[[dict[str, Any]], str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-sample predictions) on benchmark rows; `render` is the builder's own prompt
    renderer (the training wording), `question_prompt` only a fallback for foreign rows."""
    texts = without_images(rows)
    prompts = [f"<image>\n{render(r)}" if render else question_prompt(r["question"], r["choices"]) for r in texts]
    predictions = generate(model, processor, rows, prompts, text_only, max_new_tokens=24, batch_size=batch_size)
    samples = []
    for row, prediction in zip(texts, predictions):
        correct, parsed = score_radimagenet_vqa(row, prediction)
        samples.append({"id": row["id"], "task": row["metadata"]["question_id"].split("_")[0],
                        "question_type": row["question_type"], "question": row["question"], "answer": row["answer"],
                        "prediction": prediction, "parsed": parsed, "correct": correct})
    metrics: dict[str, Any] = {}
    if judge is not None:
        open_ones = [(s, r) for s, r in zip(samples, texts) if r["question_type"] == "open"]
        items = [JudgeItem(s["id"], r["question"], r["metadata"]["correct_text"] or r["answer"], s["prediction"],
                           r["lineage"]["licence_class"]) for s, r in open_ones]
        judgements = judge.open_answers(items)
        for (sample, _), judgement in zip(open_ones, judgements):
            sample["matched"] = sample["correct"]
            sample["correct"] = bool(judgement.parsed and judgement.parsed.correct)  # type: ignore[attr-defined]
            if judgement.error:
                sample["judge_error"] = judgement.error
        metrics["judge"] = {"model": judge.spec, "open_answers": len(items),
                            "failed": sum(j.error is not None for j in judgements)}
    cells: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for sample in samples:
        cells[(sample["task"], sample["question_type"])].append(sample["correct"])
    metrics.update({"accuracy": _percent([s["correct"] for s in samples]),
                    "by_task_and_type": {f"{task}/{qtype}": _percent(v) for (task, qtype), v in sorted(cells.items())},
                    "questions": len(samples)})
    return metrics, samples


def cot_prompt(question: str) -> str:
    """The human turn of a rad-ace-cot example: the image, then the question (as in training)."""
    return f"<image>\n{question}"


def score_vqa_rad(answer_type: str, truth: str, answer: str) -> bool:
    """A VQA-RAD answer: yes/no on word boundaries, other answers by normalised containment."""
    truth_norm = normalise(truth)
    if answer_type == "CLOSED" and truth_norm in {"yes", "no"}:
        return parse_closed(answer) == truth_norm
    said = normalise(answer)
    return bool(truth_norm) and re.search(rf"\b{re.escape(truth_norm)}\b", said) is not None


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-L F1 (mean over samples, rouge-score) and corpus BLEU (sacrebleu), both 0-100."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if not predictions:
        return {"rouge_l": 0.0, "bleu": 0.0}
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)])
    return {"rouge_l": round(100 * sum(rouge) / len(rouge), 2), "bleu": round(bleu.score, 2)}


def evaluate_rad_ace_cot(model: Any, processor: Any, rows: Sequence[dict[str, Any]], text_only: bool = False,
                         batch_size: int = 8, judge: Judge | None = None,
                         max_new_tokens: int = 512, render: Callable[[dict[str, Any]], str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-sample predictions) on VQA-RAD test questions, each asked on its own."""
    texts = without_images(rows)
    prompts = [cot_prompt(r["question"]) for r in texts]
    outputs = generate(model, processor, rows, prompts, text_only, max_new_tokens=max_new_tokens, batch_size=batch_size)
    samples = []
    for row, output in zip(texts, outputs):
        parts = split_cot(output)
        answer = parts[1] if parts else output
        samples.append({"id": row["id"], "question": row["question"], "answer_type": row["answer_type"],
                        "reference": row["answer"], "prediction": output, "well_formed": parts is not None,
                        "parsed_answer": answer, "correct": score_vqa_rad(row["answer_type"], row["answer"], answer)})
    by_type = {kind: _percent([s["correct"] for s in samples if s["answer_type"] == kind]) for kind in ("CLOSED", "OPEN")}
    metrics: dict[str, Any] = {
        "questions": len(samples),
        "format_rate": _percent([s["well_formed"] for s in samples]),
        "answer_accuracy": _percent([s["correct"] for s in samples]),
        "closed_accuracy": by_type["CLOSED"], "open_accuracy": by_type["OPEN"],
        **text_metrics([s["parsed_answer"] for s in samples], [s["reference"] for s in samples]),
    }
    if judge is not None:
        items = [JudgeItem(s["id"], s["question"], s["reference"], s["prediction"], r["lineage"]["licence_class"])
                 for s, r in zip(samples, texts)]
        judgements = judge.criteria(items)
        scored = []
        for sample, judgement in zip(samples, judgements):
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


def radeval_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """RadGraph F1, GREEN, BERTScore and CheXbert F1 through RadEval when it and its models are
    installed locally; it needs torchvision, which breaks the CPU torch this project pins, so it is
    an optional integration, reported as skipped with the reason otherwise."""
    try:
        from RadEval import RadEval  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or torchvision failing to load under it
        return {"skipped": f"RadEval not available ({type(exc).__name__}: {exc}); pip install RadEval with a "
                           "torch/torchvision pair and its models to get RadGraph F1, GREEN, BERTScore, CheXbert F1"}
    try:
        evaluator = RadEval(do_radgraph=True, do_green=True, do_bertscore=True, do_chexbert=True)
        return {k: float(v) for k, v in evaluator(refs=list(references), hyps=list(predictions)).items()}
    except Exception as exc:  # missing local model weights, no network for them
        return {"skipped": f"RadEval could not run ({type(exc).__name__}: {exc})"}


def _first_turns(row: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(prompt without <image>, reference answer, instance) of each instance of a radvlm row."""
    found = []
    for instance in row["instances"]:
        human, gpt = instance["conversations"][0]["value"], instance["conversations"][1]["value"]
        found.append((human.replace("<image>\n", "").replace("<image>", ""), gpt, instance))
    return found


class _Picked(Sequence):
    """`rows[index[k]]` on access: a `datasets.Dataset` decodes a row's image only when a batch
    needs it, never all of them up front."""

    def __init__(self, rows: Sequence[dict[str, Any]], index: Sequence[int]):
        self._rows, self._index = rows, list(index)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, k: int) -> dict[str, Any]:  # type: ignore[override]
        return self._rows[self._index[k]]


def _strip_image(text: str) -> str:
    return text.replace("<image>\n", "").replace("<image>", "").strip()


def conversation_rounds(instance: dict[str, Any]) -> list[tuple[str, str]]:
    """(human turn as written, expected gpt answer) of each round of a conversation instance."""
    turns = instance["conversations"]
    return [(turns[k]["value"], turns[k + 1]["value"]) for k in range(0, len(turns) - 1, 2)]


def evaluate_conversations(model: Any, processor: Any, rows: Sequence[dict[str, Any]], texts: Sequence[dict[str, Any]],
                           text_only: bool = False, batch_size: int = 8, judge: Judge | None = None,
                           max_new_tokens: int = 128) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """radvlm `conversation` / `conversation_grounded` rows (`texts`: the same rows without images):
    the model answers every human turn in order with its own earlier answers in the history; the
    judge, when given, scores each whole conversation 0-10 against the expected answers. Metrics
    per config (= the row's task): `<task>_conversations`, `<task>_rounds`, `<task>_judge` (did it
    run, with what), and with a judge `<task>_judge_score` (mean over judged conversations, 0-10),
    `<task>_judge_score_100` (x10), `<task>_judged`, `<task>_judge_failures` (no reply, refused, no
    valid score line after the repair: counted, never dropped)."""
    items = [(i, instance) for i, row in enumerate(texts) for instance in row["instances"]]
    rounds = [conversation_rounds(instance) for _, instance in items]
    answers = generate_conversations(model, processor, _Picked(rows, [i for i, _ in items]),
                                     [[q for q, _ in r] for r in rounds], text_only,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size)
    samples: list[dict[str, Any]] = []
    for (i, instance), pairs, said in zip(items, rounds, answers):
        row = texts[i]
        samples.append({"id": instance["id"], "task": row["task"], "source": row["source"], "rounds": len(pairs),
                        "turns": [{"question": _strip_image(q), "reference": ref, "prediction": pred}
                                  for (q, ref), pred in zip(pairs, said)],
                        "judge_status": "not_run", "judge_score": None, "judge_reason": None, "judge_error": None})
    refused = None
    if judge is not None and samples:
        asked = [ConversationItem(s["id"], [(t["question"], t["reference"], t["prediction"]) for t in s["turns"]],
                                  texts[i]["lineage"]["licence_class"]) for s, (i, _) in zip(samples, items)]
        try:
            judgements = judge.conversation(asked)
        except ComplianceError as exc:  # credentialed rows, unapproved provider: nothing was sent
            refused = f"refused: {exc}"
            judgements = [Judgement(None, refused) for _ in asked]
        for sample, judgement in zip(samples, judgements):
            if judgement.parsed is not None:
                sample.update(judge_status="scored", judge_score=judgement.parsed.score,  # type: ignore[attr-defined]
                              judge_reason=judgement.parsed.reason)  # type: ignore[attr-defined]
            else:
                sample.update(judge_status="failed", judge_error=judgement.error)
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


def evaluate_radvlm(model: Any, processor: Any, rows: Sequence[dict[str, Any]], text_only: bool = False,
                    batch_size: int = 8, judge: Judge | None = None, render: Callable[[dict[str, Any]], str] | None = None,
                    uncertain: str = "absent", max_new_tokens: int = 96,
                    conversation_max_new_tokens: int = 128) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per task of the rows given: classification macro-F1 over the 14 CheXpert labels read from
    free text with negation handled; grounding mAP at IoU 0.5 and mean IoU (boxes parsed from the
    answer in any common form); report ROUGE-L and BLEU (+ RadEval's clinical metrics when
    installed); conversations answered turn by turn and scored by the judge (see
    `evaluate_conversations`). Each instance is asked on its own; per-sample predictions are kept."""
    from radcorpora.ops.boxes import parse_boxes
    from radcorpora.ops.chexpert_mentions import macro_f1, predicted_labels
    from radcorpora.reference_models.grounding_metrics import grounding_scores
    from radcorpora.schemas.boxes import Box

    texts = without_images(rows)
    talks = [i for i, row in enumerate(texts) if row["task"] in CONVERSATION_TASKS]
    single = [i for i, row in enumerate(texts) if row["task"] not in CONVERSATION_TASKS]
    expanded = [(i, prompt, reference, instance) for i in single
                for prompt, reference, instance in _first_turns(texts[i])]
    image_rows = _Picked(rows, [i for i, *_ in expanded])
    prompts = [f"<image>\n{prompt}" for _, prompt, _, _ in expanded]
    outputs = generate(model, processor, image_rows, prompts, text_only, max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    samples: list[dict[str, Any]] = []
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (i, prompt, reference, instance), output in zip(expanded, outputs):
        row = texts[i]
        sample = {"id": instance["id"], "task": row["task"], "prompt": prompt, "reference": reference,
                  "prediction": output}
        samples.append(sample)
        by_task[row["task"]].append({"sample": sample, "row": row, "instance": instance})
    metrics: dict[str, Any] = {"instances": len(samples)}
    if "abnormality_classification" in by_task:
        items = by_task["abnormality_classification"]
        predicted = [predicted_labels(x["sample"]["prediction"], uncertain) for x in items]
        truth = [set(x["row"]["positive_labels"]) or {"No Finding"} for x in items]
        for x, p in zip(items, predicted):
            x["sample"]["parsed_labels"] = sorted(p)
        score, per_label = macro_f1(predicted, truth)
        metrics["classification_macro_f1"] = round(100 * score, 2)
        metrics["classification_f1_by_label"] = {k: round(100 * v, 2) for k, v in per_label.items()}
    for task in ("anatomical_grounding", "abnormality_grounding", "abnormality_detection", "phrase_grounding"):
        if task not in by_task:
            continue
        items = by_task[task]
        predictions = [parse_boxes(x["sample"]["prediction"]) for x in items]
        targets = [[Box.model_validate(b) for b in x["instance"]["boxes"]] for x in items]
        for x, p in zip(items, predictions):
            x["sample"]["parsed_boxes"] = [list(b.xyxy) for b in p]
        scores = grounding_scores(predictions, targets)
        metrics[f"{task}_map50"] = round(100 * max(scores["map50"], 0.0), 2)
        metrics[f"{task}_mean_iou"] = round(100 * scores["mean_iou"], 2)
    if "report_generation" in by_task:
        items = by_task["report_generation"]
        predictions = [x["sample"]["prediction"] for x in items]
        references = [x["row"]["report"] or x["sample"]["reference"] for x in items]
        metrics.update({f"report_{k}": v for k, v in text_metrics(predictions, references).items()})
        metrics["report_clinical"] = radeval_metrics(predictions, references)
    if talks:
        found, talked = evaluate_conversations(model, processor, _Picked(rows, talks), [texts[i] for i in talks],
                                               text_only, batch_size, judge, conversation_max_new_tokens)
        metrics.update(found)
        samples += talked
        metrics["instances"] = len(samples)
    return metrics, samples


def radvlm_primary(metrics: dict[str, Any]) -> str:
    """The headline metric of the tasks evaluated: classification macro-F1, else grounding mAP,
    else report ROUGE-L, else the conversation judge's score on 0-100 (when it scored any)."""
    for key in ("classification_macro_f1", "abnormality_grounding_map50", "phrase_grounding_map50",
                "anatomical_grounding_map50", "abnormality_detection_map50", "report_rouge_l",
                *(f"{task}_judge_score_100" for task in CONVERSATION_TASKS)):
        if metrics.get(key) is not None:
            return key
    return "instances"


@dataclass(frozen=True)
class Evaluator:
    run: Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]]
    primary: Callable[[dict[str, Any]], str]  # which metric (0-100, higher is better) the check compares
    # Configs the check also evaluates (with `run`, held-out split) when a judge is given, reported
    # next to the main metrics but not part of pass/fail: radvlm's conversations need the judge.
    judged_configs: tuple[str, ...] = ()


EVALUATORS: dict[str, Evaluator] = {
    "radimagenet-vqa": Evaluator(evaluate_radimagenet_vqa, lambda metrics: "accuracy"),
    "rad-ace-cot": Evaluator(evaluate_rad_ace_cot,
                             lambda metrics: "judge_score" if "judge_score" in metrics else "answer_accuracy"),
    "radvlm": Evaluator(evaluate_radvlm, radvlm_primary, judged_configs=CONVERSATION_TASKS),
}
