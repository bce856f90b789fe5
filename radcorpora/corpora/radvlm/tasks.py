"""radvlm's task rows, made from typed source records (CxrImage, StudyReport, GroundedFinding,
label states) before any image is read: seeded wording, fused VinDr boxes, the frontal filter,
conversation draws and patient split integrity."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from radcorpora.corpora.radvlm.records import (
    CONVERSATION_SOURCES,
    CONVERSATION_TASKS,
    PATIENT_NAMESPACE,
)
from radcorpora.corpora.radvlm.settings import CORPUS, VIEW_WORDS, RadVLMConfig, RadVLMConfigError
from radcorpora.ops.boxes import boxes_text, fuse_readers
from radcorpora.ops.sampling import rank_key, row_index
from radcorpora.prompts.loader import TemplateSet
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import Reject
from radcorpora.schemas.cxr import CHEXPERT_LABELS, CxrImage, GroundedFinding

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


def rows_for(read: Any, task: str, words: Words, config: RadVLMConfig, tasks: set[str], rejects: list[Reject],
             frontal: FrontalFilter | None = None) -> list[PlannedRow]:
    """The rows of one task from what the sources yielded (`read`: sources.SourcesRead)."""
    rows: list[PlannedRow] = []
    if task == "report_generation":
        if "mimic-cxr" in read.scans and read.scans["mimic-cxr"].reports:
            scan = read.scans["mimic-cxr"]
            rows += report_rows("mimic-cxr", scan.images, lambda i: scan.reports.get(i.study_id), words, config,
                                   rejects, frontal=frontal)
        if "chexpert-plus" in read.scans:
            scan = read.scans["chexpert-plus"]
            rows += report_rows("chexpert-plus", scan.images, lambda i: scan.reports.get(i.image_id), words,
                                   config, rejects, frontal=frontal)
    elif task == "abnormality_classification":
        if "mimic-cxr" in read.scans:
            scan = read.scans["mimic-cxr"]
            rows += classification_rows("mimic-cxr", scan.images, lambda i: scan.labels.get(i.study_id), words,
                                           config, rejects, frontal=frontal)
        if "chexpert" in read.scans:
            scan = read.scans["chexpert"]
            rows += classification_rows("chexpert", scan.images, lambda i: scan.labels.get(i.image_id), words,
                                           config, rejects, frontal=frontal)
    elif task == "anatomical_grounding" and "chest-imagenome" in read.scans:
        rows += anatomical_rows(read.scans["chest-imagenome"].findings, words, config)
    elif task in ("abnormality_grounding", "abnormality_detection") and "vindr-cxr" in read.scans:
        if task == "abnormality_grounding" or "abnormality_grounding" not in tasks:
            scan = read.scans["vindr-cxr"]
            rows += vindr_rows(scan.annotations, scan.images, set(scan.no_finding), words, config,
                                  tasks & {"abnormality_grounding", "abnormality_detection"}, rejects)
    elif task == "phrase_grounding":
        if "ms-cxr" in read.scans:
            rows += phrase_rows("ms-cxr", read.scans["ms-cxr"].findings, words, config)
        if "padchest-gr" in read.scans:
            rows += phrase_rows("padchest-gr", read.scans["padchest-gr"].findings, words, config,
                                   read_image="padchest-zip")
    return rows
