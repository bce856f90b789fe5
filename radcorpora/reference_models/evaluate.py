"""The one evaluation runner: a corpus' declared evaluation (corpora/<name>/evaluation.py, a
spec.evaluation.CorpusEvaluation) asks a model through a `Generator` and scores the answers.

1. the corpus renders the held-out rows into queries (the prompts its training examples were
   rendered with), for the variant asked (image model, text-only twin, mmrad-ivl's no-crops);
2. a generator answers them: a model loaded in-process (`InProcessGenerator`, greedy, batched,
   left-padded) or a served model behind an OpenAI-compatible endpoint (endpoint.EndpointGenerator,
   the same chat messages with images as base64 data URLs); queries with several human turns are
   answered turn by turn with the model's own answers in the history;
3. the corpus scores them with the metric kit (metric_kit.Kit: libraries, optional RadEval / GREEN /
   BERTScore / image-text encoder, the LLM judge) into metrics and per-sample predictions, written
   as JSONL next to the metrics by the callers.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from radcorpora.reference_models.metric_kit import Kit
from radcorpora.spec.evaluation import CorpusEvaluation, EvalContext, Query, Variant

IMAGE_COLUMNS = ("image", "images")


class Generator(Protocol):
    """Answers a batch of LLaVA histories (human/gpt turns ending with a human one); `images[i]`
    fill history i's `<image>` placeholders in order (None: withheld)."""

    name: str

    def answer(self, histories: Sequence[Sequence[dict[str, str]]], images: Sequence[Sequence[Any] | None],
               max_new_tokens: int) -> list[str]: ...


class InProcessGenerator:
    """Greedy answers from a model loaded here (generation.answer_turns)."""

    name = "in-process"

    def __init__(self, model: Any, processor: Any):
        self.model, self.processor = model, processor

    def answer(self, histories: Sequence[Sequence[dict[str, str]]], images: Sequence[Sequence[Any] | None],
               max_new_tokens: int) -> list[str]:
        from radcorpora.reference_models.generation import answer_turns

        return answer_turns(self.model, self.processor, histories, images, max_new_tokens)


def decode(items: Sequence[Any]) -> list[Any]:
    """RGB PIL images of a row's images as `datasets` gives them (PIL, or {"bytes": ...})."""
    from PIL import Image

    out = []
    for item in items:
        if item is None:
            continue
        image = item if isinstance(item, Image.Image) else Image.open(io.BytesIO(item["bytes"]))
        out.append(image.convert("RGB"))
    return out


def without_images(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows' text fields, read once: iterating a `datasets.Dataset` would decode every image
    again for each pass over questions and answers (generation reads the images itself)."""
    if hasattr(rows, "remove_columns"):
        return list(rows.remove_columns([c for c in IMAGE_COLUMNS if c in rows.column_names]))
    return [{k: v for k, v in row.items() if k not in IMAGE_COLUMNS} for row in rows]


def ask(generator: Generator, queries: Sequence[Query], images_of: Callable[[Query], list[Any] | None],
        batch_size: int = 8) -> list[list[str]]:
    """Every query's answers, one per human turn, in order, its own answers in the history. Queries
    go in groups of `batch_size` of one token budget (similar lengths together), batched turn by
    turn; each query's images are decoded once for all its turns."""
    answers: list[list[str]] = [[] for _ in queries]
    budgets = sorted({q.max_new_tokens for q in queries})
    for budget in budgets:
        mine = [i for i, q in enumerate(queries) if q.max_new_tokens == budget]
        order = sorted(mine, key=lambda i: len(queries[i].turns))
        for start in range(0, len(order), batch_size):
            group = order[start:start + batch_size]
            images = {i: images_of(queries[i]) for i in group}
            for turn in range(max(len(queries[i].turns) for i in group)):
                active = [i for i in group if turn < len(queries[i].turns)]
                replies = generator.answer([queries[i].history(answers[i]) for i in active],
                                           [images[i] for i in active], budget)
                for i, reply in zip(active, replies):
                    answers[i].append(reply)
    return answers


def evaluate(evaluation: CorpusEvaluation, generator: Generator, rows: Sequence[dict[str, Any]], *,
             manifest: dict[str, Any] | None = None, variant: Variant | str | None = None,
             text_only: bool | None = None, judge: Any = None, kit: Kit | None = None, batch_size: int = 8,
             cache: dict[str, Any] | None = None,
             max_new_tokens: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-sample predictions) of `generator` on held-out `rows` (a `datasets.Dataset` or
    a list of row dicts). `variant`: which of the corpus' renderings (default its first, the image
    model); `text_only` overrides whether images are withheld (default: the variant's). `manifest`:
    the build's (seed and wording the renderers read). `cache` pre-fills the renderers' memo;
    `max_new_tokens` caps every query's token budget (quick runs)."""
    chosen = evaluation.variant(variant) if isinstance(variant, str) else (variant or evaluation.variants[0])
    withheld = (not chosen.images) if text_only is None else text_only
    ctx = EvalContext(manifest or {}, chosen, dict(cache or {}))
    texts = without_images(rows)
    queries = evaluation.queries(texts, ctx)
    if max_new_tokens is not None:
        queries = [replace(q, max_new_tokens=min(q.max_new_tokens, max_new_tokens)) for q in queries]

    def images_of(query: Query) -> list[Any] | None:
        if withheld:
            return None
        pool = evaluation.row_images(rows[query.row])
        return decode(pool if query.images is None else [pool[k] for k in query.images])

    answers = ask(generator, queries, images_of, batch_size)
    scoring = replace(kit or Kit(), judge=judge if judge is not None else (kit.judge if kit else None),
                      row_images=lambda i: evaluation.row_images(rows[i]))
    return evaluation.score(queries, answers, texts, scoring)


# ------------------------------------------------------------ conveniences for the tiny model's tests


def question_prompt(question: str, choices: Sequence[str] | None) -> str:
    """A plain human turn for a foreign VQA row (the corpora render their own)."""
    if not choices:
        return f"<image>\n{question}"
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip("ABCD", choices))
    return f"<image>\n{question}\n{options}\nAnswer with the letter of the correct option."


def generate(model: Any, processor: Any, rows: Sequence[dict[str, Any]], prompts: Sequence[str], text_only: bool,
             max_new_tokens: int = 24, batch_size: int = 16) -> list[str]:
    """Greedy single-turn answers, one per (row, prompt), in order."""
    queries = [Query(str(i), i, (p,), max_new_tokens) for i, p in enumerate(prompts)]
    found = ask(InProcessGenerator(model, processor), queries,
                lambda q: None if text_only else decode(_row_images(rows[q.row])), batch_size)
    return [a[0] for a in found]


def _row_images(row: dict[str, Any]) -> list[Any]:
    return list(row["images"]) if row.get("images") is not None else [row.get("image")]


def evaluate_radimagenet_vqa(model: Any, processor: Any, rows: Sequence[dict[str, Any]], text_only: bool = False,
                             batch_size: int = 16, judge: Any = None,
                             render: Callable[[dict[str, Any]], str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """radimagenet-vqa's evaluation of an in-process model; `render` stands in for the build's own
    renderer (default: the builder's with default settings)."""
    from radcorpora.corpora.radimagenet_vqa.evaluation import EVALUATION

    return evaluate(EVALUATION, InProcessGenerator(model, processor), rows, text_only=text_only, judge=judge,
                    batch_size=batch_size, cache={"render": render} if render else None)
