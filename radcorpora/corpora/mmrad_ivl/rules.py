"""Corpus checks of an mmrad-ivl build (per record: a build holds tens of thousands of rows)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from radcorpora.corpora.mmrad_ivl.records import CONFIG_RECORDS, MmradIvlRecord
from radcorpora.ops.image_check import ImageCheck
from radcorpora.schemas.regions import cxr_region_map
from radcorpora.spec.report import ValidationReport
from radcorpora.spec.rules import CorpusRules
from radcorpora.validators.run import DESCRIPTIONS
from radcorpora.validators.structure import OBJECT_CHECKS, ImageDecodeCheck, iter_records

RULES = {
    "crop_pixels_match": "each crop is exactly the full image's pixels inside its step's crop_pixels",
    "regions_in_groups": "every step's regions are regions of the mapping, all of the step's group, groups in order",
    "split_by_patient": "no patient in two splits; benchmark rows come from MIMIC's train split",
    "verification_recorded": "with auditors configured, every trace passed the cross-audit or was adjudicated",
    "not_empty": "the default config has training rows",
}
GROUP_ORDER = ("mediastinal", "lung", "bone", "other")


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def validate_mmrad_ivl(build: Path, report: ValidationReport, manifest: dict, image_check: ImageCheck = "full",
                       deep: bool = False) -> ValidationReport:
    config = (manifest.get("fingerprint") or {}).get("config") or {}
    audited = bool(config.get("auditors"))
    mapping = cxr_region_map()
    decode = ImageDecodeCheck(report, image_check)
    crops = report.check("crop_pixels_match", RULES["crop_pixels_match"])
    regions = report.check("regions_in_groups", RULES["regions_in_groups"])
    patients = report.check("split_by_patient", RULES["split_by_patient"])
    verification = report.check("verification_recorded", RULES["verification_recorded"])
    split_of: dict[str, str] = {}
    for _config, split, where, record in iter_records(build, CONFIG_RECORDS, report):
        if not isinstance(record, MmradIvlRecord):
            continue
        hashes = record.lineage.image_sha256.split(",")
        if len(hashes) != len(record.images):
            decode.check.fail(f"{where}: {len(record.images)} images but {len(hashes)} lineage hashes")
        for image, expected in zip(record.images, hashes):
            decode(image.bytes, expected, where)
        full = _pixels(record.images[0].bytes)
        for step in record.steps:
            left, top, right, bottom = step.crop_pixels
            try:
                cut = _pixels(record.images[step.image].bytes)
            except OSError as exc:
                crops.fail(f"{where}: crop of {step.group} does not decode ({exc})")
                continue
            crops.expect(cut.shape[:2] == (bottom - top, right - left) and np.array_equal(cut, full[top:bottom, left:right]),
                         f"{where}: crop of {step.group} is not the image's pixels in {step.crop_pixels}")
            found = [mapping.find(r) for r in step.regions]
            regions.expect(all(f is not None and f.group == step.group for f in found),
                           f"{where}: step {step.group} lists regions {step.regions} outside the group")
        order = [GROUP_ORDER.index(s.group) for s in record.steps]
        regions.expect(order == sorted(set(order)), f"{where}: groups out of anatomical order or repeated")
        previous = split_of.setdefault(record.subject_id, split)
        patients.expect(previous == split, f"{where}: patient {record.subject_id} in {previous} and {split}")
        if split == "benchmark":
            patients.expect(record.lineage.source_split == "train", f"{where}: a benchmark row from MIMIC's "
                                                                    f"{record.lineage.source_split} split")
        if audited:
            verification.expect(record.llm.verification in ("passed", "adjudicated"),
                                f"{where}: verification {record.llm.verification!r}")
    report.check("not_empty", RULES["not_empty"]).expect(
        bool(manifest.get("splits", {}).get("default", {}).get("train")), "default/train is empty: nothing to train on")
    return report


CORPUS_RULES = CorpusRules({**RULES, "images_decode": DESCRIPTIONS["images_decode"],
                            "record_objects": OBJECT_CHECKS["record_objects"]}, validate_mmrad_ivl)
