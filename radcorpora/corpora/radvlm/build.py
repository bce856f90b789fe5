"""radvlm: chest X-ray instruction data from seven sources (Deperrois et al., RadVLM), the tasks
that need no LLM: report generation, abnormality classification, anatomical / abnormality /
phrase grounding and abnormality detection. The LLM stages (prior-study removal, conversations)
plug in after `plan_tasks` (part 2).

Stages: read sources -> task instances (seeded wording, fused VinDr boxes) -> patient split
integrity across every task and source -> chunks (read each image once, DICOM converted once,
rows checked column-wise, shards) -> finalize (engine).

Differences from the published generator, on purpose: template choices are seeded per row (the
same build twice gives the same bytes), ids are unique and stable (replicas are a count on the
instance, not copies), nothing is dropped silently (rejects with reasons), reader fusion does not
depend on annotation row order, and no patient is in both train and test of any task.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field, model_validator

from radcorpora.builders.context import BuildContext, Prepared, StageOutput
from radcorpora.builders.radvlm_llm import LLM_TASKS, STAGES, estimate_requests, load_prompts, offline_responders, \
    run_llm_stages
from radcorpora.llm.verify import DECISIONS_FILE, FAILURES_FILE, QUEUE_FILE
from radcorpora.ops.boxes import boxes_text, fuse_readers
from radcorpora.ops.image_check import ImageCheckError, check_image
from radcorpora.ops.sampling import rank_key, row_index
from radcorpora.prompts.loader import TemplateSet, load_template_set
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.columnar import check_table
from radcorpora.schemas.common import Reject
from radcorpora.schemas.cxr import CHEXPERT_LABELS, CxrImage, GroundedFinding
from radcorpora.schemas.features import arrow_schema_for
from radcorpora.schemas.radvlm import (
    CONVERSATION_SOURCES,
    CONVERSATION_TASKS,
    DEFAULT_REPLICATION,
    PATIENT_NAMESPACE,
    TASK_SOURCES,
    TASKS,
    RadVLMRecord,
    check_rows,
)
from radcorpora.sources.errors import SourceError
from radcorpora.store import source_index
from radcorpora.store.shards import ShardWriter, shard_relpath
from radcorpora.store.state import ChunkResult, ChunkSpec, ShardInfo, derived_once

CORPUS = "radvlm"
TEMPLATE_SLOTS = ("report_request", "classification_request", "classification_answer", "classification_normal",
                  "anatomy_request", "anatomy_answer", "finding_request", "finding_answer", "detection_request",
                  "detection_none", "phrase_request", "phrase_answer")
PLACEHOLDERS = frozenset({"view", "region", "finding", "phrase", "findings", "boxes"})
CREDENTIALED_SOURCES = frozenset({"mimic-cxr", "chest-imagenome", "vindr-cxr", "ms-cxr"})
SOURCE_FLAGS = {"mimic-cxr": "--mimic-cxr", "chexpert": "--chexpert", "chexpert-plus": "--chexpert-plus",
                "chest-imagenome": "--chest-imagenome", "vindr-cxr": "--vindr-cxr", "ms-cxr": "--ms-cxr",
                "padchest-gr": "--padchest-gr"}
VIEW_WORDS = {"PA": "frontal (PA)", "AP": "frontal (AP)", "FRONTAL": "frontal", "LATERAL": "lateral", "LL": "lateral"}


class RadVLMConfigError(SourceError):
    """Options and sources do not fit (a task without its source, an unknown task)."""


class RadVLMConfig(BaseModel):
    """Everything that decides a build's content (part of its fingerprint)."""

    seed: int = 0
    tasks: list[str] | None = None  # None: every task the given sources allow
    uncertain: Literal["absent", "present"] = "absent"  # paper: uncertain counts as absent
    wbf_iou: float = Field(0.1, gt=0.0, le=1.0)
    min_readers: int = Field(1, ge=1)
    replication: dict[str, int] = Field(default_factory=dict)  # "task" or "task/source" -> factor
    max_side: int | None = Field(None, ge=16)  # DICOM -> PNG conversion; None keeps the full size
    anatomical_grounding_samples: int = Field(80_000, ge=0)
    images_per_shard: int = Field(1000, ge=1)
    templates_path: str | None = None
    # Part 2, the LLM stages. `prior_removal`: "llm" rewrites each report with `llm`; "rules"
    # drops the sentences the prior-study detector flags (no text leaves the machine); "off"
    # keeps the extracted text (the card warns).
    llm: str | None = None  # PROVIDER:MODEL of both LLM stages
    prior_removal: Literal["llm", "rules", "off"] = "rules"
    conversations: int = Field(0, ge=0)  # standard train conversations (paper: 86,155); 0: no conversations
    conversation_test: int = Field(500, ge=0)  # held-out standard conversations (paper: 500)
    grounded_test: int = Field(155, ge=0)  # held-out grounded ones, from MS-CXR's test split (paper: 155)
    min_rounds: int = Field(5, ge=1)
    max_rounds: int = Field(10, ge=1)
    verifiers: list[str] = Field(default_factory=list)  # PROVIDER:MODEL judging each conversation
    decisions: dict[str, Literal["accept", "reject"]] = Field(default_factory=dict)  # a person's adjudication

    @model_validator(mode="after")
    def _llm_for_llm_stages(self) -> RadVLMConfig:
        if self.prior_removal == "llm" and not self.llm:
            raise ValueError("--prior-removal llm needs --llm PROVIDER:MODEL (or use --prior-removal rules)")
        if self.conversations and not self.llm:
            raise ValueError("--conversations needs --llm PROVIDER:MODEL: conversations are written by an LLM")
        if self.verifiers and not self.conversations:
            raise ValueError("--verify checks conversations: give --conversations N too")
        if self.min_rounds > self.max_rounds:
            raise ValueError(f"min_rounds {self.min_rounds} > max_rounds {self.max_rounds}")
        unknown = [t for t in self.tasks or () if t not in TASKS]
        if unknown:  # said before any source is scanned
            raise ValueError(f"unknown task(s) {', '.join(unknown)} (tasks: {', '.join(TASKS)})")
        return self

    @property
    def uses_llm(self) -> bool:
        return self.prior_removal == "llm" or self.conversations > 0

    def replication_for(self, task: str, source: str, split: str) -> int:
        """How often the training mix repeats an instance. Replication is a training-mix device:
        an evaluation split (test, validation) holds each instance once."""
        if split != "train":
            return 1
        for key in (f"{task}/{source}", task):
            if key in self.replication:
                return self.replication[key]
        return DEFAULT_REPLICATION.get(f"{task}/{source}", 1)


def parse_tasks(tasks: str | None) -> list[str] | None:
    """`--tasks a,b` -> [a, b]; None: every task the sources allow. Conversations are not a task
    but a count (`--conversations N`), and a list with no task in it is refused."""
    if tasks is None:
        return None
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise RadVLMConfigError(f"--tasks {tasks!r} names no task (tasks: {', '.join(TASKS)})")
    conversational = [t for t in names if t in CONVERSATION_TASKS or t.startswith("conversation")]
    if conversational:
        raise RadVLMConfigError(
            f"--tasks {','.join(conversational)}: conversations are not a task of --tasks; ask for them with "
            "--conversations N and --llm PROVIDER:MODEL (grounded ones come with --ms-cxr or --padchest-gr)")
    return names


def load_templates(config: RadVLMConfig) -> TemplateSet:
    path = Path(config.templates_path) if config.templates_path else None
    return load_template_set("radvlm", path, TEMPLATE_SLOTS, PLACEHOLDERS)


def load_replication(path: Path | None) -> dict[str, int]:
    """A YAML/JSON mapping `task` or `task/source` -> factor (>= 1)."""
    if path is None:
        return {}
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RadVLMConfigError(f"{path}: cannot read the replication file ({exc})") from exc
    if not isinstance(raw, dict):
        raise RadVLMConfigError(f"{path}: expected a mapping of task or task/source to a factor")
    out: dict[str, int] = {}
    feeds = {**TASK_SOURCES, **CONVERSATION_SOURCES}
    for key, value in raw.items():
        task, _, source = str(key).partition("/")
        if task not in feeds:
            raise RadVLMConfigError(f"{path}: unknown task {task!r} (tasks: {', '.join(feeds)})")
        if source and source not in feeds[task]:
            raise RadVLMConfigError(f"{path}: {key}: {task} takes no source {source!r} "
                                    f"(its sources: {', '.join(feeds[task])})")
        if not isinstance(value, int) or value < 1:
            raise RadVLMConfigError(f"{path}: {key}: the factor must be a whole number >= 1, got {value!r}")
        out[str(key)] = value
    return out


# --------------------------------------------------------------------------- planned rows


@dataclass(frozen=True)
class PlannedRow:
    """One output row before its image is read: everything but the pixels (picklable)."""

    task: str
    source: str
    image: CxrImage
    instances: tuple[dict[str, Any], ...]
    report: str | None = None
    report_section: str | None = None
    positive_labels: tuple[str, ...] = ()
    read_image: str = "file"  # file | dicom | padchest-zip
    phrases: tuple[tuple[str, tuple[Box, ...]], ...] = ()  # grounded conversations: (phrase, its boxes)
    prompts: tuple[tuple[str, str], ...] = ()  # (id, content hash) of the LLM prompts that wrote its text
    models: tuple[str, ...] = ()  # the models that wrote it

    @property
    def key(self) -> str:
        return f"{self.task}/{self.source}/{self.image.image_id}"

    @property
    def patient(self) -> str:
        return f"{PATIENT_NAMESPACE[self.source]}:{self.image.subject_id}"

    @property
    def split(self) -> str:
        return split_of(self.image)


def split_of(image: CxrImage) -> str:
    """The config split an image goes to: radvlm's configs have train and test (a source's
    validation images train)."""
    return "test" if image.split == "test" else "train"


class Words:
    """Seeded wording: every choice drawn from (seed, corpus, row key, purpose)."""

    def __init__(self, templates: TemplateSet, seed: int):
        self.templates, self.seed = templates, seed

    def pick(self, slot: str, key: str, **values: str) -> str:
        variants = self.templates.variants(slot)
        text = variants[row_index(self.seed, CORPUS, key, slot, len(variants))]
        return text.format(**values)


class FrontalFilter:
    """Report generation, classification and conversations take frontal images (PA, AP): every
    image left out for its view is remembered once per source and view, whichever task met it."""

    def __init__(self) -> None:
        self.left_out: dict[tuple[str, str], set[str]] = defaultdict(set)

    def __call__(self, source: str, image: CxrImage) -> bool:
        if image.frontal:
            return True
        self.left_out[(source, f"view_{image.view.lower()}")].add(image.image_id)
        return False

    def counts(self) -> dict[str, int]:
        return {f"{source}/{reason}": len(ids) for (source, reason), ids in sorted(self.left_out.items())}


def _turns(human: str, gpt: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<image>\n{human}"}, {"from": "gpt", "value": gpt}]


def _box_rows(boxes: Iterable[Box]) -> list[dict[str, Any]]:
    return [b.model_dump() for b in boxes]


# Not a pathology: CheXpert marks "No Finding" positive next to support devices (the real
# train.csv has 7,420 such rows and none with any other finding), so they never contradict it.
NOT_A_FINDING = frozenset({"No Finding", "Support Devices"})


def positive_labels(states: dict[str, str], uncertain: str) -> tuple[list[str], str | None]:
    """(positive CheXpert labels other than "No Finding", problem) under the uncertain policy.
    "No Finding" is explicit: an image with no positive label is answered "no finding"; one that
    the labeler marks "No Finding" positive while naming a pathology is contradictory (support
    devices are not a pathology: they are named in the answer and contradict nothing)."""
    take = {"positive"} | ({"uncertain"} if uncertain == "present" else set())
    found = [label for label in CHEXPERT_LABELS if label != "No Finding" and states.get(label) in take]
    if states.get("No Finding") == "positive" and any(label not in NOT_A_FINDING for label in found):
        return found, "no_finding_contradicts_labels"
    return found, None


def report_rows(source: str, images: Iterable[CxrImage], report_of: Callable[[CxrImage], Any], words: Words,
                config: RadVLMConfig, rejects: list[Reject], read_image: str = "file",
                frontal: FrontalFilter | None = None) -> list[PlannedRow]:
    rows = []
    frontal = frontal or FrontalFilter()
    for image in images:
        if not frontal(source, image):
            continue
        factor = config.replication_for("report_generation", source, split_of(image))
        report = report_of(image)
        text = report.text if report is not None else None
        if not text:
            rejects.append(Reject(source=source, row=image.image_id, reason="report_generation_no_report",
                                  detail=f"study {image.study_id}: no findings or impression"))
            continue
        key = f"report_generation/{source}/{image.image_id}"
        human = words.pick("report_request", key, view=VIEW_WORDS.get(image.view, "chest"))
        rows.append(PlannedRow("report_generation", source, image, (
            {"id": f"{key}#0", "conversations": _turns(human, text), "label": None, "boxes": [],
             "replication": factor},), report=text,
            report_section="findings" if report.findings else "impression", read_image=read_image))
    return rows


def classification_rows(source: str, images: Iterable[CxrImage], labels_of: Callable[[CxrImage], dict | None],
                        words: Words, config: RadVLMConfig, rejects: list[Reject],
                        frontal: FrontalFilter | None = None) -> list[PlannedRow]:
    rows = []
    frontal = frontal or FrontalFilter()
    for image in images:
        if not frontal(source, image):
            continue
        factor = config.replication_for("abnormality_classification", source, split_of(image))
        states = labels_of(image)
        if states is None:
            rejects.append(Reject(source=source, row=image.image_id, reason="classification_no_labels",
                                  detail=f"study {image.study_id}: no CheXpert labels"))
            continue
        found, problem = positive_labels(states, config.uncertain)
        if problem:
            rejects.append(Reject(source=source, row=image.image_id, reason=problem,
                                  detail=f"No Finding positive with {', '.join(found)}"))
            continue
        key = f"abnormality_classification/{source}/{image.image_id}"
        answer = (words.pick("classification_answer", key, findings=", ".join(f.lower() for f in found)) if found
                  else words.pick("classification_normal", key))
        rows.append(PlannedRow("abnormality_classification", source, image, (
            {"id": f"{key}#0", "conversations": _turns(words.pick("classification_request", key), answer),
             "label": None, "boxes": [], "replication": factor},), positive_labels=tuple(found)))
    return rows


def anatomical_order(config: RadVLMConfig) -> Callable[[str], str]:
    """Image id -> sort key of the seeded order in which anatomical_grounding takes its images
    (the Chest ImaGenome reader reads scene graphs in this order and stops when it has enough)."""
    return lambda image_id: rank_key(config.seed, CORPUS, image_id, "anatomical_grounding")


def anatomical_rows(findings: Iterable[GroundedFinding], words: Words, config: RadVLMConfig) -> list[PlannedRow]:
    """One seeded region per image, then a seeded choice of `anatomical_grounding_samples` images."""
    by_image: dict[str, list[GroundedFinding]] = defaultdict(list)
    for finding in findings:
        if finding.boxes:
            by_image[finding.image.image_id].append(finding)
    chosen = sorted(by_image, key=anatomical_order(config))
    chosen = sorted(chosen[:config.anatomical_grounding_samples])
    rows = []
    for image_id in chosen:
        regions = sorted(by_image[image_id], key=lambda f: f.label)
        factor = config.replication_for("anatomical_grounding", "chest-imagenome", split_of(regions[0].image))
        region = regions[row_index(config.seed, CORPUS, image_id, "region", len(regions))]
        key = f"anatomical_grounding/chest-imagenome/{image_id}"
        boxes = list(region.boxes)
        answer = words.pick("anatomy_answer", key, region=region.label, boxes=boxes_text(boxes))
        rows.append(PlannedRow("anatomical_grounding", "chest-imagenome", region.image, (
            {"id": f"{key}#0", "conversations": _turns(words.pick("anatomy_request", key, region=region.label), answer),
             "label": region.label, "boxes": _box_rows(boxes), "replication": factor},)))
    return rows


def vindr_rows(annotations: Iterable[GroundedFinding], images: Iterable[CxrImage], no_finding: set[str],
               words: Words, config: RadVLMConfig, tasks: set[str], rejects: list[Reject]) -> list[PlannedRow]:
    """Reader fusion per (image, class), then one grounding instance per fused class and one
    detection instance per image (images whose readers found nothing are answered as such)."""
    fused: dict[str, list[tuple[str, list[Box]]]] = defaultdict(list)
    for finding in sorted(annotations, key=lambda f: (f.image.image_id, f.label)):
        per_reader: dict[str, list[Box]] = defaultdict(list)
        for box, reader in zip(finding.boxes, finding.readers or ("reader",) * len(finding.boxes)):
            per_reader[reader].append(box)
        boxes = fuse_readers(per_reader, iou_thr=config.wbf_iou, min_readers=config.min_readers)
        if boxes:
            fused[finding.image.image_id].append((finding.label, boxes))
        else:
            rejects.append(Reject(source="vindr-cxr", row=finding.image.image_id, reason="fewer_readers_than_required",
                                  detail=f"{finding.label}: no box agreed by {config.min_readers} readers"))
    rows = []
    for image in sorted(images, key=lambda i: i.image_id):
        classes = fused.get(image.image_id, [])
        if "abnormality_grounding" in tasks and classes:
            key = f"abnormality_grounding/vindr-cxr/{image.image_id}"
            factor = config.replication_for("abnormality_grounding", "vindr-cxr", split_of(image))
            instances = []
            for index, (label, boxes) in enumerate(classes):
                ikey = f"{key}#{index}"
                instances.append({"id": ikey, "label": label, "boxes": _box_rows(boxes), "replication": factor,
                                  "conversations": _turns(words.pick("finding_request", ikey, finding=label.lower()),
                                                          words.pick("finding_answer", ikey, finding=label.lower(),
                                                                     boxes=boxes_text(boxes)))})
            rows.append(PlannedRow("abnormality_grounding", "vindr-cxr", image, tuple(instances), read_image="dicom"))
        if "abnormality_detection" in tasks and (classes or image.image_id in no_finding):
            key = f"abnormality_detection/vindr-cxr/{image.image_id}"
            if classes:
                answer = "; ".join(f"{label}: {boxes_text(boxes)}" for label, boxes in classes)
                boxes = [b for _, bs in classes for b in bs]
            else:
                answer, boxes = words.pick("detection_none", key), []
            rows.append(PlannedRow("abnormality_detection", "vindr-cxr", image, (
                {"id": f"{key}#0", "conversations": _turns(words.pick("detection_request", key), answer),
                 "label": None, "boxes": _box_rows(boxes),
                 "replication": config.replication_for("abnormality_detection", "vindr-cxr", split_of(image))},),
                read_image="dicom"))
    return rows


def phrase_rows(source: str, findings: Iterable[GroundedFinding], words: Words, config: RadVLMConfig,
                read_image: str = "file") -> list[PlannedRow]:
    by_image: dict[str, list[GroundedFinding]] = defaultdict(list)
    for finding in findings:
        if finding.boxes and finding.phrase and finding.abnormal:
            by_image[finding.image.image_id].append(finding)
    rows = []
    for image_id in sorted(by_image):
        key = f"phrase_grounding/{source}/{image_id}"
        factor = config.replication_for("phrase_grounding", source, split_of(by_image[image_id][0].image))
        instances = []
        for index, finding in enumerate(sorted(by_image[image_id], key=lambda f: (f.phrase or "", f.label))):
            ikey = f"{key}#{index}"
            instances.append({"id": ikey, "label": finding.phrase, "boxes": _box_rows(finding.boxes),
                              "replication": factor,
                              "conversations": _turns(words.pick("phrase_request", ikey, phrase=finding.phrase),
                                                      words.pick("phrase_answer", ikey,
                                                                 boxes=boxes_text(list(finding.boxes))))})
        rows.append(PlannedRow("phrase_grounding", source, by_image[image_id][0].image, tuple(instances),
                               read_image=read_image))
    return rows


def _seeded_take(rows: list[PlannedRow], n: int | None, seed: int, purpose: str) -> list[PlannedRow]:
    """A seeded choice of n rows (all when n is None), independent of input order."""
    ranked = sorted(rows, key=lambda r: rank_key(seed, CORPUS, r.image.image_id, purpose))
    return ranked if n is None else ranked[:n]


def conversation_rows(scans: dict[str, Any], config: RadVLMConfig,
                      frontal: FrontalFilter | None = None) -> list[PlannedRow]:
    """Images a conversation will be written for (their turns come from the LLM stage).

    Standard: a seeded `conversations` of MIMIC-CXR's frontal train images with a report and
    labels, and `conversation_test` of its test images. Grounded: every MS-CXR (non-test) and
    PadChest-GR (train) image with grounded phrases, and `grounded_test` of MS-CXR's test images
    (the published test set draws on MS-CXR only). MS-CXR images take their report and labels
    from MIMIC-CXR; PadChest-GR's report is its grounded sentences."""
    if not config.conversations:
        return []
    mimic = scans.get("mimic-cxr")
    frontal = frontal or FrontalFilter()
    rows: list[PlannedRow] = []
    if mimic is not None:
        pool: dict[str, list[PlannedRow]] = {"train": [], "test": []}
        for image in mimic.images:
            if not frontal("mimic-cxr", image):
                continue
            report = mimic.reports.get(image.study_id) if mimic.reports else None
            states = mimic.labels.get(image.study_id)
            if report is None or not report.text or states is None:
                continue
            found, problem = positive_labels(states, config.uncertain)
            if problem:
                continue
            pool["test" if image.split == "test" else "train"].append(PlannedRow(
                "conversation", "mimic-cxr", image, (), report=report.text,
                report_section="findings" if report.findings else "impression", positive_labels=tuple(found)))
        rows += _seeded_take(pool["train"], config.conversations, config.seed, "conversation")
        rows += _seeded_take(pool["test"], config.conversation_test, config.seed, "conversation_test")
    for source in CONVERSATION_SOURCES["conversation_grounded"]:
        scan = scans.get(source)
        if scan is None:
            continue
        by_image: dict[str, list[GroundedFinding]] = defaultdict(list)
        for finding in scan.findings:
            if finding.boxes and finding.phrase:
                by_image[finding.image.image_id].append(finding)
        pool = {"train": [], "test": []}
        for image_id, findings in sorted(by_image.items()):
            image = findings[0].image
            findings.sort(key=lambda f: (f.phrase or "", f.label))
            phrases = tuple((f.phrase or f.label, tuple(f.boxes)) for f in findings)
            report, labels = " ".join(p for p, _ in phrases), ()
            if source == "ms-cxr" and mimic is not None:
                study = mimic.reports.get(image.study_id) if mimic.reports else None
                states = mimic.labels.get(image.study_id)
                report = (study.text if study is not None and study.text else report)
                labels = tuple(positive_labels(states, config.uncertain)[0]) if states else ()
            split = "test" if image.split == "test" else "train"
            if split == "test" and source != "ms-cxr":
                continue  # PadChest-GR test images are not part of the published grounded test set
            pool[split].append(PlannedRow("conversation_grounded", source, image, (), report=report,
                                          positive_labels=labels, phrases=phrases,
                                          read_image="padchest-zip" if source == "padchest-gr" else "file"))
        rows += pool["train"]
        if source == "ms-cxr":
            rows += _seeded_take(pool["test"], config.grounded_test, config.seed, "grounded_test")
    if not rows:
        raise RadVLMConfigError("--conversations needs images with a report and labels: --mimic-cxr with "
                                "--mimic-cxr-reports (or grounded phrases: --ms-cxr, --padchest-gr)")
    return rows


def asked_conversations(config: RadVLMConfig, present: set[str]) -> list[str]:
    """The conversation configs a build with --conversations N writes, given its sources."""
    if not config.conversations:
        return []
    return [task for task in CONVERSATION_TASKS if present & set(CONVERSATION_SOURCES[task])]


def enforce_patient_splits(rows: list[PlannedRow], rejects: list[Reject]) -> list[PlannedRow]:
    """No patient in both train and test of any config, across every task and source: a patient
    with any test row keeps only test rows (the test sets stay as published); their train rows
    are rejected with the reason and counted."""
    in_test = {row.patient for row in rows if row.split == "test"}
    kept = []
    for row in rows:
        if row.split == "train" and row.patient in in_test:
            rejects.append(Reject(source=row.source, row=row.image.image_id, reason="patient_in_test_split",
                                  detail=f"{row.task}: patient {row.patient} has test images in another task or source"))
        else:
            kept.append(row)
    return kept


# --------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class ChunkPayload:
    task: str
    rows: tuple[PlannedRow, ...]
    shard: str
    max_side: int | None
    templates: tuple[str, str]  # id, content hash


class ImageUnreadable(ValueError):
    pass


def _crc_ok(data: bytes) -> bool:
    try:
        check_image(data, "crc")
        return True
    except ImageCheckError:
        return False


def read_row_image(row: PlannedRow, max_side: int | None, out: Path
                   ) -> tuple[bytes, str | None, source_index.Entry | None]:
    """The image's bytes as stored in the corpus (JPEG/PNG as read; DICOM converted to PNG once
    per build, even when two configs hold the image: kept under `out`'s build state), how it was
    converted, if it was, and the source file's index entry (None inside a zip). A plain file's
    entry comes from the same open as its bytes, its sha256 being that of the bytes stored."""
    path = Path(row.image.path)
    try:
        if row.read_image == "dicom" and path.suffix.lower() in (".dicom", ".dcm"):
            from radcorpora.sources.dicom import read_dicom_image

            how = f"dicom->png{'' if max_side is None else f' max_side={max_side}'}"
            png = derived_once(out, path, how, lambda: read_dicom_image(path, max_side=max_side).png, _crc_ok)
            return png, how, source_index.entry_for(path, None)
        entry = None
        if "::" in row.image.path:  # a member of PadChest-GR's split zip
            from radcorpora.sources.padchest_gr import read_image_bytes

            data = read_image_bytes(row.image)
        else:
            data, entry = source_index.read_file(path)
        check_image(data, "crc")
        return data, None, entry
    except (OSError, ImageCheckError, ValueError) as exc:
        raise ImageUnreadable(f"{row.image.path}: {exc}") from exc


def record_row(row: PlannedRow, data: bytes, converted: str | None, templates: tuple[str, str],
               sha256: str | None = None) -> dict[str, Any]:
    """`sha256`: of `data`, when the reader already has it."""
    image = row.image
    name = Path(image.path.split("::")[-1]).name
    return {
        "image": {"bytes": data, "path": str(Path(name).with_suffix(".png")) if converted else name},
        "id": row.key, "task": row.task, "source": row.source, "view": image.view, "sex": image.sex,
        "instances": list(row.instances), "report": row.report, "report_section": row.report_section,
        "positive_labels": list(row.positive_labels),
        "lineage": {"source_dataset": row.source, "source_id": image.image_id, "patient_id": row.patient,
                    "study_id": image.study_id, "source_split": image.split, "licence_class": image.licence_class,
                    "image_sha256": sha256 or hashlib.sha256(data).hexdigest(), "image_converted": converted,
                    "prompt_ids": [templates[0], *(p[0] for p in row.prompts)],
                    "prompt_hashes": [templates[1], *(p[1] for p in row.prompts)], "models": list(row.models)},
    }


def _file_size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def build_chunk(spec: ChunkSpec, out: Path) -> ChunkResult:
    """Read each image of the chunk once, make its row, check the batch column-wise, write the shard."""
    payload: ChunkPayload = spec.payload
    result = ChunkResult(chunk_id=spec.chunk_id)
    rows: list[dict[str, Any]] = []
    counts: Counter = Counter()
    for row in payload.rows:
        try:
            data, converted, entry = read_row_image(row, payload.max_side, out)
        except ImageUnreadable as exc:
            result.rejects.append(Reject(source=row.source, row=row.image.path, reason="image_does_not_decode",
                                         detail=str(exc)))
            continue
        if entry is not None:
            result.sources[row.image.path] = entry
        rows.append(record_row(row, data, converted, payload.templates, None if converted else entry and entry[2]))
        counts["source_image_bytes"] += len(data) if not converted else _file_size(row.image.path)
        counts[f"rows_{row.task}"] += 1
        counts[f"instances_{row.task}"] += len(row.instances)
    table = pa.Table.from_pylist(rows, schema=arrow_schema_for(RadVLMRecord))
    violations, total = check_table(table, RadVLMRecord)
    result.checked["record_schema"] = table.num_rows
    if total:
        result.violations["record_schema"] = [f"{payload.shard} row {v.row}: {v.field}: {v.message}" for v in violations]
        result.violation_counts["record_schema"] = total
    broken = check_rows(payload.task, table) if table.num_rows else {}
    for rule in ("box_order", "conversation_structure"):
        result.checked[rule] = table.num_rows
        if broken.get(rule):
            result.violations[rule] = [f"{payload.shard} row {r}: breaks {rule}" for r in broken[rule][:5]]
            result.violation_counts[rule] = len(broken[rule])
    writer = ShardWriter(out / payload.shard, RadVLMRecord)
    try:
        writer.write_table(table)
        result.shards[payload.shard] = ShardInfo(rows=table.num_rows, sha256=writer.close())
    except BaseException:
        writer.abort()
        raise
    result.counts = dict(counts)
    return result


def _content_digest(rows: Sequence[PlannedRow]) -> str:
    """What LLM stages wrote into a chunk's rows: part of its id, so a rerun whose answers changed
    (a failed request answered now, a person's decision) never reuses the chunk written before."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row.key, row.instances, row.report], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def plan_chunks(rows: list[PlannedRow], config: RadVLMConfig, templates: TemplateSet) -> list[ChunkSpec]:
    chunks = []
    by_config: dict[tuple[str, str], list[PlannedRow]] = defaultdict(list)
    for row in rows:
        by_config[(row.task, row.split)].append(row)
    for (task, split), group in sorted(by_config.items()):
        group.sort(key=lambda r: r.key)
        pieces = [group[i:i + config.images_per_shard] for i in range(0, len(group), config.images_per_shard)]
        for index, piece in enumerate(pieces):
            shard = shard_relpath(task, split, index, len(pieces))
            payload = ChunkPayload(task, tuple(piece), shard, config.max_side, (templates.id, templates.content_hash))
            chunk_id = f"{task}-{split}-{index:05d}"
            if task in LLM_TASKS and config.prior_removal != "off" or task in CONVERSATION_TASKS:
                chunk_id += f"-{_content_digest(piece)}"
            chunks.append(ChunkSpec(chunk_id, len(piece), payload))
    return chunks


# --------------------------------------------------------------------------- the corpus' stages


@dataclass
class RadVLMPlan:
    rows: list[PlannedRow]
    chunks: list[ChunkSpec]
    rejects: list[Reject]
    counts: Counter
    warnings: list[str]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    given: dict[str, str] = field(default_factory=dict)  # source option -> folder, for a rebuild (adjudication)
    excluded: dict[str, int] = field(default_factory=dict)  # "<source>/view_<view>" -> images left out
    configs_asked: list[str] = field(default_factory=list)  # each must end with rows (unless --allow-empty)


def tasks_for(config: RadVLMConfig, present: set[str]) -> list[str]:
    """The tasks to build: the ones asked for (each needs one of its sources), else every task
    the given sources allow."""
    if config.tasks:
        unknown = [t for t in config.tasks if t not in TASKS]
        if unknown:
            raise RadVLMConfigError(f"unknown task(s) {', '.join(unknown)} (tasks: {', '.join(TASKS)})")
        for task in config.tasks:
            if not present & set(TASK_SOURCES[task]):
                needed = " or ".join(SOURCE_FLAGS[s] for s in TASK_SOURCES[task])
                raise RadVLMConfigError(f"task {task} needs {needed}")
        return [t for t in TASKS if t in config.tasks]
    chosen = [t for t in TASKS if present & set(TASK_SOURCES[t])]
    if not chosen:
        raise RadVLMConfigError("give at least one source: " + ", ".join(SOURCE_FLAGS.values()))
    return chosen


def licence_class(config: RadVLMConfig, sources: dict[str, Path]) -> str:
    keys = {k.replace("_", "-") for k in sources}
    if keys & CREDENTIALED_SOURCES or "mimic-cxr-reports" in keys:
        return "credentialed"
    return "restricted"


def fingerprint_rows(rows: list[PlannedRow]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.key):
        digest.update(json.dumps([row.key, row.image.path, row.image.split, row.instances, row.report,
                                  row.positive_labels], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]




def prepare(sources: dict[str, Path], config: RadVLMConfig, log) -> Prepared:
    from radcorpora.builders.radvlm_sources import read_sources

    templates = load_templates(config)
    words = Words(templates, config.seed)
    read = read_sources(sources, config, log)
    tasks = tasks_for(config, set(read.present))
    rejects: list[Reject] = list(read.rejects)
    rows: list[PlannedRow] = []
    frontal = FrontalFilter()
    for task in tasks:
        before = len(rows)
        rows += read.rows_for(task, words, config, set(tasks), rejects, frontal)
        log(f"{task}: {len(rows) - before} rows")
    conversations = conversation_rows(read.scans, config, frontal)
    if conversations:
        log(f"conversations: {len(conversations)} images to write conversations for")
    rows = enforce_patient_splits(rows + conversations, rejects)
    fingerprint: dict[str, Any] = {"templates": f"{templates.id}@{templates.content_hash}",
                                   "sources": {"present": sorted(read.present), "rows": fingerprint_rows(rows)}}
    if config.uses_llm or config.verifiers:
        fingerprint["prompts"] = {p.id: p.content_hash for p in load_prompts().values()}
    plan = RadVLMPlan(rows, [], rejects, Counter(read.counts), list(read.warnings), read.summary,
                      given={k: str(Path(v).resolve()) for k, v in sources.items() if v}, excluded=frontal.counts(),
                      configs_asked=tasks + asked_conversations(config, set(read.present)))
    return Prepared(fingerprint=fingerprint, plan=plan)


def run(prepared: Prepared, config: RadVLMConfig, ctx: BuildContext) -> StageOutput:
    from radcorpora.store import atomic

    plan: RadVLMPlan = prepared.plan
    decisions = dict(sorted(config.decisions.items()))
    if decisions:
        atomic.write_jsonl(ctx.out / DECISIONS_FILE, [{"id": k, "decision": v} for k, v in decisions.items()])
    session = ctx.llm_session(offline_responders()) if config.uses_llm else None
    try:
        outcome = run_llm_stages(plan.rows, config, session, decisions)
    finally:
        if session is not None:
            session.close()
    templates = load_templates(config)
    results = ctx.run_chunks(plan_chunks(outcome.rows, config, templates), build_chunk, CORPUS)
    warnings = list(plan.warnings)
    built = {r.task for r in outcome.rows}
    if "report_generation" in built and config.prior_removal == "off":
        warnings.append("report_generation holds the extracted report text: references to prior studies are "
                        "still in it (--prior-removal off)")
    files: list[str] = []
    llm: dict[str, Any] = {"prior_removal": config.prior_removal}
    if session is not None:
        atomic.write_jsonl(ctx.out / FAILURES_FILE, session.ledger.entries)
        files.append(FAILURES_FILE)
        if session.ledger.entries:
            warnings.append(f"{len(session.ledger.entries)} LLM request(s) failed; rerun the same command to retry them")
        llm.update({"generator": session.model_id(config.llm), "verifiers": [session.model_id(v) for v in config.verifiers],
                    "stages": {s.name: s.description for s in STAGES
                               if (s.name != "prior_removal" or config.prior_removal == "llm")
                               and (s.name == "prior_removal" or config.conversations)
                               and (s.name != "conversation_verify" or config.verifiers)},
                    **session.summary(), "verification": outcome.agreement,
                    "adjudication_pending": len(outcome.queued), "adjudication_decisions": len(decisions),
                    "cache_path": str(session.cache.path)})
    if config.verifiers:
        atomic.write_jsonl(ctx.out / QUEUE_FILE, [q.model_dump(mode="json") for q in outcome.queued])
        files.append(QUEUE_FILE)
        if outcome.queued:
            warnings.append(f"{len(outcome.queued)} conversation(s) await adjudication in {QUEUE_FILE}")
    if decisions:
        files.append(DECISIONS_FILE)
    prompts = {templates.id: templates.content_hash}
    if config.uses_llm or config.prior_removal == "llm":
        prompts.update({p.id: p.content_hash for p in load_prompts().values()})
    return StageOutput(
        chunks=results, rejects=plan.rejects + outcome.rejects, counts=plan.counts + outcome.counts, warnings=warnings,
        files=files, excluded=plan.excluded, configs_asked=plan.configs_asked,
        manifest={"source": plan.sources, "prompts": prompts, "llm": llm, "rebuild": {"sources": plan.given},
                  "replication": {f"{t}/{s}": config.replication_for(t, s, "train")
                                  for t, sources in (*TASK_SOURCES.items(), *CONVERSATION_SOURCES.items()) for s in sources},
                  "tasks": sorted(built)})


def estimate(sources: dict[str, Path], config: RadVLMConfig, log) -> tuple[list[Any], dict[str, Any]]:
    """(stage, model, requests) per stage a build would send, and the rows it covers; nothing is sent."""
    prepared = prepare(sources, config, log)
    rows = prepared.plan.rows
    info: dict[str, Any] = {"samples": len(rows)}
    if not config.uses_llm:
        info["note"] = "no LLM stage would run: give --conversations N with --llm, or --prior-removal llm"
    return estimate_requests(rows, config), info
