"""Corpus checks of a ct-reasoning build (per record: only the text columns and volume references)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from radcorpora.corpora.ct_reasoning.records import (
    CONFIG_RECORDS,
    ReportThinkingRecord,
    VqaThinkingRecord,
)
from radcorpora.ops.image_check import ImageCheck
from radcorpora.spec.report import ValidationReport
from radcorpora.spec.rules import CorpusRules
from radcorpora.validators.structure import OBJECT_CHECKS, iter_records

RULES = {
    "split_by_patient": "no patient in two splits, in any config",
    "slices_decode": "every stored slice is a PNG of the volume's in-plane size, its index inside the volume",
    "narrative_has_items": "every report_thinking row merges at least one vqa_thinking question of its scan",
    "not_empty": "vqa_thinking and report_thinking have training rows",
}


def validate_ct_reasoning(build: Path, report: ValidationReport, manifest: dict, image_check: ImageCheck = "full",
                          deep: bool = False) -> ValidationReport:
    patients = report.check("split_by_patient", RULES["split_by_patient"])
    slices = report.check("slices_decode", RULES["slices_decode"])
    merged = report.check("narrative_has_items", RULES["narrative_has_items"])
    split_of: dict[tuple[str, str], str] = {}
    questions: dict[str, set[str]] = {}
    narratives: list[tuple[str, ReportThinkingRecord]] = []
    for _config, split, where, record in iter_records(build, CONFIG_RECORDS, report):
        key = (record.source, record.patient_id)
        previous = split_of.setdefault(key, split)
        patients.expect(previous == split, f"{where}: patient {record.patient_id} in {previous} and {split}")
        volume = record.volume
        for s in volume.slices:
            try:
                with Image.open(io.BytesIO(s.image.bytes)) as image:
                    image.load()
                    size = image.size
            except (OSError, ValueError) as exc:
                slices.fail(f"{where}: slice {s.index} does not decode ({exc})")
                continue
            plane = sorted(n for axis, n in enumerate(volume.shape) if axis != s.axis)
            slices.expect(sorted(size) == plane, f"{where}: slice {s.index} is {size}, the plane is {plane}")
        if isinstance(record, VqaThinkingRecord):
            questions.setdefault(f"{record.source}/{record.scan_id}", set()).add(record.question)
        elif isinstance(record, ReportThinkingRecord):
            narratives.append((where, record))
    for where, record in narratives:
        asked = questions.get(record.id, set())
        merged.expect(bool(record.questions) and set(record.questions) <= asked,
                      f"{where}: merges questions that are not vqa_thinking rows of {record.id}")
    splits = manifest.get("splits", {})
    report.check("not_empty", RULES["not_empty"]).expect(
        bool(splits.get("vqa_thinking", {}).get("train")) and bool(splits.get("report_thinking", {}).get("train")),
        "vqa_thinking/train or report_thinking/train is empty: nothing to train on")
    return report


CORPUS_RULES = CorpusRules({**RULES, "record_objects": OBJECT_CHECKS["record_objects"]}, validate_ct_reasoning)
