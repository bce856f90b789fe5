"""radimagenet-vqa: RadImageNet CT/MR images -> captions (alignment), nine questions per image
(instruct), and a stratified benchmark (Butsanets et al., RadImageNet-VQA).

Stages: scan (labels, splits) -> plan (benchmark sample, chunks) -> chunks (read, decode-check,
generate, write shards) -> finalize (rejects, manifest, card, validation).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from radcorpora import __version__
from radcorpora.builders.engine import ChunkResult, ChunkSpec, ShardInfo, run_chunks
from radcorpora.ops.image_check import ImageCheck, ImageCheckError, check_image
from radcorpora.ops.sampling import row_rng, sample_distinct, stratified_ranked_sample
from radcorpora.prompts.loader import TemplateSet, load_template_set
from radcorpora.publish.shards import ShardWriter, shard_relpath
from radcorpora.schemas.common import ImageData, Lineage, Reject, Turn
from radcorpora.schemas.radimagenet_vqa import (
    CONFIG_RECORDS,
    CONTENT_TYPE_OF_TASK,
    LETTERS,
    QUESTION_SLOTS,
    AlignmentRecord,
    BenchmarkRecord,
    ImageLabels,
    InstructRecord,
    QuestionAnswer,
    QuestionMetadata,
)
from radcorpora.schemas.taxonomy import Taxonomy, radimagenet_vqa_taxonomy
from radcorpora.sources.radimagenet import RadImageNetImage, RadImageNetScan

CORPUS = "radimagenet-vqa"
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

    seed: int = 0
    benchmark_images: int = Field(1000, ge=0)
    images_per_shard: int = Field(2000, ge=1)
    # Share of abnormal images whose closed-negative pathology question asks "is this scan free
    # of pathology?" (answer no). Normal images ask that question with answer yes, so without
    # this the wording itself would give the answer away. 0.39 ~= 28.1% / 71.9% (paper mix).
    normal_probe_rate: float = Field(0.39, ge=0.0, le=1.0)
    label_map: dict[str, Any] = Field(default_factory=dict)
    templates_path: str | None = None
    image_check: ImageCheck = "crc"  # see ops/image_check.py: "full" decodes every pixel


@dataclass(frozen=True)
class Context:
    """What question generation needs besides the image itself."""

    config: RadImageNetVQAConfig
    templates: TemplateSet
    taxonomy: Taxonomy
    region_weights: dict[str, int]  # region -> images, for frequency-matched negatives
    pathology_weights: dict[str, dict[str, int]]  # region -> pathology -> images


def load_templates(config: RadImageNetVQAConfig) -> TemplateSet:
    path = Path(config.templates_path) if config.templates_path else None
    return load_template_set("radimagenet_vqa", path, TEMPLATE_SLOTS, PLACEHOLDERS)


# --------------------------------------------------------------------------- generation


def _pick(rng: random.Random, variants: tuple[str, ...]) -> str:
    return variants[rng.randrange(len(variants))]


def _fill(text: str, **values: str) -> str:
    filled = text.format(**values)
    return filled[:1].upper() + filled[1:]


def _weighted_other(rng: random.Random, weights: dict[str, int], exclude: str, fallback: tuple[str, ...]) -> str:
    """A label other than `exclude`, drawn in proportion to how often it occurs in the source,
    so how often a label is asked with answer "no" mirrors how often it is asked with "yes"."""
    candidates = sorted(set(fallback) - {exclude})
    if not candidates:
        raise ValueError(f"no alternative to {exclude!r}")
    counts = [max(weights.get(c, 0), 1) for c in candidates]
    return rng.choices(candidates, weights=counts, k=1)[0]


def _multiple_choice(rng: random.Random, correct: str, distractors: list[str]) -> tuple[list[str], str]:
    options = [correct, *distractors]
    rng.shuffle(options)
    return options, LETTERS[options.index(correct)]


def make_questions(image: RadImageNetImage, ctx: Context) -> list[QuestionAnswer]:
    """The nine questions of one image, each drawn with its own seeded generator."""
    cfg, tpl, tax = ctx.config, ctx.templates, ctx.taxonomy
    region = tax.region(image.region)
    none = tax.no_pathology_answer
    truth = image.pathology if image.is_abnormal else none
    words = {"region": region.phrase, "modality": MODALITY_WORDS[image.modality]}
    region_pathologies = tuple(region.pathologies)
    questions: list[QuestionAnswer] = []
    for question_id, task, qtype, polarity in QUESTION_SLOTS:
        rng = row_rng(cfg.seed, CORPUS, image.key, question_id)
        slot, subject, choices = question_id, None, None
        if task == "anatomy":
            if qtype == "open":
                answer = correct = region.name
            elif qtype == "closed":
                subject = region.name if polarity == "positive" else _weighted_other(
                    rng, ctx.region_weights, region.name, tax.region_names)
                answer = correct = "yes" if polarity == "positive" else "no"
                words_q = {**words, "region": tax.region(subject).phrase}
            else:
                others = sample_distinct(rng, [r for r in tax.region_names if r != region.name], 3)
                choices, answer = _multiple_choice(rng, region.name, others)
                correct = region.name
        elif task == "abnormality":
            answer = correct = "yes" if image.is_abnormal else "no"
        else:  # pathology
            if qtype == "open":
                answer = correct = truth
            elif qtype == "closed" and polarity == "positive":
                answer = correct = "yes"
                subject = truth
                if not image.is_abnormal:
                    slot = "pathology_closed_positive_normal"
            elif qtype == "closed":
                answer = correct = "no"
                if image.is_abnormal and rng.random() < cfg.normal_probe_rate:
                    subject, slot = none, "pathology_closed_positive_normal"
                else:
                    subject = _weighted_other(rng, ctx.pathology_weights.get(region.name, {}), truth, region_pathologies)
            else:
                pool = [p for p in region_pathologies if p != truth]
                distractors = sample_distinct(rng, pool, 2 if image.is_abnormal else 3)
                if image.is_abnormal:
                    distractors.append(none)
                choices, answer = _multiple_choice(rng, truth, distractors)
                correct = truth
        fill = words_q if (task == "anatomy" and qtype == "closed") else words
        text = _fill(_pick(rng, tpl.variants(slot)), pathology=subject or truth, **fill)
        questions.append(QuestionAnswer(
            question=text,
            choices=choices,
            answer=answer,
            question_type=qtype,
            subject=subject,
            metadata=QuestionMetadata(
                content_type=CONTENT_TYPE_OF_TASK[task],
                correct_text=correct,
                is_abnormal=image.is_abnormal,
                location=region.name,
                modality=image.modality,
                pathology=image.pathology,
                question_id=question_id,
            ),
        ))
    return questions


def render_question(qa: QuestionAnswer, ctx: Context, key: str) -> str:
    """The human turn for one question (options spelled out for multiple choice)."""
    if qa.choices is None:
        return qa.question
    rng = row_rng(ctx.config.seed, CORPUS, key, f"{qa.metadata.question_id}/instruction")
    options = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, qa.choices))
    return f"{qa.question}\n{options}\n{_pick(rng, ctx.templates.variants('multiple_choice_instruction'))}"


def make_caption(image: RadImageNetImage, ctx: Context) -> list[Turn]:
    rng = row_rng(ctx.config.seed, CORPUS, image.key, "caption")
    region = ctx.taxonomy.region(image.region)
    slot = "caption_abnormal" if image.is_abnormal else "caption_normal"
    caption = _fill(_pick(rng, ctx.templates.variants(slot)), region=region.phrase,
                    pathology=image.pathology, modality=MODALITY_WORDS[image.modality])
    request = _pick(rng, ctx.templates.variants("caption_request"))
    return [Turn(**{"from": "human", "value": f"<image>\n{request}"}), Turn(**{"from": "gpt", "value": caption})]


def make_instruct_turns(image: RadImageNetImage, questions: list[QuestionAnswer], ctx: Context) -> list[Turn]:
    turns: list[Turn] = []
    for i, qa in enumerate(questions):
        prompt = render_question(qa, ctx, image.key)
        turns.append(Turn(**{"from": "human", "value": f"<image>\n{prompt}" if i == 0 else prompt}))
        turns.append(Turn(**{"from": "gpt", "value": qa.answer}))
    return turns


# --------------------------------------------------------------------------- reading images


class ImageReadError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def read_image(image: RadImageNetImage, check: ImageCheck) -> ImageData:
    """The file's bytes exactly as stored, after checking that they are a readable image."""
    try:
        data = image.path.read_bytes()
    except OSError as exc:
        raise ImageReadError("unreadable_file", str(exc)) from exc
    try:
        check_image(data, check)
    except ImageCheckError as exc:
        raise ImageReadError("image_does_not_decode", str(exc)) from exc
    return ImageData(bytes=data, path=image.path.name)


def lineage_for(image: RadImageNetImage, data: ImageData, templates: TemplateSet) -> Lineage:
    return Lineage(
        source_dataset="RadImageNet",
        source_id=image.rel_path,
        source_split=image.split,
        licence_class=LICENCE_CLASS,
        image_sha256=hashlib.sha256(data.bytes).hexdigest(),
        prompt_ids=[templates.id],
        prompt_hashes=[templates.content_hash],
    )


# --------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class ChunkPayload:
    split: str
    images: tuple[RadImageNetImage, ...]
    shards: dict[str, str]  # config -> shard relpath
    config: RadImageNetVQAConfig
    region_weights: dict[str, int]
    pathology_weights: dict[str, dict[str, int]]


def _context(payload: ChunkPayload) -> Context:
    return Context(payload.config, load_templates(payload.config), radimagenet_vqa_taxonomy(),
                   payload.region_weights, payload.pathology_weights)


def build_chunk(spec: ChunkSpec, out: Path) -> ChunkResult:
    """Read, check and turn one chunk of images into its shards (runs in a worker process)."""
    payload: ChunkPayload = spec.payload
    ctx = _context(payload)
    writers = {cfg: ShardWriter(out / rel, CONFIG_RECORDS[cfg]) for cfg, rel in payload.shards.items()}
    result = ChunkResult(chunk_id=spec.chunk_id)
    counts: Counter = Counter()
    try:
        for image in payload.images:
            try:
                data = read_image(image, payload.config.image_check)
            except ImageReadError as exc:
                result.rejects.append(Reject(source=image.rel_path, reason=exc.reason, detail=str(exc)))
                continue
            lineage = lineage_for(image, data, ctx.templates)
            labels = ImageLabels(is_abnormal=image.is_abnormal, location=image.region,
                                 modality=image.modality, pathology=image.pathology)
            questions = make_questions(image, ctx)
            if "alignment" in writers:
                writers["alignment"].write(AlignmentRecord(
                    image=data, id=image.key, conversations=make_caption(image, ctx),
                    metadata=labels, lineage=lineage))
            if "instruct" in writers:
                writers["instruct"].write(InstructRecord(
                    image=data, id=image.key, conversations=make_instruct_turns(image, questions, ctx),
                    questions=questions, metadata=labels, lineage=lineage))
            if "benchmark" in writers:
                for qa in questions:
                    writers["benchmark"].write(BenchmarkRecord(
                        image=data, id=f"{image.key}#{qa.metadata.question_id}", lineage=lineage,
                        **qa.model_dump(exclude={"metadata"}), metadata=qa.metadata))
            counts[f"images_{payload.split}"] += 1
            counts["source_image_bytes"] += len(data.bytes)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for cfg, writer in writers.items():
        rows = writer.rows
        result.shards[payload.shards[cfg]] = ShardInfo(rows=rows, sha256=writer.close())
    result.counts = dict(counts)
    return result


# --------------------------------------------------------------------------- planning


@dataclass
class Plan:
    chunks: list[ChunkSpec]
    benchmark_population: dict[str, int]  # "region|pathology" -> test images
    benchmark_quotas: dict[str, int]
    benchmark_rejects: list[Reject]
    counts: Counter


def stratum_of(image: RadImageNetImage) -> str:
    return f"{image.region}|{image.pathology}"


def select_benchmark(test: list[RadImageNetImage], config: RadImageNetVQAConfig) -> tuple[
        list[RadImageNetImage], dict[str, int], dict[str, int], list[Reject]]:
    """A stratified sample of test images keeping the region x pathology (x normal) mix.

    Within each stratum images are taken in seeded rank order; one that fails to decode is
    recorded and replaced by the next in its stratum, so the mix holds.
    """
    by_key = {img.key: img for img in test}
    ranked, quotas = stratified_ranked_sample(((stratum_of(i), i.key) for i in test),
                                              config.benchmark_images, config.seed, CORPUS, "benchmark")
    chosen: list[RadImageNetImage] = []
    rejects: list[Reject] = []
    for stratum in sorted(ranked):
        taken = 0
        for key in ranked[stratum]:
            if taken >= quotas[stratum]:
                break
            try:
                read_image(by_key[key], config.image_check)
            except ImageReadError as exc:
                rejects.append(Reject(source=by_key[key].rel_path, reason=exc.reason, detail=str(exc)))
                continue
            chosen.append(by_key[key])
            taken += 1
    population = Counter(stratum_of(i) for i in test)
    return sorted(chosen, key=lambda i: i.key), dict(sorted(population.items())), dict(sorted(quotas.items())), rejects


def _chunked(images: list[RadImageNetImage], size: int) -> list[list[RadImageNetImage]]:
    return [images[i:i + size] for i in range(0, len(images), size)] or []


def plan_build(scan: RadImageNetScan, config: RadImageNetVQAConfig) -> Plan:
    all_images = [img for imgs in scan.images.values() for img in imgs]
    region_weights = dict(Counter(i.region for i in all_images))
    pathology_weights: dict[str, dict[str, int]] = {}
    for img in all_images:
        if img.is_abnormal:
            bucket = pathology_weights.setdefault(img.region, {})
            bucket[img.pathology] = bucket.get(img.pathology, 0) + 1
    counts: Counter = Counter()
    chunks: list[ChunkSpec] = []
    benchmark, population, quotas, bench_rejects = select_benchmark(scan.images["test"], config)
    counts["test_images_not_sampled"] = len(scan.images["test"]) - len(benchmark) - len(bench_rejects)
    work = {"train": scan.images["train"], "validation": scan.images["validation"], "test": benchmark}
    for split, images in work.items():
        per_shard = config.images_per_shard if split != "test" else max(1, config.images_per_shard // 9)
        groups = _chunked(images, per_shard)
        for index, group in enumerate(groups):
            shards = {cfg: shard_relpath(cfg, split, index, len(groups)) for cfg in SPLIT_CONFIGS[split]}
            payload = ChunkPayload(split, tuple(group), shards, config, region_weights, pathology_weights)
            chunks.append(ChunkSpec(chunk_id=f"{split}-{index:05d}", size=len(group), payload=payload))
    return Plan(chunks, population, quotas, bench_rejects, counts)


def fingerprint(scan: RadImageNetScan, config: RadImageNetVQAConfig, templates: TemplateSet) -> dict[str, Any]:
    """What decides the output: a different value means a different build."""
    listing = hashlib.sha256()
    for split in sorted(scan.images):
        for img in scan.images[split]:
            listing.update(f"{split}\t{img.rel_path}\t{img.region}\t{img.pathology}\n".encode())
    taxonomy = radimagenet_vqa_taxonomy()
    return {
        "corpus": CORPUS,
        "config": json.loads(config.model_dump_json(exclude={"templates_path"})),
        "templates": f"{templates.id}@{templates.content_hash}",
        "taxonomy": hashlib.sha256(repr(taxonomy.regions).encode()).hexdigest()[:16],
        "source_listing": listing.hexdigest()[:16],
        "radcorpora": __version__,
    }


def run_plan(plan: Plan, out: Path, workers: int, progress: Any = None) -> list[ChunkResult]:
    return run_chunks(plan.chunks, build_chunk, out, workers=workers, progress=progress,
                      description="radimagenet-vqa")
