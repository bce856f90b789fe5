"""The metric implementations corpora score with (spec.evaluation.MetricKit): text metrics from
rouge-score, sacrebleu and nltk/pycocoevalcap; RadGraph and GREEN through RadEval; BERTScore through
torchmetrics; grounding mAP through pycocotools / torchmetrics (grounding_metrics); the MMRad-IVL
consistency metrics (trace_metrics); and the LLM judge. A metric whose library, model or weights
are not on this machine returns `{"skipped": reason}`: never a stand-in number, never a download.

Scales: every text metric on 0-100 (like the other corpora's accuracies), so a check margin in
points means the same whatever the metric.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radcorpora.reference_models import trace_metrics
from radcorpora.schemas.boxes import Box

TEXT_METRICS = ("rouge_l", "rouge_1", "bleu", "bleu1", "bleu2", "bleu3", "bleu4", "meteor")
BERTSCORE_MODEL = "roberta-large"  # bert-score's default English model
BERTSCORE_ENV = "RADCORPORA_BERTSCORE_MODEL"  # a folder (or cached repo id) to score BERTScore with

# (predictions, references) -> {metric: value} or {"skipped": reason}: a user-registered GREEN (or
# any report scorer, e.g. a local model), used in place of RadEval's.
ReportScorer = Callable[[Sequence[str], Sequence[str]], dict[str, Any]]


def text_scores(predictions: Sequence[str], references: Sequence[str],
                which: Sequence[str] = ("rouge_l", "bleu"), nltk_data: str | Path | None = None,
                meteor: str | None = "auto") -> dict[str, Any]:
    """The asked text metrics on 0-100: `rouge_l` / `rouge_1` (F1, rouge-score, mean over samples),
    `bleu` (sacrebleu corpus BLEU-4, its default tokenisation), `bleu1`..`bleu4` (corpus BLEU-n,
    lower-cased, no smoothing, as the report-generation papers read it), `meteor` (pycocoevalcap's
    METEOR 1.5 with java, else nltk's with WordNet on disk, else skipped; `meteor` picks the backend,
    None turns it off). Per-sample ROUGE and METEOR under `per_sample`."""
    unknown = sorted(set(which) - set(TEXT_METRICS))
    if unknown:
        raise ValueError(f"unknown text metric(s) {unknown} (known: {', '.join(TEXT_METRICS)})")
    predictions, references = [str(p or "") for p in predictions], [str(r or "") for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    out: dict[str, Any] = {}
    per_sample: dict[str, list[Any]] = {}
    if not predictions:
        return {name: 0.0 for name in which}
    rouge_types = [t for t, name in (("rougeL", "rouge_l"), ("rouge1", "rouge_1")) if name in which]
    if rouge_types:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(rouge_types)
        scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
        for kind in rouge_types:
            name = {"rougeL": "rouge_l", "rouge1": "rouge_1"}[kind]
            values = [s[kind].fmeasure for s in scores]
            out[name] = round(100 * sum(values) / len(values), 2)
            per_sample[name] = [round(100 * v, 2) for v in values]
    if "bleu" in which:
        import sacrebleu

        out["bleu"] = round(sacrebleu.corpus_bleu(predictions, [references]).score, 2)
    orders = [n for n in trace_metrics.BLEU_ORDERS if f"bleu{n}" in which]
    if orders:
        from sacrebleu.metrics import BLEU

        for n in orders:
            bleu = BLEU(max_ngram_order=n, lowercase=True, smooth_method="none")
            out[f"bleu{n}"] = round(bleu.corpus_score(predictions, [references]).score, 2)
    if "meteor" in which and meteor is None:
        out["meteor"] = {"skipped": "METEOR turned off (metric_kit.Kit(meteor=None))"}
    elif "meteor" in which:
        corpus, samples, backend = trace_metrics.meteor_scores(predictions, references, meteor, nltk_data)
        out["meteor"] = round(100 * corpus, 2) if isinstance(corpus, float) else corpus
        if backend:
            out["meteor_backend"] = backend
            per_sample["meteor"] = [round(100 * v, 2) if v is not None else None for v in samples]
    if per_sample:
        out["per_sample"] = per_sample
    return out


def radeval_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """RadGraph F1, GREEN, BERTScore and CheXbert F1 through RadEval when it and its models are
    installed locally; it needs torchvision, which breaks the CPU torch this project pins, so it is
    an optional integration, reported as skipped with the reason otherwise."""
    try:
        from RadEval import RadEval  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision failing to load under it
        return {"skipped": f"RadEval not available ({type(exc).__name__}: {exc}); pip install RadEval with a "
                           "torch/torchvision pair and its models to get RadGraph F1, GREEN, BERTScore, CheXbert F1"}
    try:
        evaluator = RadEval(do_radgraph=True, do_green=True, do_bertscore=True, do_chexbert=True)
        return {k: float(v) for k, v in evaluator(refs=list(references), hyps=list(predictions)).items()}
    except Exception as exc:  # noqa: BLE001 - missing local model weights, no network for them
        return {"skipped": f"RadEval could not run ({type(exc).__name__}: {exc})"}


def radeval_green(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """GREEN (Ostmeier et al.) through RadEval and its local GREEN model; skipped, saying why, when
    either is missing (register your own scorer with `Kit(green=...)`)."""
    try:
        from RadEval import RadEval  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001
        return {"skipped": f"GREEN not available: RadEval does not import ({type(exc).__name__}: {exc}); install "
                           "RadEval with its GREEN model, or register a scorer (metric_kit.Kit(green=...))"}
    try:
        try:
            evaluator = RadEval(metrics=["green"])  # RadEval 2.x
        except TypeError:
            evaluator = RadEval(do_green=True)
        raw = evaluator(refs=list(references), hyps=list(predictions))
    except Exception as exc:  # noqa: BLE001 - the GREEN model not on disk
        return {"skipped": f"GREEN could not run ({type(exc).__name__}: {exc})"}
    value = raw.get("green") if isinstance(raw.get("green"), (int, float)) else None
    return {"green": round(100 * float(value), 2)} if value is not None else {"skipped": f"RadEval gave no green: {sorted(raw)}"}


def bertscore_model_path(model: str | Path | None = None) -> tuple[str | None, str]:
    """(a local path or cached repo id BERTScore can load without the network, "") or (None, why)."""
    name = str(model or os.environ.get(BERTSCORE_ENV) or BERTSCORE_MODEL)
    if Path(name).is_dir():
        return (name, "") if (Path(name) / "config.json").is_file() else (None, f"{name} holds no config.json")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError as exc:
        return None, f"huggingface_hub not importable ({exc})"
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - not a repo id either (a folder that does not exist)
        cached = None
    if not isinstance(cached, str):
        return None, (f"BERTScore's model {name} is not on disk (set {BERTSCORE_ENV} to a local model folder, "
                      f"or download it first: `hf download {name}`)")
    return str(Path(cached).parent), ""


def bertscore(predictions: Sequence[str], references: Sequence[str], model: str | Path | None = None) -> dict[str, Any]:
    """BERTScore F1 (mean, 0-100) through torchmetrics, when its model is on disk; skipped otherwise."""
    path, why = bertscore_model_path(model)
    if path is None:
        return {"skipped": why}
    if not predictions:
        return {"bertscore_f1": 0.0}
    try:
        from torchmetrics.functional.text import bert_score

        scores = bert_score(list(predictions), list(references), model_name_or_path=path, verbose=False,
                            num_threads=0)
    except Exception as exc:  # noqa: BLE001 - a broken model folder, a tokenizer missing
        return {"skipped": f"BERTScore could not run with {path} ({type(exc).__name__}: {exc})"}
    f1 = [float(v) for v in scores["f1"].reshape(-1).tolist()]
    return {"bertscore_f1": round(100 * sum(f1) / len(f1), 2), "model": path}


@dataclass
class Kit:
    """spec.evaluation.MetricKit: what `evaluate` hands a corpus' `score`. `judge`: an LLM judge or
    None; `green`: a registered report scorer (default: RadEval's GREEN when installed);
    `encoder`: an image-text encoder (trace_metrics.ImageTextEncoder) or None to load BiomedCLIP
    from `encoder_source` / the Hugging Face cache when its weights are on disk."""

    judge: Any = None
    green_scorer: ReportScorer | None = None
    encoder: Any = None
    encoder_source: str | Path | None = None
    bertscore_model: str | Path | None = None
    nltk_data: str | Path | None = None
    meteor: str | None = "auto"  # METEOR backend: auto, pycocoevalcap (java), nltk (WordNet), None (off)
    row_images: Callable[[int], list[Any]] | None = None  # row index -> its images (set by `evaluate`)
    _encoder_reason: str | None = None

    def text(self, predictions: Sequence[str], references: Sequence[str],
             which: Sequence[str] = ("rouge_l", "bleu")) -> dict[str, Any]:
        return text_scores(predictions, references, which, self.nltk_data, self.meteor)

    def radeval(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        return radeval_scores(predictions, references)

    def radgraph(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        found = trace_metrics.radgraph_f1(predictions, references)
        return found if "skipped" in found else {k: round(100 * v, 2) for k, v in found.items()}

    def bertscore(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        return bertscore(predictions, references, self.bertscore_model)

    def green(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        return (self.green_scorer or radeval_green)(predictions, references)

    def grounding_map(self, predictions: Sequence[Sequence[Box]], targets: Sequence[Sequence[Box]]) -> dict[str, float]:
        from radcorpora.reference_models.grounding_metrics import grounding_scores

        return grounding_scores(predictions, targets)

    def grounding_consistency(self, predicted: Sequence[tuple[str | None, Box | None]],
                              reference: Sequence[tuple[str, Box]]) -> dict[str, Any]:
        return trace_metrics.grounding_consistency(list(predicted), list(reference))

    def image_text_encoder(self) -> tuple[Any, str]:
        """(encoder, "") or (None, why): the given one, else BiomedCLIP when its weights are on disk."""
        if self.encoder is None and self._encoder_reason is None:
            self.encoder, self._encoder_reason = trace_metrics.load_biomedclip(self.encoder_source)
        return self.encoder, self._encoder_reason or ""

    def semantic_consistency(self, image: bytes, boxes: Sequence[Box | None], texts: Sequence[str]) -> dict[str, Any]:
        """cos(text i, crop of `image` at box i) per step through the encoder (no box: not scored);
        the paper's second term (generated crop vs crop at the box) needs generated crops."""
        encoder, why = self.image_text_encoder()
        crops = [trace_metrics.crop_bytes(image, box) if box is not None else None for box in boxes]
        return trace_metrics.semantic_consistency(encoder, crops, texts, unavailable=why or "no encoder")

    def row_image(self, row: int, index: int) -> bytes:
        """PNG/JPEG bytes of image `index` of evaluated row `row` (set by the runner)."""
        if self.row_images is None:
            raise RuntimeError("this kit was not given the evaluated rows' images")
        return image_bytes(self.row_images(row)[index])

    def parse_trace(self, text: str, report_marker: str, width: int | None, height: int | None) -> Any:
        return trace_metrics.parse_trace(text, report_marker=report_marker, width=width, height=height)


def image_bytes(image: Any) -> bytes:
    """Encoded bytes of a row image as `datasets` gives it ({"bytes": ...}) or a PIL image (as PNG)."""
    if isinstance(image, dict):
        return image["bytes"]
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
