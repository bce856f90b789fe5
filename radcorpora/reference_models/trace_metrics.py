"""Metrics of interleaved reasoning traces (mmrad-ivl): report NLG metrics and the paper's three
consistency metrics, as a library independent of the corpus package.

MMRad-IVL (arXiv 2602.12843, §3.2) scores a trace with
- report metrics: BLEU-1..4, METEOR, ROUGE-L (NLG) and RadGraph F1 (RG_e, RG_er, RG_ber);
- grounding consistency: mean IoU of the regions cut by the predicted boxes vs the reference
  crops (here: IoU of the normalised boxes, the step matched by its anatomical group);
- generation consistency: SSIM between each generated crop and the crop of the original image at
  the predicted box (for models that output images);
- semantic consistency: sim(step text, generated crop) + sim(generated crop, crop at the
  predicted box) with BiomedCLIP; pluggable here through `ImageTextEncoder`.

Scales are those of the paper's tables: every score in [0, 1] (semantic consistency, a sum of two
cosine similarities, in [-2, 2]). Libraries: sacrebleu (BLEU), rouge-score (ROUGE-L),
pycocoevalcap (METEOR 1.5, the captioning / report-generation protocol; it runs a bundled jar, so
it needs `java`) or nltk (METEOR, needs WordNet data on disk), scikit-image (SSIM), open_clip
(BiomedCLIP), RadEval (RadGraph). A metric whose library, runtime or weights are missing returns
`{"skipped": reason}` instead of a number: never a stand-in value.

A model's answer is read by `parse_trace`: steps (group words, `<image>` placeholders, printed
boxes read by ops.boxes.find_box_text) and the report after a marker (default "report:").
"""

from __future__ import annotations

import io
import itertools
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from radcorpora.ops.boxes import BoxText, crop_pixels, find_box_text, iou, text_box, union_box
from radcorpora.schemas.boxes import Box

BLEU_ORDERS = (1, 2, 3, 4)
REPORT_MARKER = "report:"
IMAGE_TOKEN = "<image>"
SSIM_SIZE = (256, 256)  # common size both crops are resized to (the paper does not state one)
BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_CONTEXT = 256  # BiomedCLIP's text context length

# Words that name a group in a step's text (regex alternatives, matched on word starts,
# case-insensitive). "cardiomediastinal" and "hilar" are mediastinal; costophrenic angles are lung
# (schemas/data/cxr_region_groups.yaml).
GROUP_WORDS: dict[str, tuple[str, ...]] = {
    "mediastinal": (r"mediastin\w*", r"cardiomediastin\w*", r"heart", r"cardiac", r"hil(?:um|ar|a)\b",
                    r"aort\w*", r"trachea\w*"),
    "lung": (r"lungs?\b", r"pulmonary", r"pleura\w*", r"costophrenic"),
    "bone": (r"bones?\b", r"bony", r"osseous", r"skelet\w*", r"ribs?\b", r"clavicle\w*", r"spine",
             r"vertebra\w*"),
    "other": (r"other\s+(?:region|area|structure)s?", r"\w*diaphragm\w*", r"abdom\w*", r"soft\s+tissues?"),
}


# ------------------------------------------------------------------------------ parsing traces


@dataclass(frozen=True)
class Step:
    """One step of a parsed trace.

    `text`: the step as written; `rationale`: the same without `<image>` placeholders and without
    the sentence that prints the box (what semantic consistency compares with the crop). `group`:
    mediastinal / lung / bone / other read from the words before the step's image (None when none
    is named). `image_indices`: positions of the step's placeholders among all placeholders of the
    answer (= index into the generated images). `box_values`: the numbers of every box printed in
    the step, as written; `boxes`: those readable as boxes (normalised, or pixels when a size is
    given); `box`: their union (one crop per group step, as the corpus builds it), None if none.
    """

    index: int
    text: str
    rationale: str
    group: str | None
    image_indices: tuple[int, ...]
    box_values: tuple[tuple[float, float, float, float], ...]
    boxes: tuple[Box, ...]
    box: Box | None


@dataclass(frozen=True)
class Trace:
    """A parsed answer: its steps and the report (None when the marker is absent)."""

    steps: tuple[Step, ...]
    report: str | None
    preamble: str = ""  # the text before the report of an answer with no step


def parse_trace(text: str, *, report_marker: str = REPORT_MARKER, image_token: str = IMAGE_TOKEN,
                width: int | None = None, height: int | None = None,
                group_words: Mapping[str, Sequence[str]] = GROUP_WORDS) -> Trace:
    """Read a model's interleaved answer into steps and the final report.

    The report is what follows the first `report_marker` (case-insensitive) after the last image
    placeholder or box; without one, `report` is None. The part before it is split into paragraphs
    (blank lines, as the public example separates steps); a paragraph with an image placeholder or
    a box is a step, one with several placeholders is cut before the sentence that leads to each
    further placeholder, a paragraph with only a box joins the step before when that one has an
    image and no box, and paragraphs with neither join the next step (after the last step: the
    last one; in an answer with no step they are the `preamble`). Boxes: any form `find_box_text` reads; values in [0, 1] are
    normalised, larger ones are pixels of `width` x `height` (kept only in `box_values` without a
    size).
    """
    text = str(text or "")
    body, report = _split_report(text, report_marker, image_token)
    chunks: list[str] = []
    pending: list[str] = []
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", body)):
        if not paragraph:
            continue
        has_box = bool(find_box_text(paragraph))
        if (has_box and image_token not in paragraph and not pending and chunks
                and image_token in chunks[-1] and not find_box_text(chunks[-1])):
            chunks[-1] = f"{chunks[-1]}\n\n{paragraph}"  # the box of the image just before
        elif image_token in paragraph or has_box:
            parts = _split_on_images(paragraph, image_token)
            parts[0] = "\n\n".join([*pending, parts[0]])
            pending = []
            chunks.extend(parts)
        else:
            pending.append(paragraph)
    preamble = ""
    if pending:
        if chunks:
            chunks[-1] = "\n\n".join([chunks[-1], *pending])
        else:
            preamble = "\n\n".join(pending)
    steps, seen_images = [], 0
    for index, chunk in enumerate(chunks):
        images = chunk.count(image_token)
        found = find_box_text(chunk)
        boxes = tuple(b for b in (text_box(f, width, height) for f in found) if b is not None)
        steps.append(Step(
            index=index, text=chunk, rationale=_rationale(chunk, found, image_token),
            group=_group_of(chunk, image_token, group_words),
            image_indices=tuple(range(seen_images, seen_images + images)),
            box_values=tuple(f.values for f in found), boxes=boxes,
            box=(union_box(boxes) if len(boxes) > 1 else boxes[0]) if boxes else None))
        seen_images += images
    return Trace(steps=tuple(steps), report=report, preamble=preamble)


def _split_report(text: str, marker: str, image_token: str) -> tuple[str, str | None]:
    """(steps part, report): the report follows the first `marker` after the last placeholder or
    box; the sentence leading to the marker ("Summarizing ..., I will generate the following")
    belongs to neither."""
    last_image = text.rfind(image_token) if image_token else -1
    anchors = [last_image + len(image_token)] if last_image >= 0 else []
    after = max([0, *anchors, *(b.end for b in find_box_text(text))])
    at = text.lower().find(marker.lower(), after) if marker else -1
    if at < 0:
        return text, None
    lead = text[after:at]
    breaks = [m.end() for m in re.finditer(r"\n\s*\n|[.!?](?:\s+)", lead)]
    return text[:after + (breaks[-1] if breaks else 0)], text[at + len(marker):].strip()


def _split_on_images(paragraph: str, image_token: str) -> list[str]:
    """Cut a paragraph with several placeholders before the sentence that leads to each further
    one (the sentence that names the region to highlight comes right before its image)."""
    positions = [m.start() for m in re.finditer(re.escape(image_token), paragraph)]
    cuts = []
    for prev, pos in itertools.pairwise(positions):
        floor = prev + len(image_token)
        boxes_between = [b.end for b in find_box_text(paragraph[floor:pos])]
        floor += max(boxes_between, default=0)
        lead = paragraph[floor:pos].rstrip()
        lead = lead[:-1] if lead.endswith((".", "!", "?", ":")) else lead
        ends = [m.end() for m in re.finditer(r"[.!?](?:\s+|$)", lead)]
        cuts.append(floor + (ends[-1] if ends else 0))
    bounds = [0, *cuts, len(paragraph)]
    return [paragraph[a:b].strip() for a, b in itertools.pairwise(bounds)]


def _rationale(chunk: str, found: Sequence[BoxText], image_token: str) -> str:
    """The step without placeholders and without the sentence(s) printing its boxes."""
    spans = []
    for box in found:
        start = max(chunk.rfind(s, 0, box.start) for s in (". ", "! ", "? ", "\n", image_token))
        start = 0 if start < 0 else start + (len(image_token) if chunk.startswith(image_token, start) else 1)
        end = box.end
        tail = re.match(r"\s*[.!?]?", chunk[end:])
        spans.append((start, end + (tail.end() if tail else 0)))
    out, last = [], 0
    for start, end in sorted(spans):  # spans of boxes in one sentence overlap: merged
        if start > last:
            out.append(chunk[last:start])
        last = max(last, end)
    out.append(chunk[last:])
    return " ".join("".join(out).replace(image_token, " ").split())


def _group_of(chunk: str, image_token: str, group_words: Mapping[str, Sequence[str]]) -> str | None:
    """The group named last before the step's first image (the "I will highlight the ... region"
    sentence); else the first named anywhere in the step."""
    before = chunk.split(image_token, 1)[0] if image_token in chunk else ""
    for text, pick_last in ((before, True), (chunk, False)):
        hits = []
        for group, words in group_words.items():
            for word in words:
                hits += [(m.start(), group) for m in re.finditer(rf"\b(?:{word})", text, re.IGNORECASE)]
        if hits:
            return (max(hits) if pick_last else min(hits))[1]
    return None


# --------------------------------------------------------------------------------- report text


def report_metrics(predictions: Sequence[str], references: Sequence[str], *, meteor: str | None = "auto",
                   nltk_data: str | Path | None = None) -> dict[str, Any]:
    """Corpus BLEU-1..4 (sacrebleu: 13a tokens, lower-cased, no smoothing), METEOR and ROUGE-L F1
    (rouge-score, mean over samples), all in [0, 1], plus per-sample scores (sentence BLEU with
    sacrebleu's exponential smoothing, METEOR, ROUGE-L) under `samples`.

    `meteor`: "auto" (pycocoevalcap's METEOR 1.5 when java is on PATH, else nltk's when WordNet
    data is found), "pycocoevalcap", "nltk", or None (not computed). When it cannot run, `meteor`
    is `{"skipped": reason}` and the per-sample values are None.
    """
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    predictions, references = [str(p or "") for p in predictions], [str(r or "") for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    out: dict[str, Any] = {"n": len(predictions)}
    samples: list[dict[str, Any]] = [{"prediction": p, "reference": r} for p, r in zip(predictions, references)]
    if not predictions:
        return {**out, **{f"bleu{n}": None for n in BLEU_ORDERS}, "meteor": None, "rouge_l": None, "samples": []}
    for n in BLEU_ORDERS:
        corpus = BLEU(max_ngram_order=n, lowercase=True, smooth_method="none")
        out[f"bleu{n}"] = corpus.corpus_score(predictions, [references]).score / 100
        sentence = BLEU(max_ngram_order=n, lowercase=True, effective_order=True)
        for sample, p, r in zip(samples, predictions, references):
            sample[f"bleu{n}"] = sentence.sentence_score(p, [r]).score / 100
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    out["rouge_l"] = sum(rouge) / len(rouge)
    corpus_meteor, per_sample, backend = meteor_scores(predictions, references, meteor, nltk_data)
    out["meteor"], out["meteor_backend"] = corpus_meteor, backend
    for sample, value, rl in zip(samples, per_sample, rouge):
        sample["meteor"], sample["rouge_l"] = value, rl
    out["samples"] = samples
    return out


def meteor_scores(predictions: Sequence[str], references: Sequence[str], backend: str | None = "auto",
                  nltk_data: str | Path | None = None) -> tuple[float | dict | None, list[float | None], str | None]:
    """(corpus METEOR or {"skipped": reason}, per-sample METEOR, backend used).

    pycocoevalcap: METEOR 1.5 (Denkowski & Lavie) with its bundled English paraphrase table, the
    corpus value is the jar's aggregate over all segments. nltk: `meteor_score` per sample with
    WordNet found on nltk's data path (plus `nltk_data`, a folder in nltk's layout), the corpus
    value the mean. The two implementations give different numbers: compare only within one backend.
    """
    none: list[float | None] = [None] * len(predictions)
    if backend is None:
        return None, none, None
    if backend not in ("auto", "pycocoevalcap", "nltk"):
        raise ValueError(f"meteor backend must be auto, pycocoevalcap, nltk or None, got {backend!r}")
    reasons = []
    if backend in ("auto", "pycocoevalcap"):
        why = _pycocoevalcap_missing()
        if why is None:
            try:
                score, scores = _meteor_pycocoevalcap(predictions, references)
                return score, scores, "pycocoevalcap"
            except Exception as exc:  # noqa: BLE001 - the jar failed (memory, a broken java)
                why = f"pycocoevalcap METEOR failed ({type(exc).__name__}: {exc})"
        reasons.append(why)
    if backend in ("auto", "nltk"):
        wordnet, why = _nltk_wordnet(nltk_data)
        if wordnet is not None:
            from nltk.translate.meteor_score import meteor_score

            scores = [meteor_score([_words(r)], _words(p), wordnet=wordnet) for p, r in zip(predictions, references)]
            return sum(scores) / len(scores) if scores else None, scores, "nltk"
        reasons.append(why)
    return {"skipped": "METEOR not computed: " + "; ".join(reasons)}, none, None


def _pycocoevalcap_missing() -> str | None:
    try:
        import pycocoevalcap.meteor.meteor  # noqa: F401
    except ImportError as exc:
        return f"pycocoevalcap not importable ({exc}); pip install pycocoevalcap"
    if shutil.which("java") is None:
        return "pycocoevalcap's METEOR 1.5 runs a jar and no `java` is on PATH"
    return None


def _meteor_pycocoevalcap(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, list[float]]:
    from pycocoevalcap.meteor.meteor import Meteor

    # One line per segment on the jar's stdin: newlines and its field separator must not appear.
    def clean(s: str) -> str:
        return " ".join(s.replace("|||", " ").split())

    meteor = Meteor()
    try:
        keys = list(range(len(predictions)))
        score, scores = meteor.compute_score({k: [clean(references[k])] for k in keys},
                                             {k: [clean(predictions[k])] for k in keys})
    finally:
        del meteor  # its __del__ closes the jar's stdin and kills the process
    return float(score), [float(s) for s in scores]


def _nltk_wordnet(nltk_data: str | Path | None) -> tuple[Any, str]:
    """nltk's WordNet reader, or (None, why not). `nltk_data`: a folder in nltk's data layout
    (`corpora/wordnet/` or `corpora/wordnet.zip`), put on nltk's data path as NLTK_DATA would
    (nltk 3.9+ reads corpora only from its data path)."""
    try:
        import nltk
    except ImportError as exc:
        return None, f"nltk not importable ({exc})"
    if nltk_data is not None:
        root = str(Path(nltk_data).resolve())
        if not any((Path(root) / "corpora" / name).exists() for name in ("wordnet", "wordnet.zip")):
            return None, f"{root} holds no corpora/wordnet (nltk's data layout)"
        if root not in nltk.data.path:
            nltk.data.path.append(root)
    try:
        nltk.data.find("corpora/wordnet")
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except LookupError:
        return None, ("nltk's METEOR needs WordNet data and none is on nltk's data path (nltk.download "
                      "needs the internet); pass nltk_data= a folder holding corpora/wordnet")
    except Exception as exc:  # noqa: BLE001 - an unreadable or refused WordNet folder
        return None, f"WordNet could not be read ({type(exc).__name__}: {exc})"
    return wordnet, ""


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def radgraph_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """RadGraph F1 through RadEval (RadGraph-XL): `rg_e` = entity F1 (RadEval's
    radgraph_simple), `rg_er` = entity + relation F1 (radgraph_partial), `rg_ber` = RadEval's
    radgraph_complete; the paper's RG_e / RG_er / RG_ber are read as these three. RadEval needs
    torchvision, which breaks this project's CPU torch, and its models: skipped, saying why,
    when it does not import or cannot run."""
    try:
        from RadEval import RadEval  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision failing to load under it
        return {"skipped": f"RadEval not available ({type(exc).__name__}: {exc}); RadGraph F1 needs "
                           "`pip install RadEval` with a torch/torchvision pair and the RadGraph-XL model"}
    try:
        try:
            evaluator = RadEval(metrics=["radgraph"])  # RadEval 2.x
        except TypeError:
            evaluator = RadEval(do_radgraph=True)  # RadEval 0.x / 1.x
        raw = evaluator(refs=list(references), hyps=list(predictions))
    except Exception as exc:  # noqa: BLE001 - missing local model weights, no network for them
        return {"skipped": f"RadEval could not run ({type(exc).__name__}: {exc})"}
    names = {"rg_e": "radgraph_simple", "rg_er": "radgraph_partial", "rg_ber": "radgraph_complete"}
    if not all(isinstance(raw.get(v), (int, float)) for v in names.values()):
        return {"skipped": f"RadEval returned no radgraph_simple/partial/complete: {sorted(raw)}"}
    return {k: float(raw[v]) for k, v in names.items()}


# ----------------------------------------------------------------------- grounding consistency


StepBoxes = Mapping[str, Box | None] | Sequence[tuple[str | None, Box | None]]


def grounding_consistency(pred_boxes: StepBoxes, ref_boxes: StepBoxes) -> dict[str, Any]:
    """IoU of each reference step's box with the predicted box of the same group (normalised
    boxes, ops.boxes.iou; the crops of both are cut from one image, so this is the IoU of the two
    crops up to pixel rounding).

    Each side: `{group: box}` or `[(group, box)]` (e.g. `[(s.group, s.box) for s in steps]`); a
    group given twice keeps its first box (`repeated_groups` counts the others). Returns
    `mean_iou` (over reference steps: a group the model did not predict, or predicted without a
    box, counts 0), `matched_mean_iou` (over the reference steps with a predicted box only; None if
    none), `grounded_share` (predicted steps that carry a box / predicted steps; None when none),
    per-step values in `steps`, the groups predicted but absent from the reference
    (`extra_groups`) and the predicted steps with no group (`unnamed_steps`).
    """
    pred_pairs, ref_pairs = _pairs(pred_boxes, "pred_boxes"), _pairs(ref_boxes, "ref_boxes")
    preds: dict[str, Box | None] = {}
    for group, box in pred_pairs:
        if group is not None:
            preds.setdefault(group, box)
    refs: dict[str, Box] = {}
    for group, box in ref_pairs:
        if group is None or box is None:
            raise ValueError(f"every reference step needs a group and a box, got ({group!r}, {box!r})")
        if group in refs:
            raise ValueError(f"reference group {group!r} given twice")
        refs[group] = box
    steps = []
    for group, ref in refs.items():
        pred = preds.get(group)
        steps.append({"group": group, "iou": iou(pred, ref) if pred is not None else 0.0,
                      "predicted": group in preds, "grounded": pred is not None})
    matched = [s["iou"] for s in steps if s["grounded"]]
    named = sum(g is not None for g, _ in pred_pairs)
    return {
        "mean_iou": sum(s["iou"] for s in steps) / len(steps) if steps else None,
        "matched_mean_iou": sum(matched) / len(matched) if matched else None,
        "grounded_share": sum(b is not None for _, b in pred_pairs) / len(pred_pairs) if pred_pairs else None,
        "reference_steps": len(steps),
        "predicted_steps": len(pred_pairs),
        "extra_groups": sorted(set(preds) - set(refs)),
        "unnamed_steps": len(pred_pairs) - named,
        "repeated_groups": named - len(preds),
        "steps": steps,
    }


def _pairs(items: StepBoxes, name: str) -> list[tuple[str | None, Box | None]]:
    pairs = list(items.items()) if isinstance(items, Mapping) else [tuple(p) for p in items]
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"{name}: expected (group, box) pairs, got {pair!r}")
        group, box = pair
        if box is not None and not isinstance(box, Box):
            raise TypeError(f"{name}: expected Box or None, got {type(box).__name__}")
        out.append((None if group is None else str(group), box))
    return out


# ---------------------------------------------------------------------- generation consistency


def generation_consistency(generated_crops: Sequence[bytes | None], image: bytes,
                           pred_boxes: Sequence[Box | None], *, size: tuple[int, int] = SSIM_SIZE) -> dict[str, Any]:
    """SSIM (scikit-image, grayscale, data range 255) between each generated crop and the crop of
    `image` at the predicted box of the same step, both resized to `size` (bilinear).

    `generated_crops[i]` and `pred_boxes[i]` belong to step i. A step without a generated image
    (None) or without a box is not scored and is counted (`no_image`, `no_box`). Returns
    `mean_ssim` (None when nothing was scored), per-step `ssim` (None where not scored), `scored`.
    """
    from skimage.metrics import structural_similarity

    if len(generated_crops) != len(pred_boxes):
        raise ValueError(f"{len(generated_crops)} generated crops but {len(pred_boxes)} boxes")
    original = _decode_gray(image)
    values: list[float | None] = []
    no_image = no_box = 0
    for crop, box in zip(generated_crops, pred_boxes):
        if crop is None:
            no_image += 1
            values.append(None)
            continue
        if box is None:
            no_box += 1
            values.append(None)
            continue
        left, top, right, bottom = crop_pixels(box, original.width, original.height)
        a = _gray_array(_decode_gray(crop), size)
        b = _gray_array(original.crop((left, top, right, bottom)), size)
        values.append(float(structural_similarity(a, b, data_range=255)))
    scored = [v for v in values if v is not None]
    return {"mean_ssim": sum(scored) / len(scored) if scored else None, "ssim": values, "scored": len(scored),
            "no_image": no_image, "no_box": no_box}


def _decode_gray(data: bytes) -> Any:
    """8-bit grayscale PIL image; 16-bit / integer / float images are scaled by their own range
    (PIL's convert("L") would clip them instead)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        img = opened.copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(arr).astype(np.uint8), mode="L")
    return img.convert("L")


def _gray_array(img: Any, size: tuple[int, int]) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)


# ------------------------------------------------------------------------ semantic consistency


@runtime_checkable
class ImageTextEncoder(Protocol):
    """An image-text model in one embedding space (BiomedCLIP, or a test double): one row per
    input, any scale (rows are L2-normalised before the cosine)."""

    def encode_images(self, images: Sequence[bytes]) -> Any: ...

    def encode_texts(self, texts: Sequence[str]) -> Any: ...


def semantic_consistency(encoder: ImageTextEncoder | None, crops: Sequence[bytes | None], texts: Sequence[str],
                         box_crops: Sequence[bytes | None] | None = None, *,
                         unavailable: str = "no image-text encoder was given") -> dict[str, Any]:
    """The paper's semantic consistency: cos(step text, generated crop) + cos(generated crop,
    crop at the predicted box), each the mean over steps that have what it needs.

    `crops[i]` (generated image of step i, None when the model made none), `texts[i]` (its
    rationale), `box_crops[i]` (the original cut at its predicted box, None without a box; leave
    `box_crops` out to get the text-image term only, then `score` is None). With no encoder:
    `{"skipped": unavailable}` (pass the loader's reason).
    """
    if encoder is None:
        return {"skipped": unavailable}
    if len(crops) != len(texts) or (box_crops is not None and len(box_crops) != len(crops)):
        raise ValueError("crops, texts and box_crops need one entry per step")
    with_image = [i for i, c in enumerate(crops) if c is not None]
    text_image: list[float | None] = [None] * len(crops)
    image_image: list[float | None] = [None] * len(crops)
    if with_image:
        images = _unit_rows(encoder.encode_images([crops[i] for i in with_image]))
        words = _unit_rows(encoder.encode_texts([str(texts[i]) for i in with_image]))
        for k, i in enumerate(with_image):
            text_image[i] = float(images[k] @ words[k])
        if box_crops is not None:
            both = [k for k, i in enumerate(with_image) if box_crops[i] is not None]
            if both:
                cut = _unit_rows(encoder.encode_images([box_crops[with_image[k]] for k in both]))
                for row, k in enumerate(both):
                    image_image[with_image[k]] = float(images[k] @ cut[row])
    ti = [v for v in text_image if v is not None]
    ii = [v for v in image_image if v is not None]
    ti_mean = sum(ti) / len(ti) if ti else None
    ii_mean = sum(ii) / len(ii) if ii else None
    return {"score": ti_mean + ii_mean if ti_mean is not None and ii_mean is not None else None,
            "text_image": ti_mean, "image_image": ii_mean, "text_image_steps": text_image,
            "image_image_steps": image_image, "no_image": len(crops) - len(with_image)}


def _unit_rows(matrix: Any) -> Any:
    import numpy as np

    if hasattr(matrix, "detach"):  # a torch tensor
        matrix = matrix.detach().float().cpu().numpy()
    rows = np.asarray(matrix, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"an encoder must return one row per input, got shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.all(norms > 0) or not np.all(np.isfinite(rows)):
        raise ValueError("an encoder returned a zero or non-finite embedding")
    return rows / norms


@dataclass
class OpenClipEncoder:
    """`ImageTextEncoder` over an open_clip model (BiomedCLIP): RGB images through the model's own
    preprocessing, texts through its tokenizer."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: str = "cpu"
    context_length: int = BIOMEDCLIP_CONTEXT

    def encode_images(self, images: Sequence[bytes]) -> Any:
        import torch
        from PIL import Image

        batch = []
        for data in images:
            with Image.open(io.BytesIO(data)) as opened:
                batch.append(self.preprocess(opened.convert("RGB")))
        with torch.no_grad():
            return self.model.encode_image(torch.stack(batch).to(self.device))

    def encode_texts(self, texts: Sequence[str]) -> Any:
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(list(texts), context_length=self.context_length).to(self.device)
            return self.model.encode_text(tokens)


def load_biomedclip(source: str | Path | None = None, device: str = "cpu") -> tuple[OpenClipEncoder | None, str]:
    """(BiomedCLIP encoder, "") when open_clip imports and the weights are on disk, else (None,
    why). `source`: a folder holding open_clip_config.json and the weights, or a Hugging Face repo
    id whose files are already in the local cache (default: BiomedCLIP's repo). Nothing is
    downloaded here: a missing file is a reason, not a fetch."""
    try:
        import open_clip  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision failing to load under it
        return None, (f"open_clip not available ({type(exc).__name__}: {exc}); semantic consistency needs "
                      "open_clip_torch (with a torch/torchvision pair) and BiomedCLIP's weights on disk")
    weights = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
    if source is not None and Path(source).is_dir():
        root = Path(source)
        if not (root / "open_clip_config.json").is_file() or not any((root / w).is_file() for w in weights):
            return None, f"BiomedCLIP weights not on disk: {root} lacks open_clip_config.json or {' / '.join(weights)}"
        name = f"local-dir:{root}"
    else:
        repo = str(source or BIOMEDCLIP_REPO)
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError as exc:
            return None, f"huggingface_hub not importable ({exc})"
        cached = [try_to_load_from_cache(repo, f) for f in ("open_clip_config.json", *weights)]
        if not isinstance(cached[0], str) or not any(isinstance(c, str) for c in cached[1:]):
            return None, f"BiomedCLIP weights not on disk: {repo} is not in the Hugging Face cache"
        name = f"hf-hub:{repo}"
    try:
        model, preprocess = open_clip.create_model_from_pretrained(name, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # noqa: BLE001 - a tokenizer not cached, a broken file
        return None, f"BiomedCLIP could not load from {name} ({type(exc).__name__}: {exc})"
    model.eval()
    return OpenClipEncoder(model=model, preprocess=preprocess, tokenizer=tokenizer, device=device), ""


# ------------------------------------------------------------------------------- one sample


def crop_bytes(image: bytes, box: Box) -> bytes:
    """PNG of `image` cut at `box` (the "crop at the predicted box" the consistency metrics use)."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as opened:
        opened.load()
        img = opened.copy()
    buffer = io.BytesIO()
    img.crop(crop_pixels(box, img.width, img.height)).save(buffer, format="PNG")
    return buffer.getvalue()


def mean_of(values: Sequence[float | None]) -> float | None:
    """Mean of the numbers among `values` (None and NaN left out); None when there are none:
    pools per-sample consistency values into a corpus figure."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else None


__all__ = [
    "BLEU_ORDERS", "GROUP_WORDS", "IMAGE_TOKEN", "REPORT_MARKER", "ImageTextEncoder",
    "OpenClipEncoder", "Step", "Trace", "crop_bytes", "generation_consistency", "grounding_consistency",
    "load_biomedclip", "mean_of", "meteor_scores", "parse_trace", "radgraph_f1", "report_metrics",
    "semantic_consistency",
]
