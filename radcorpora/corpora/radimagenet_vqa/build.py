"""radimagenet-vqa: RadImageNet CT/MR images -> captions (alignment), nine questions per image
(instruct), and a stratified benchmark (Butsanets et al., RadImageNet-VQA).

Stages: scan (labels, splits) -> plan (benchmark sample, chunks) -> chunks (read, decode-check,
generate, write shards) -> finalize (rejects, manifest, card, validation).
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import sys
from bisect import bisect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, model_validator

from radcorpora.corpora.avoid import AvoidSetting, avoid_field, avoided_images
from radcorpora.corpora.radimagenet_vqa.records import (
    CONFIG_RECORDS,
    CONTENT_TYPE_OF_TASK,
    LETTERS,
    QUESTION_SLOTS,
    ROW_RULES,
    QuestionAnswer,
)
from radcorpora.ops.image_check import ImageCheck, ImageCheckError, check_image
from radcorpora.ops.sampling import (
    draw_index,
    draw_sample,
    draw_shuffle,
    row_index,
    row_indices,
    row_rng,
    stratified_ranked_sample,
)
from radcorpora.prompts.loader import TemplateSet, load_template_set
from radcorpora.schemas.columnar import check_table
from radcorpora.schemas.common import Reject, Turn
from radcorpora.schemas.features import arrow_schema_for
from radcorpora.schemas.identity import source_key
from radcorpora.schemas.taxonomy import Taxonomy, radimagenet_vqa_taxonomy
from radcorpora.sources.radimagenet import (
    LabelMap,
    RadImageNetImage,
    RadImageNetScan,
    load_label_map,
    scan_radimagenet,
)
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.spec.corpus import Cli
from radcorpora.spec.rules import record_row_findings
from radcorpora.store import source_index
from radcorpora.store.shards import ShardWriter, shard_relpath
from radcorpora.store.state import ChunkResult, ChunkSpec, ShardInfo

CORPUS = "radimagenet-vqa"
CORPUS_SOURCE = "radimagenet"  # its family in schemas.identity (lineage names it "RadImageNet")
LICENCE_CLASS = "restricted"
TEMPLATE_SLOTS = tuple(s[0] for s in QUESTION_SLOTS) + (
    "pathology_closed_positive_normal",
    "multiple_choice_instruction",
    "caption_request",
    "caption_abnormal",
    "caption_normal",
)
PLACEHOLDERS = frozenset({"region", "pathology", "modality"})
MODALITY_WORDS = {"CT": "CT", "MR": "MRI"}
SPLIT_CONFIGS = {"train": ("alignment", "instruct"), "validation": ("alignment", "instruct"), "test": ("benchmark",)}


class RadImageNetVQAConfig(BaseModel):
    """Everything that decides a build's content (part of its fingerprint)."""

    seed: int = Field(0, description="Seed of every random choice")
    benchmark_images: int = Field(1000, ge=0, description="Test images in the benchmark (9 questions each)")
    images_per_shard: int = Field(2000, ge=1, description="Images per Parquet shard")
    # Share of abnormal images whose closed-negative pathology question asks "is this scan free
    # of pathology?" (answer no). Normal images ask that question with answer yes, so without
    # this the wording itself would give the answer away. 0.39 ~= 28.1% / 71.9% (paper mix).
    normal_probe_rate: float = Field(0.39, ge=0.0, le=1.0, description=(
        "Share of abnormal images asked 'is this scan free of pathology?' (normal ones are always asked)"))
    label_map: Annotated[dict[str, Any], Cli(
        parse=lambda text: load_label_map(Path(text)).to_json(), auto=lambda _given: load_label_map(None).to_json(),
        metavar="FILE")] = (
        Field(default_factory=dict, description="YAML/JSON folder-name map (anatomy, pathology, normal)"))
    templates_path: Annotated[str | None, Cli(flag="--templates", metavar="FILE")] = Field(
        None, description="Your own wording file (same slots as the packaged one)")
    image_check: ImageCheck = Field("crc", description="crc: PNG structure and chunk CRCs (fast); full: decode every pixel")
    avoid: AvoidSetting = avoid_field()  # RadImageNet names no patient: its images stay out of the benchmark

    @model_validator(mode="after")
    def _templates_read(self) -> RadImageNetVQAConfig:
        load_templates(self)  # a bad wording file stops here, before any source is read
        return self


@dataclass(frozen=True)
class Context:
    """What question generation needs besides the image itself."""

    config: RadImageNetVQAConfig
    templates: TemplateSet
    taxonomy: Taxonomy
    region_weights: dict[str, int]  # region -> images, for frequency-matched negatives
    pathology_weights: dict[str, dict[str, int]]  # region -> pathology -> images
    # candidate lists and cumulative weights, computed once per context instead of once per row
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


def load_templates(config: RadImageNetVQAConfig) -> TemplateSet:
    """The wording: the packaged file or the user's, parsed once per process and file version
    (a build asks for it in its settings, its scan, each chunk and its end: ~3 ms of YAML each
    time). Workers forked from the build inherit the version its fingerprint was made from."""
    path = Path(config.templates_path) if config.templates_path else None
    version = source_index.stat_key(path) if path is not None else None
    return _template_set(str(path) if path is not None else None, version)


@lru_cache(maxsize=8)
def _template_set(path: str | None, version: tuple[int, int] | None) -> TemplateSet:
    """`version`: the file's (size, mtime_ns), so an edited file is read again."""
    return load_template_set("radimagenet_vqa", Path(path) if path is not None else None, TEMPLATE_SLOTS, PLACEHOLDERS,
                             package=__package__)


# --------------------------------------------------------------------------- generation


_NO_WEIGHTS: dict[str, int] = {}


def _pick(rng: random.Random, variants: tuple[str, ...]) -> str:
    return variants[draw_index(rng, len(variants))]


def _fill(text: str, **values: str) -> str:
    filled = text.format(**values)
    return filled[:1].upper() + filled[1:]


def _filled(memo: dict[Any, Any], text: str, pathology: str, region: str, modality: str) -> str:
    """`_fill` of a question wording, kept per context: a build asks few distinct questions
    (wordings x labels), each thousands of times."""
    key = ("filled", text, pathology, region, modality)
    found = memo.get(key)
    if found is None:
        found = memo[key] = _fill(text, pathology=pathology, region=region, modality=modality)
    return found


def _weighted_other(rng: random.Random, weights: dict[str, int], exclude: str, fallback: tuple[str, ...],
                    memo: dict[Any, Any] | None = None, memo_key: Any = None) -> str:
    """A label other than `exclude`, drawn in proportion to how often it occurs in the source,
    so how often a label is asked with answer "no" mirrors how often it is asked with "yes".
    `memo` keeps each (weights, exclude)'s candidates and cumulative weights (the same draw as
    `rng.choices(candidates, weights=counts)`, without rebuilding them for every row); `memo_key`
    names the (weights, fallback) pair in it."""
    key = (memo_key, exclude)
    found = memo.get(key) if memo is not None else None
    if found is None:
        candidates = sorted(set(fallback) - {exclude})
        if not candidates:
            raise ValueError(f"no alternative to {exclude!r}")
        found = (candidates, list(accumulate(max(weights.get(c, 0), 1) for c in candidates)))
        if memo is not None:
            memo[key] = found
    candidates, cumulative = found
    return candidates[bisect(cumulative, rng.random() * cumulative[-1], 0, len(candidates) - 1)]  # = rng.choices


def _distinct_pool(memo: dict[Any, Any], memo_key: Any, population: tuple[str, ...], exclude: str, k: int) -> list[str]:
    """What `draw_sample` samples from (the sorted distinct items but `exclude`), once per
    context; `memo_key` names the population."""
    key = (memo_key, exclude)
    pool = memo.get(key)
    if pool is None:
        pool = memo[key] = sorted(set(population) - {exclude})
    if k > len(pool):
        raise ValueError(f"need {k} distinct items, only {len(pool)} available")
    return pool


def _multiple_choice(rng: random.Random, correct: str, distractors: list[str]) -> tuple[list[str], str]:
    options = [correct, *distractors]
    draw_shuffle(rng, options)
    return options, LETTERS[options.index(correct)]


def make_questions(image: RadImageNetImage, ctx: Context) -> list[QuestionAnswer]:
    """The nine questions of one image as validated records."""
    return [QuestionAnswer.model_validate(q) for q in question_rows(image, ctx)]


# One question as plain values, in this order (the columnar path builds Arrow columns from them).
QUESTION_VALUES = ("question", "choices", "answer", "question_type", "content_type", "correct_text", "question_id",
                   "subject")


def question_rows(image: RadImageNetImage, ctx: Context) -> list[dict[str, Any]]:
    """The nine questions of one image as plain rows (the record layout)."""
    labels = {"is_abnormal": image.is_abnormal, "location": image.region, "modality": image.modality,
              "pathology": image.pathology}
    return [{"question": q, "choices": c, "answer": a, "question_type": t,
             "metadata": {"content_type": ct, "correct_text": cx, **labels, "question_id": qid}, "subject": sub}
            for q, c, a, t, ct, cx, qid, sub in question_values(image, ctx)]


def question_values(image: RadImageNetImage, ctx: Context) -> list[tuple[Any, ...]]:
    """The nine questions of one image as tuples of QUESTION_VALUES, drawn in slot order from one
    generator seeded by (seed, corpus, image key): a row's questions depend on that row only, never
    on the order or the worker that builds it. (Until 2026-11-25 each slot seeded its own
    generator; seeding a Mersenne Twister costs more than all of a question's draws, so one per
    image made generation ~40% cheaper and changed which wording and distractors a seed gives.)"""
    cfg, tpl, tax, memo = ctx.config, ctx.templates, ctx.taxonomy, ctx.memo
    region = tax.region(image.region)
    region_names = memo.get("region_names") or memo.setdefault("region_names", tax.region_names)
    none = tax.no_pathology_answer
    is_abnormal = image.is_abnormal
    truth = image.pathology if is_abnormal else none
    phrase, modality = region.phrase, MODALITY_WORDS[image.modality]
    region_pathologies = tuple(region.pathologies)
    questions: list[tuple[Any, ...]] = []
    rng = row_rng(cfg.seed, CORPUS, image.key, "questions")
    for question_id, task, qtype, polarity in QUESTION_SLOTS:
        slot, subject, choices, asked_region = question_id, None, None, phrase
        if task == "anatomy":
            if qtype == "open":
                answer = correct = region.name
            elif qtype == "closed":
                subject = region.name if polarity == "positive" else _weighted_other(
                    rng, ctx.region_weights, region.name, region_names, memo, "region_weights")
                answer = correct = "yes" if polarity == "positive" else "no"
                asked_region = tax.region(subject).phrase
            else:
                others = draw_sample(rng, _distinct_pool(memo, "regions", region_names, region.name, 3), 3)
                choices, answer = _multiple_choice(rng, region.name, others)
                correct = region.name
        elif task == "abnormality":
            answer = correct = "yes" if is_abnormal else "no"
        else:  # pathology
            if qtype == "open":
                answer = correct = truth
            elif qtype == "closed" and polarity == "positive":
                answer = correct = "yes"
                subject = truth
                if not is_abnormal:
                    slot = "pathology_closed_positive_normal"
            elif qtype == "closed":
                answer = correct = "no"
                if is_abnormal and rng.random() < cfg.normal_probe_rate:
                    subject, slot = none, "pathology_closed_positive_normal"
                else:
                    subject = _weighted_other(rng, ctx.pathology_weights.get(region.name, _NO_WEIGHTS), truth,
                                              region_pathologies, memo, ("pathology_weights", region.name))
            else:
                k = 2 if is_abnormal else 3
                distractors = draw_sample(rng, _distinct_pool(memo, ("pathologies", region.name), region_pathologies, truth, k), k)
                if is_abnormal:
                    distractors.append(none)
                choices, answer = _multiple_choice(rng, truth, distractors)
                correct = truth
        text = _filled(memo, _pick(rng, tpl.variants(slot)), subject or truth, asked_region, modality)
        questions.append((text, choices, answer, qtype, CONTENT_TYPE_OF_TASK[task], correct, question_id, subject))
    return questions


def render_question(question: str, choices: list[str] | None, question_id: str, key: str, seed: int,
                    templates: TemplateSet) -> str:
    """The human turn for one question (options spelled out for multiple choice). Training rows
    and evaluation prompts are both rendered here, so a model is asked as it was taught."""
    if choices is None:
        return question
    variants = templates.variants("multiple_choice_instruction")
    instruction = variants[row_index(seed, CORPUS, key, f"{question_id}/instruction", len(variants))]
    options = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, choices))
    return f"{question}\n{options}\n{instruction}"


def prompt_renderer(manifest: dict[str, Any]):
    """row -> the human turn a benchmark row is asked with, for the build described by `manifest`
    (its seed and wording), without the `<image>` tag."""
    config = RadImageNetVQAConfig.model_validate((manifest.get("fingerprint") or {}).get("config") or {})
    templates = load_templates(config)

    def render(row: dict[str, Any]) -> str:
        key = row["id"].split("#", 1)[0]
        return render_question(row["question"], row["choices"], row["metadata"]["question_id"], key, config.seed,
                               templates)
    return render


def make_caption(image: RadImageNetImage, ctx: Context) -> list[Turn]:
    return [Turn.model_validate(t) for t in caption_turns(image, ctx)]


def caption_turns(image: RadImageNetImage, ctx: Context) -> list[dict[str, str]]:
    region = ctx.taxonomy.region(image.region)
    slot = "caption_abnormal" if image.is_abnormal else "caption_normal"
    captions, requests = ctx.templates.variants(slot), ctx.templates.variants("caption_request")
    which, asked = row_indices(ctx.config.seed, CORPUS, image.key, "caption", (len(captions), len(requests)))
    caption = _filled(ctx.memo, captions[which], image.pathology, region.phrase, MODALITY_WORDS[image.modality])
    request = requests[asked]
    return [{"from": "human", "value": f"<image>\n{request}"}, {"from": "gpt", "value": caption}]


def make_instruct_turns(image: RadImageNetImage, questions: list[QuestionAnswer], ctx: Context) -> list[Turn]:
    rows = [q.model_dump() for q in questions]
    return [Turn.model_validate(t) for t in instruct_turns(image, rows, ctx)]


def instruct_turns(image: RadImageNetImage, questions: list[dict[str, Any]], ctx: Context) -> list[dict[str, str]]:
    turns: list[dict[str, str]] = []
    seed, templates = ctx.config.seed, ctx.templates
    for i, qa in enumerate(questions):
        prompt = render_question(qa["question"], qa["choices"], qa["metadata"]["question_id"], image.key, seed, templates)
        turns.append({"from": "human", "value": f"<image>\n{prompt}" if i == 0 else prompt})
        turns.append({"from": "gpt", "value": qa["answer"]})
    return turns


# --------------------------------------------------------------------------- chunks (the columnar path)


@dataclass(frozen=True)
class ChunkPayload:
    split: str
    images: tuple[RadImageNetImage, ...]  # train/validation: every image; test: ranked candidates
    shards: dict[str, str]  # config -> shard relpath
    config: RadImageNetVQAConfig
    region_weights: dict[str, int]
    pathology_weights: dict[str, dict[str, int]]
    quotas: tuple[tuple[str, int], ...] = ()  # benchmark chunks: (stratum, images to take), in order


def _context(payload: ChunkPayload) -> Context:
    return Context(payload.config, load_templates(payload.config), radimagenet_vqa_taxonomy(),
                   payload.region_weights, payload.pathology_weights)


def _images_of(payload: ChunkPayload, result: ChunkResult, counts: Counter, block: source_index.FileBlock
               ) -> ImageSlice:
    """Each image read, checked and hashed once. Benchmark chunks walk each stratum's candidates
    in seeded rank order and take the first `quota` readable ones, so an unreadable image is
    replaced by the next in its stratum and the mix holds; the taken images come back in key order."""
    taken: list[tuple[RadImageNetImage, str]] = []
    check = payload.config.image_check
    quotas = dict(payload.quotas)
    per_stratum: Counter = Counter()
    block.start()
    for image in payload.images:
        stratum = stratum_of(image)
        if payload.quotas and per_stratum[stratum] >= quotas.get(stratum, 0):
            counts["test_images_not_sampled"] += 1
            continue
        digest = _read_checked(image, check, result, block)
        if digest is None:
            continue
        per_stratum[stratum] += 1
        taken.append((image, digest))
    order = sorted(range(len(taken)), key=lambda i: taken[i][0].key)
    data = block.binary_array().take(pa.array(order, pa.int64()))  # a copy in key order: the block is free again
    return ImageSlice([taken[i][0] for i in order], [taken[i][1] for i in order], data)


def _struct(dtype: pa.DataType, arrays: list[pa.Array]) -> pa.StructArray:
    return pa.StructArray.from_arrays(arrays, fields=list(dtype))


def _lists(dtype: pa.DataType, values: pa.Array, per_row: int, rows: int) -> pa.ListArray:
    """`rows` lists of `per_row` consecutive values each."""
    return pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * per_row), values, type=dtype)


def _turns(dtype: pa.DataType, values: list[str], per_row: int, rows: int) -> pa.ListArray:
    """Conversations: `per_row` turns per row, alternating human / gpt."""
    turn = dtype.value_type
    roles = pa.array(["human", "gpt"] * (len(values) // 2), pa.string())
    return _lists(dtype, _struct(turn, [roles, pa.array(values, pa.string())]), per_row, rows)


def chunk_batches(payload: ChunkPayload, part: ImageSlice, ctx: Context) -> dict[str, pa.RecordBatch]:
    """The chunk's rows of each config as Arrow record batches, built column by column from plain
    values (no per-row objects); the image column is built once, over the bytes as read, and
    shared by the configs that embed it. Same values as the record models (`make_questions`,
    `make_caption`, ...)."""
    images = part.images
    n = len(images)
    nq = len(QUESTION_SLOTS)
    schemas = {cfg: arrow_schema_for(CONFIG_RECORDS[cfg]) for cfg in payload.shards}
    any_schema = next(iter(schemas.values()))
    keys = [image.key for image in images]
    # per image
    image_col = _struct(any_schema.field("image").type, [part.data,
                                                         pa.array([os.path.basename(i.path) for i in images], pa.string())])
    abnormal = pa.array([i.is_abnormal for i in images], pa.bool_())
    location = pa.array([i.region for i in images], pa.string())
    modality = pa.array([i.modality for i in images], pa.string())
    pathology = pa.array([i.pathology for i in images], pa.string())
    lineage_type = any_schema.field("lineage").type
    one_each = pa.array(np.arange(n + 1, dtype=np.int32))
    lineage = _struct(lineage_type, [
        pa.array(["RadImageNet"] * n, pa.string()),
        pa.array([i.rel_path for i in images], pa.string()),
        pa.array([i.split for i in images], pa.string()),
        pa.array([LICENCE_CLASS] * n, pa.string()),
        pa.array(part.digests, pa.string()),
        pa.ListArray.from_arrays(one_each, pa.array([ctx.templates.id] * n, pa.string())),
        pa.ListArray.from_arrays(one_each, pa.array([ctx.templates.content_hash] * n, pa.string())),
        pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string())),
    ])
    # per question (nine per image, slot order), and the turns
    questions = [question_values(image, ctx) for image in images]
    flat = [q for qs in questions for q in qs]
    columns = list(zip(*flat)) if flat else [()] * len(QUESTION_VALUES)
    text, choices, answer, qtype, content, correct, qid, subject = columns
    batches: dict[str, pa.RecordBatch] = {}
    per_question = pa.array(np.repeat(np.arange(n, dtype=np.int64), nq))

    def question_arrays(struct_type: pa.DataType) -> list[pa.Array]:
        meta_type = struct_type.field("metadata").type
        choice_offsets = np.zeros(len(flat) + 1, dtype=np.int32)
        choice_offsets[1:] = np.cumsum([len(c) if c is not None else 0 for c in choices])
        choice_list = pa.ListArray.from_arrays(
            pa.array(choice_offsets), pa.array([x for c in choices if c is not None for x in c], pa.string()),
            type=struct_type.field("choices").type, mask=pa.array([c is None for c in choices], pa.bool_()))
        meta = _struct(meta_type, [pa.array(content, pa.string()), pa.array(correct, pa.string()),
                                   abnormal.take(per_question), location.take(per_question),
                                   modality.take(per_question), pathology.take(per_question),
                                   pa.array(qid, pa.string())])
        return [pa.array(text, pa.string()), choice_list, pa.array(answer, pa.string()), pa.array(qtype, pa.string()),
                meta, pa.array(subject, pa.string())]

    if "alignment" in schemas:
        schema = schemas["alignment"]
        caption = []
        for image in images:
            caption += [t["value"] for t in caption_turns(image, ctx)]
        labels = _struct(schema.field("metadata").type, [abnormal, location, modality, pathology])
        batches["alignment"] = pa.RecordBatch.from_arrays(
            [image_col, pa.array(keys, pa.string()), _turns(schema.field("conversations").type, caption, 2, n),
             labels, lineage], schema=schema)
    if "instruct" in schemas:
        schema = schemas["instruct"]
        seed, templates = ctx.config.seed, ctx.templates
        turns: list[str] = []
        for key, qs in zip(keys, questions):
            for i, q in enumerate(qs):
                prompt = render_question(q[0], q[1], q[6], key, seed, templates)
                turns.append(f"<image>\n{prompt}" if i == 0 else prompt)
                turns.append(q[2])
        question_type = schema.field("questions").type
        qa = _struct(question_type.value_type, question_arrays(question_type.value_type))
        labels = _struct(schema.field("metadata").type, [abnormal, location, modality, pathology])
        batches["instruct"] = pa.RecordBatch.from_arrays(
            [image_col, pa.array(keys, pa.string()), _turns(schema.field("conversations").type, turns, 2 * nq, n),
             _lists(question_type, qa, nq, n), labels, lineage], schema=schema)
    if "benchmark" in schemas:
        schema = schemas["benchmark"]
        fields = question_arrays(pa.struct([schema.field(c) for c in ("question", "choices", "answer",
                                                                     "question_type", "metadata", "subject")]))
        ids = pa.array([f"{key}#{q}" for key, q in zip(np.repeat(np.array(keys, dtype=object), nq), qid)], pa.string())
        names = image_col.field(1).take(per_question)
        images = _struct(image_col.type, [_repeat_each(part.data, nq), names])  # = image_col.take(per_question)
        batches["benchmark"] = pa.RecordBatch.from_arrays([images, ids, *fields, lineage.take(per_question)],
                                                          schema=schema)
    return batches


def _repeat_each(values: pa.BinaryArray, times: int) -> pa.BinaryArray:
    """Each value `times` times in a row (`values.take(np.repeat(range(n), times))`, the same
    array), written into memory this process keeps for the next call: the benchmark's image
    column holds each image once per question (9 x ~32 MB per slice), and fresh memory of that
    size for every slice cost more than the copy (faulted in page by page, handed back on free)."""
    if values.null_count or len(values) == 0:
        return values.take(pa.array(np.repeat(np.arange(len(values)), times)))
    offsets = np.frombuffer(values.buffers()[1], np.int32, len(values) + 1, values.offset * 4)
    data = np.frombuffer(values.buffers()[2], np.uint8)
    lengths = np.diff(offsets)
    total = int(lengths.sum()) * times
    if total > np.iinfo(np.int32).max:
        return values.take(pa.array(np.repeat(np.arange(len(values)), times)))
    block = _REPEAT_MEMORY.pop() if _REPEAT_MEMORY else np.empty(0, np.uint8)
    if len(block) < total or sys.getrefcount(block) > 2:  # too small, or an array made from it is alive
        block = np.empty(max(total, len(block)), np.uint8)
    position = 0
    for start, length in zip(offsets[:-1].tolist(), lengths.tolist()):
        block[position:position + length * times].reshape(times, length)[:] = data[start:start + length]
        position += length * times
    repeated_offsets = np.zeros(len(values) * times + 1, np.int32)
    np.cumsum(np.repeat(lengths, times), out=repeated_offsets[1:])
    _REPEAT_MEMORY.append(block)
    return pa.Array.from_buffers(pa.binary(), len(values) * times,
                                 [None, pa.py_buffer(repeated_offsets), pa.py_buffer(block[:total])])


_REPEAT_MEMORY: list[np.ndarray] = []  # `_repeat_each`'s block between calls (emptied by `run`, as _FREE_BLOCKS)


def check_chunk_table(config: str, table: pa.Table | pa.RecordBatch, where: str, result: ChunkResult,
                      first_row: int = 0) -> None:
    """Every row against its record model (derived rules) and the corpus' declared row rules,
    vectorised; findings name the shard, row (`first_row` is the batch's first row in the shard)
    and field. Up to five examples per rule and shard are kept."""
    violations, total = check_table(table, CONFIG_RECORDS[config])
    result.checked["record_schema"] = result.checked.get("record_schema", 0) + table.num_rows
    if total:
        shown = result.violations.setdefault("record_schema", [])
        room = 5 - sum(1 for e in shown if e.startswith(f"{where} "))
        shown.extend(f"{where} row {first_row + v.row}: {v.field}: {v.message}" for v in violations[:max(room, 0)])
        result.violation_counts["record_schema"] = result.violation_counts.get("record_schema", 0) + total
    record_row_findings(result, ROW_RULES, config, table, where, first_row)


# Images read, generated, checked and written at a time. A multiple of the shards' 64-row row
# groups, so a shard holds the same row groups, byte for byte, as one write of the whole chunk
# would give; a worker holds ~32 MB of images, not a whole chunk's (64 MB at the default
# --images-per-shard, more with a larger one). Smaller slices cost more than they save: each
# batch's checks have a fixed cost of ~2.5 ms per config, and the memory is reused slice after slice.
SLICE_IMAGES = 1024
# Benchmark rows repeat their image once per question: 9 x 128 = 1152 rows (18 row groups) hold
# ~36 MB of image column where 1024 images held ~290 MB (each worker faults its memory in once:
# a 250-image benchmark chunk in one slice cost ~0.11 s of CPU, in two ~0.08 s).
BENCHMARK_SLICE_IMAGES = 128


@dataclass(frozen=True)
class ImageSlice:
    """Readable images of a chunk in key order, with each one's sha256 and its bytes exactly as
    read (a binary array: the image column's data as it is)."""

    images: list[RadImageNetImage]
    digests: list[str]
    data: pa.BinaryArray

    def __len__(self) -> int:
        return len(self.images)

    def part(self, start: int, stop: int) -> ImageSlice:
        return ImageSlice(self.images[start:stop], self.digests[start:stop], self.data.slice(start, stop - start))


def _read_checked(image: RadImageNetImage, check: ImageCheck, result: ChunkResult, block: source_index.FileBlock
                  ) -> str | None:
    """Read the image into `block` and check it: its sha256 (the file kept in the block), or None
    with the reject recorded."""
    try:
        data, entry = block.read(image.path)
    except OSError as exc:
        result.rejects.append(Reject(source=image.rel_path, row=image.rel_path, reason="unreadable_file", detail=str(exc)))
        result.sources[image.path] = source_index.entry_for(image.path, None)
        return None
    try:
        with data:
            check_image(data, check)
    except ImageCheckError as exc:
        result.rejects.append(Reject(source=image.rel_path, row=image.rel_path, reason="image_does_not_decode",
                                     detail=str(exc)))
        result.sources[image.path] = entry
        return None
    block.keep()
    result.sources[image.path] = entry
    result.checked["images_decode"] = result.checked.get("images_decode", 0) + 1  # checked as it was read
    return entry[2]


def _image_slices(payload: ChunkPayload, result: ChunkResult, counts: Counter) -> Iterator[ImageSlice]:
    """The chunk's readable images in key order, SLICE_IMAGES at a time, each read once, into one
    block of memory the slices share (source_index.FileBlock: a slice's image column is that block,
    and the block is reused once the slice is written). Benchmark chunks first choose their images
    (`_images_of`: which candidates are taken depends on which are readable); train and validation
    chunks are read as they are written."""
    block = _FREE_BLOCKS.pop() if _FREE_BLOCKS else source_index.FileBlock(SLICE_IMAGES * (48 << 10))
    try:
        if payload.quotas:
            taken = _images_of(payload, result, counts, block)
            for start in range(0, len(taken), BENCHMARK_SLICE_IMAGES):
                yield taken.part(start, start + BENCHMARK_SLICE_IMAGES)
            return
        check = payload.config.image_check
        images: list[RadImageNetImage] = []
        digests: list[str] = []
        block.start()
        for image in sorted(payload.images, key=lambda i: i.key):
            digest = _read_checked(image, check, result, block)
            if digest is not None:
                images.append(image)
                digests.append(digest)
                if len(images) == SLICE_IMAGES:
                    yield ImageSlice(images, digests, block.binary_array())
                    images, digests = [], []
                    block.start()
        if images:
            yield ImageSlice(images, digests, block.binary_array())
    finally:
        _FREE_BLOCKS.append(block)  # the next chunk in this process reads into the same memory


# A worker process' read blocks between its chunks (one per chunk it runs at once); `run` empties
# it, so a build run in the caller's own process (one worker) keeps no block afterwards.
_FREE_BLOCKS: list[source_index.FileBlock] = []


def build_chunk(spec: ChunkSpec, out: Path) -> ChunkResult:
    """Read, check and turn one chunk of images into its shards (runs in a worker process)."""
    payload: ChunkPayload = spec.payload
    ctx = _context(payload)
    result = ChunkResult(chunk_id=spec.chunk_id)
    counts: Counter = Counter()
    writers = {cfg: ShardWriter(out / rel, CONFIG_RECORDS[cfg], shared_images=cfg == "benchmark")
               for cfg, rel in payload.shards.items()}
    rows = dict.fromkeys(payload.shards, 0)
    # Generation makes many short-lived objects and no reference cycles; with the collector on,
    # each of its passes walks the whole heap (the worker holds the build's plan): ~15% of a chunk.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for part in _image_slices(payload, result, counts):
            batches = chunk_batches(payload, part, ctx)
            for cfg, rel in payload.shards.items():
                batch = batches[cfg]
                check_chunk_table(cfg, batch, rel, result, rows[cfg])  # a batch: no column is concatenated
                writers[cfg].write_table(pa.Table.from_batches([batch]))
                rows[cfg] += batch.num_rows
            counts[f"images_{payload.split}"] += len(part)
            counts["source_image_bytes"] += pc.sum(pc.binary_length(part.data)).as_py() or 0
            del batches, batch, part  # nothing of this slice stays alive: the next one reuses its memory
        for cfg, rel in payload.shards.items():
            result.shards[rel] = ShardInfo(rows=rows[cfg], sha256=writers[cfg].close(), bytes=writers[cfg].size)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if collecting:
            gc.enable()
    counts.setdefault(f"images_{payload.split}", 0)
    counts.setdefault("source_image_bytes", 0)
    result.counts = dict(counts)
    return result


# --------------------------------------------------------------------------- planning


@dataclass
class Plan:
    scan: RadImageNetScan
    chunks: list[ChunkSpec]
    benchmark_population: dict[str, int]  # "region|pathology" -> test images
    benchmark_quotas: dict[str, int]


def stratum_of(image: RadImageNetImage) -> str:
    return f"{image.region}|{image.pathology}"


def _chunked(images: list[RadImageNetImage], size: int) -> list[list[RadImageNetImage]]:
    return [images[i:i + size] for i in range(0, len(images), size)] or []


def _benchmark_groups(test: list[RadImageNetImage], config: RadImageNetVQAConfig, per_chunk: int
                      ) -> tuple[list[tuple[list[RadImageNetImage], tuple[tuple[str, int], ...]]], dict[str, int]]:
    """Strata packed into chunks of about `per_chunk` benchmark images; each chunk carries its
    strata's candidates in seeded rank order and the quota of each. Images of `--avoid`'s
    training split are no candidates."""
    avoid = avoided_images(config.avoid)
    test = [img for img in test if source_key(CORPUS_SOURCE, img.rel_path) not in avoid] if avoid else test
    by_key = {img.key: img for img in test}
    ranked, quotas = stratified_ranked_sample(((stratum_of(i), i.key) for i in test),
                                              config.benchmark_images, config.seed, CORPUS, "benchmark")
    groups: list[tuple[list[RadImageNetImage], tuple[tuple[str, int], ...]]] = []
    images: list[RadImageNetImage] = []
    strata: list[tuple[str, int]] = []
    for stratum in sorted(ranked):
        if not quotas.get(stratum):
            continue
        images += [by_key[k] for k in ranked[stratum]]
        strata.append((stratum, quotas[stratum]))
        if sum(q for _, q in strata) >= per_chunk:
            groups.append((images, tuple(strata)))
            images, strata = [], []
    if strata:
        groups.append((images, tuple(strata)))
    return groups, {s: q for s, q in sorted(quotas.items()) if q}


def plan_build(scan: RadImageNetScan, config: RadImageNetVQAConfig) -> Plan:
    all_images = [img for imgs in scan.images.values() for img in imgs]
    region_weights = dict(Counter(i.region for i in all_images))
    pathology_weights: dict[str, dict[str, int]] = {}
    for img in all_images:
        if img.is_abnormal:
            bucket = pathology_weights.setdefault(img.region, {})
            bucket[img.pathology] = bucket.get(img.pathology, 0) + 1
    chunks: list[ChunkSpec] = []
    for split in ("train", "validation"):
        groups = _chunked(scan.images[split], config.images_per_shard)
        for index, group in enumerate(groups):
            shards = {cfg: shard_relpath(cfg, split, index, len(groups)) for cfg in SPLIT_CONFIGS[split]}
            payload = ChunkPayload(split, tuple(group), shards, config, region_weights, pathology_weights)
            chunks.append(ChunkSpec(chunk_id=f"{split}-{index:05d}", size=len(group), payload=payload))
    groups, quotas = _benchmark_groups(scan.images["test"], config, max(1, config.images_per_shard // 9))
    for index, (candidates, strata) in enumerate(groups):
        shards = {cfg: shard_relpath(cfg, "test", index, len(groups)) for cfg in SPLIT_CONFIGS["test"]}
        payload = ChunkPayload("test", tuple(candidates), shards, config, region_weights, pathology_weights, strata)
        chunks.append(ChunkSpec(chunk_id=f"test-{index:05d}", size=len(candidates), payload=payload))
    population = Counter(stratum_of(i) for i in scan.images["test"])
    return Plan(scan, chunks, dict(sorted(population.items())), quotas)


def fingerprint(scan: RadImageNetScan, config: RadImageNetVQAConfig, templates: TemplateSet) -> dict[str, Any]:
    """What decides the output besides the settings: the listing (files, labels, splits), the
    wording and the taxonomy. Image content is covered by the source index (engine)."""
    listing = hashlib.sha256()
    for split in sorted(scan.images):
        for img in scan.images[split]:
            listing.update(f"{split}\t{img.rel_path}\t{img.region}\t{img.pathology}\n".encode())
    taxonomy = radimagenet_vqa_taxonomy()
    return {
        "templates": f"{templates.id}@{templates.content_hash}",
        "taxonomy": hashlib.sha256(repr(taxonomy.regions).encode()).hexdigest()[:16],
        "sources": {"listing": listing.hexdigest()[:16], "split_csvs": scan.split_csvs},
    }


# --------------------------------------------------------------------------- the corpus' stages


def prepare(sources: dict[str, Path], config: RadImageNetVQAConfig, log) -> Prepared:
    """Scan the tree (unknown folder names stop here, before any work) and plan the chunks."""
    labels = LabelMap.from_json(config.label_map)
    templates = load_templates(config)
    scan = scan_radimagenet(sources["source"], labels)
    log(f"{scan.root}: " + ", ".join(f"{len(v)} {k}" for k, v in scan.images.items()) + " images")
    return Prepared(fingerprint=fingerprint(scan, config, templates), plan=plan_build(scan, config))


def run(prepared: Prepared, config: RadImageNetVQAConfig, ctx: BuildContext) -> StageOutput:
    plan: Plan = prepared.plan
    scan = plan.scan
    try:
        results = ctx.run_chunks(plan.chunks, build_chunk, CORPUS)
    finally:
        _FREE_BLOCKS.clear()
        _REPEAT_MEMORY.clear()
    counts: Counter = Counter(scan.counts)
    warnings = list(scan.warnings)
    taken = sum(r.counts.get("images_test", 0) for r in results)
    if not plan.benchmark_quotas:
        warnings.append("no test images: the benchmark config was not built")
    elif taken < config.benchmark_images:
        warnings.append(f"the benchmark holds {taken} images, fewer than the {config.benchmark_images} asked for "
                        f"(the test split has {len(scan.images['test'])} readable candidates)")
    templates = load_templates(config)
    return StageOutput(
        chunks=results, rejects=list(scan.rejects), counts=counts, warnings=warnings,
        manifest={
            "source": {"dataset": "RadImageNet", "root_name": scan.root.name, "split_csvs": scan.split_csvs,
                       "images_per_split": {k: len(v) for k, v in scan.images.items()}},
            "image_check": config.image_check,
            "prompts": {templates.id: templates.content_hash},
            "benchmark": {"population": plan.benchmark_population, "quotas": plan.benchmark_quotas,
                          "requested_images": config.benchmark_images, "images": taken},
        })


def make_settings(*, seed: int = 0, benchmark_images: int = 1000, label_map: Path | None = None,
                  templates: Path | None = None, image_check: ImageCheck = "crc",
                  images_per_shard: int = 2000) -> RadImageNetVQAConfig:
    """Settings from the user's options: the label-map file is read here (a bad one stops the
    build before any work), and its content, not its path, goes into the fingerprint."""
    config = RadImageNetVQAConfig(seed=seed, benchmark_images=benchmark_images, images_per_shard=images_per_shard,
                                  label_map=load_label_map(label_map).to_json(),
                                  templates_path=str(templates) if templates else None, image_check=image_check)
    return config
