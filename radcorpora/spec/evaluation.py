"""How a corpus is trained on and evaluated, declared with the corpus (corpora/<name>/evaluation.py)
and carried out by reference_models' one `evaluate` runner.

The corpus side is pure Python: how a row becomes a training example and the prompt(s) a model is
asked (one renderer for both, so a model is asked as it was taught), how an answer is read, which
metrics and which of them the check compares, and which variants (image model, text-only twin, ...)
the check contrasts. The metric implementations that need heavy libraries or models (text metrics,
RadEval, BERTScore, GREEN, an image-text encoder, the LLM judge) come in through a `MetricKit` the
runner passes in, so the corpus layer never imports reference_models or torch.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from radcorpora.schemas.boxes import Box


@dataclass(frozen=True)
class Variant:
    """One model the check trains and evaluates. `images` False withholds every image (the text-only
    twin); the corpus' renderers see the variant's name and may render the row differently (mmrad-ivl's
    `no-crops` keeps the full image but drops the crops)."""

    name: str
    description: str
    images: bool = True
    # The loss intent of this rendering's turns where it is not the config's: mmrad-ivl's crops
    # conversation cuts the row's one response into a gpt turn per crop, and every one trains.
    loss: str | None = None


IMAGE = Variant("image", "the model trained and asked with the row's images")
TEXT_ONLY = Variant("text-only", "the same model trained and asked with every image withheld", images=False)


@dataclass(frozen=True)
class EvalContext:
    """What renderers see besides the row: the build's manifest (seed, wording), the variant, and a
    per-run cache for what a renderer derives once from the manifest."""

    manifest: dict[str, Any]
    variant: Variant = IMAGE
    cache: dict[str, Any] = field(default_factory=dict, compare=False)

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


@dataclass(frozen=True)
class Query:
    """What a model is asked about one held-out row: its human turns in order (more than one: each
    answered with the model's OWN earlier answers in the history), `<image>` placeholders filled by
    the row's images picked by `images` (indices into `CorpusEvaluation.row_images(row)`; None: all
    of them, in order). `meta` holds what scoring needs (reference answer, ids)."""

    id: str
    row: int
    turns: tuple[str, ...]
    max_new_tokens: int = 128
    images: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def history(self, answers: Sequence[str]) -> list[dict[str, str]]:
        """The LLaVA turns shown before the model answers turn `len(answers)`: every earlier human
        turn with the model's own answer to it (never the reference)."""
        turns: list[dict[str, str]] = []
        for k, question in enumerate(self.turns[:len(answers) + 1]):
            turns.append({"from": "human", "value": question})
            if k < len(answers):
                turns.append({"from": "gpt", "value": answers[k]})
        return turns


def queries_from_example(example: dict[str, Any], row: int, max_new_tokens: int,
                         images: tuple[int, ...] | None = None, **meta: Any) -> Query:
    """The query of a training-style example: its human turns, in order. Training and evaluation
    then come from one renderer (the example's), and the reference answers are its gpt turns."""
    turns = tuple(t["value"] for t in example["conversations"] if t["from"] == "human")
    references = [t["value"] for t in example["conversations"] if t["from"] == "gpt"]
    return Query(example["id"], row, turns, max_new_tokens, images, {"references": references, **meta})


@dataclass(frozen=True)
class JudgeItem:
    """One answer for an LLM judge: the question, the reference and the model's answer."""

    id: str
    question: str
    reference: str
    prediction: str
    licence_class: str = "public"


@dataclass
class ConversationItem:
    """One evaluated conversation: (question, expected answer, model answer) per round."""

    id: str
    rounds: list[tuple[str, str, str]]
    licence_class: str = "public"

    def transcript(self) -> str:
        return "\n\n".join(f"Round {k}\nQuestion: {q}\nExpected answer: {ref}\nModel answer: {pred}"
                            for k, (q, ref, pred) in enumerate(self.rounds, 1))


class MetricKit(Protocol):
    """The metric implementations a corpus' `score` may call (reference_models.metric_kit.Kit). Each
    returns numbers, or `{"skipped": reason}` when its library, model or weights are missing."""

    judge: Any  # reference_models.judge.Judge or None: open_answers / criteria / conversation

    def text(self, predictions: Sequence[str], references: Sequence[str],
             which: Sequence[str] = ("rouge_l", "bleu")) -> dict[str, Any]: ...

    def radeval(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]: ...

    def radgraph(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]: ...

    def bertscore(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]: ...

    def green(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]: ...

    def grounding_map(self, predictions: Sequence[Sequence[Box]], targets: Sequence[Sequence[Box]]) -> dict[str, float]: ...

    def grounding_consistency(self, predicted: Sequence[tuple[str | None, Box | None]],
                              reference: Sequence[tuple[str, Box]]) -> dict[str, Any]: ...

    def image_text_encoder(self) -> tuple[Any, str]: ...

    def semantic_consistency(self, image: bytes, boxes: Sequence[Box | None], texts: Sequence[str]) -> dict[str, Any]: ...

    def row_image(self, row: int, index: int) -> bytes: ...

    def parse_trace(self, text: str, report_marker: str, width: int | None, height: int | None) -> Any: ...


Score = Callable[[Sequence["Query"], Sequence[Sequence[str]], Sequence[dict[str, Any]], MetricKit],
                 tuple[dict[str, Any], list[dict[str, Any]]]]


def _default_row_images(row: dict[str, Any]) -> list[Any]:
    if row.get("images") is not None:
        return list(row["images"])
    return [row["image"]] if row.get("image") is not None else []


@dataclass(frozen=True)
class CorpusEvaluation:
    """A corpus' reference-model recipe and benchmark, declared once with the corpus.

    `queries(rows, ctx)`: the held-out rows (image columns left out) -> what the model is asked.
    `score(queries, answers, rows, kit)`: answers[i] holds one reply per turn of queries[i] ->
    (metrics, per-sample predictions). `primary(metrics)`: the 0-100 metric (higher is better) the
    check compares. `example(row, ctx)`: a training example ({id, images, conversations}) for
    corpora whose rows hold no `conversations` column (None: the rows, or their per-question /
    per-instance views, train as stored). `variants`: the models the check trains; `contrast`:
    (model, baseline) names whose primary gap must reach the margin. `check_refusal(manifest)`: why
    a build cannot be checked (one line), or None.
    """

    train_config: str  # default config trained on
    eval_config: str  # the held-out config evaluated
    eval_split: str
    preset: str  # training preset for real checkpoints
    queries: Callable[[Sequence[dict[str, Any]], EvalContext], list[Query]]
    score: Score
    primary: Callable[[dict[str, Any]], str]
    per_question: frozenset[str] = frozenset()  # configs whose rows expand to one example per question
    per_instance: frozenset[str] = frozenset()  # configs whose rows expand to one example per instance
    alignment_config: str | None = None  # captions for a preset's alignment steps, if the corpus has them
    example: Callable[[dict[str, Any], EvalContext], dict[str, Any]] | None = None
    row_images: Callable[[dict[str, Any]], list[Any]] = _default_row_images
    variants: tuple[Variant, ...] = (IMAGE, TEXT_ONLY)
    contrast: tuple[str, str] = ("image", "text-only")
    pass_rule: str = "the image model's primary metric beats the text-only twin's by at least the margin"
    # Configs the check also evaluates (held-out split) when a judge is given, reported next to the
    # main metrics but not part of pass/fail: radvlm's conversations need the judge to be scored.
    judged_configs: tuple[str, ...] = ()
    check_refusal: Callable[[dict[str, Any]], str | None] | None = None

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(f"no variant {name!r} (known: {', '.join(v.name for v in self.variants)})")

    def scores(self, config: str) -> bool:
        """Whether `queries` and `score` read rows of `config`: the evaluation config's, and configs
        of the same row shape (radvlm scores every task config's instances)."""
        return config == self.eval_config or config in self.per_instance or config in self.judged_configs

    def rendering(self, variant: Variant) -> str | None:
        """The variant's name where the corpus renders its rows per variant (a training run records
        it); None where a variant only withholds images, which `text_only` records already."""
        return variant.name if self.example is not None else None

    def chosen_variant(self, name: str | None = None, text_only: bool = False) -> Variant:
        """The variant named, else for a run with images withheld the corpus' text-only twin (the
        one `check` trains: mmrad-ivl's is its no-crops rendering, not the crops one stripped of
        images), else the image model's. KeyError for an unknown name."""
        if name:
            return self.variant(name)
        if text_only:
            return next((v for v in self.variants if not v.images), self.variants[0])
        return self.variants[0]


EvaluationRecipe = CorpusEvaluation  # the name the trainer's presets and the CLI know it by


# ------------------------------------------------------------------ answer readers shared by corpora


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the 'normalised match' of answers."""
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_closed(prediction: str) -> str | None:
    """yes / no read on word boundaries ("nodule" is not "no"), the first one said."""
    match = _YES_NO.search(prediction)
    return match.group(1).lower() if match else None


def contains_answer(prediction: str, truth: str) -> bool:
    """The normalised reference said as whole words in the normalised prediction."""
    truth_norm, said = normalise(truth), normalise(prediction)
    return bool(truth_norm) and re.search(rf"\b{re.escape(truth_norm)}\b", said) is not None


def percent(hits: Sequence[bool]) -> float:
    return round(100 * sum(hits) / len(hits), 2) if hits else 0.0
