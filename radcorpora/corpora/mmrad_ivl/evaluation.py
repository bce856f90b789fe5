"""mmrad-ivl's training examples and benchmark, and the paper's contrast for `radcorpora check`.

A trace row becomes a multi-image conversation. Variant `crops` (the paper's multimodal CoT: full
image + regional text + regional vision): the prompt with the full image, then the response cut at
each `<image>` placeholder: the model says which region it inspects, the crop of that region comes
back as a human turn, the model describes it with its box and goes on; the last turn ends with the
report. Variant `no-crops` (the paper's text-only CoT: full image + regional text): the same
response in one turn with the crops left out. The text-only twin: `no-crops` with every image
withheld. Evaluation asks the same turns (the crops given are the row's own, as the paper gives
its multimodal condition the regional images) with the model's own answers in the history.

Metrics (0-100): report BLEU-1..4, METEOR, ROUGE-L; RadGraph F1 through RadEval when installed;
grounding consistency (mean IoU of the predicted boxes vs the reference steps' boxes, matched by
anatomical group); semantic consistency (step text vs the crop at the predicted box, through an
image-text encoder such as BiomedCLIP when its weights are on disk); generation consistency is
n/a (our models write no images; trace_metrics.generation_consistency scores models that do).

Pass rule of the check: the `crops` model's report ROUGE-L beats the `no-crops` model's by at
least the margin (the crops must add something the regional text does not); the text-only twin
is reported beside them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from radcorpora.schemas.boxes import Box
from radcorpora.schemas.interleaved import IMAGE_PLACEHOLDER
from radcorpora.spec.evaluation import (
    CorpusEvaluation,
    EvalContext,
    MetricKit,
    Query,
    Variant,
    queries_from_example,
)

CROPS = Variant("crops", "full image + regional text + regional crops (the paper's multimodal CoT)",
                loss="all_assistant")  # its gpt turns are the row's one response, cut at the crops
NO_CROPS = Variant("no-crops", "full image + regional text, crops left out (the paper's text-only CoT)")
TEXT_ONLY = Variant("text-only", "regional text only: the no-crops conversation with every image withheld",
                    images=False)
TURN_TOKENS = 160  # per turn of the crops conversation (a step, or the last step and the report)
TRACE_TOKENS = 640  # the whole trace and report in one turn
REPORT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l")
GENERATION_NA = ("n/a: the reference models write text only; generation consistency (SSIM of generated crops vs "
                 "crops at the predicted boxes) applies to models that output images")


def report_marker() -> str:
    """The words before the report in a response ("the report reads:"), from the row wording file."""
    from radcorpora.corpora.mmrad_ivl.build import load_wording

    lead = load_wording().closing.split("{report}")[0].strip()
    return lead.split(",")[-1].strip()


def _without_placeholders(text: str) -> str:
    return re.sub(r"[ \t]*" + re.escape(IMAGE_PLACEHOLDER) + r"[ \t]*", " ", text).strip()


def example(row: dict[str, Any], ctx: EvalContext) -> dict[str, Any]:
    """The training conversation of a trace row for the context's variant: {id, images, conversations}
    (images: the ones its placeholders take, in order)."""
    images = list(row.get("images") or [])
    prompt = row["prompt"]
    if ctx.variant.name == CROPS.name:
        segments = row["response"].split(IMAGE_PLACEHOLDER)
        turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": segments[0].strip()}]
        for segment in segments[1:]:
            turns += [{"from": "human", "value": IMAGE_PLACEHOLDER}, {"from": "gpt", "value": segment.strip()}]
        return {"id": row["id"], "images": images, "conversations": turns}
    return {"id": row["id"], "images": images[:1],
            "conversations": [{"from": "human", "value": prompt},
                              {"from": "gpt", "value": _without_placeholders(row["response"])}]}


def queries(rows: Sequence[dict[str, Any]], ctx: EvalContext) -> list[Query]:
    crops = ctx.variant.name == CROPS.name
    return [queries_from_example(example(row, ctx), i, TURN_TOKENS if crops else TRACE_TOKENS,
                                 None if crops else (0,), variant=ctx.variant.name) for i, row in enumerate(rows)]


def predicted_trace(query: Query, said: Sequence[str]) -> str:
    """The model's answers as one interleaved response: in the crops conversation the crops came
    between its turns, so the turns are joined by placeholders, as the row's response is written."""
    return f" {IMAGE_PLACEHOLDER} ".join(s.strip() for s in said) if len(said) > 1 else (said[0] if said else "")


def score(asked: Sequence[Query], answers: Sequence[Sequence[str]], rows: Sequence[dict[str, Any]],
          kit: MetricKit) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    marker = report_marker()
    samples: list[dict[str, Any]] = []
    consistency: list[dict[str, Any]] = []
    traces = []
    for query, said in zip(asked, answers):
        row = rows[query.row]
        size = (row["steps"][0]["box"].get("width"), row["steps"][0]["box"].get("height"))
        text = predicted_trace(query, said)
        trace = kit.parse_trace(text, marker, *size)
        traces.append(trace)
        reference = [(s["group"], Box.model_validate(s["box"])) for s in row["steps"]]
        found = kit.grounding_consistency([(s.group, s.box) for s in trace.steps], reference)
        consistency.append(found)
        samples.append({"id": row["id"], "prediction": text, "report": trace.report, "reference_report": row["report"],
                        "steps": [{"group": s.group, "box": list(s.box.xyxy) if s.box else None} for s in trace.steps],
                        "reference_steps": [{"group": g, "box": list(b.xyxy)} for g, b in reference],
                        "grounding_iou": round(100 * found["mean_iou"], 2) if found["mean_iou"] is not None else None})
    predictions = [s["report"] or "" for s in samples]
    references = [s["reference_report"] for s in samples]
    text = kit.text(predictions, references, REPORT_METRICS)
    per_sample = text.pop("per_sample", {})
    for name, values in per_sample.items():
        for sample, value in zip(samples, values):
            sample[f"report_{name}"] = value
    ious = [c["mean_iou"] for c in consistency if c["mean_iou"] is not None]
    shares = [c["grounded_share"] for c in consistency if c["grounded_share"] is not None]
    metrics: dict[str, Any] = {
        "traces": len(samples),
        "reports_found": sum(s["report"] is not None for s in samples),
        **{f"report_{k}": v for k, v in text.items()},
        "radgraph": kit.radgraph(predictions, references),
        "grounding_consistency": round(100 * sum(ious) / len(ious), 2) if ious else 0.0,
        "grounded_share": round(100 * sum(shares) / len(shares), 2) if shares else 0.0,
        "generation_consistency": GENERATION_NA,
        "semantic_consistency": _semantic(asked, traces, kit),
    }
    return metrics, samples


def _semantic(asked: Sequence[Query], traces: Sequence[Any], kit: MetricKit) -> dict[str, Any]:
    """cos(step text, crop of the full image at the step's predicted box), mean over steps with a
    box, through the kit's image-text encoder; the paper's second term needs generated crops."""
    encoder, why = kit.image_text_encoder()
    if encoder is None:
        return {"skipped": why}
    values = []
    for query, trace in zip(asked, traces):
        boxed = [s for s in trace.steps if s.box is not None]
        if not boxed:
            continue
        found = kit.semantic_consistency(kit.row_image(query.row, 0), [s.box for s in boxed],
                                         [s.rationale for s in boxed])
        if found.get("text_image") is not None:
            values.append(found["text_image"])
    return {"text_image": round(sum(values) / len(values), 4) if values else None, "traces": len(values),
            "note": "text vs crop at the predicted box only; the image-image term needs generated crops"}


EVALUATION = CorpusEvaluation(
    "default", "default", "test", preset="radvlm", queries=queries, score=score,
    primary=lambda metrics: "report_rouge_l", example=example, variants=(CROPS, NO_CROPS, TEXT_ONLY),
    contrast=(CROPS.name, NO_CROPS.name),
    pass_rule="the crops model's report ROUGE-L beats the no-crops model's (full image + regional text) by at least "
              "the margin; the text-only twin is reported beside them")
