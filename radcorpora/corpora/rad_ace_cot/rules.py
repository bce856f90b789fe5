"""Record and corpus checks of a rad-ace-cot build."""

from __future__ import annotations

from pathlib import Path

from radcorpora.corpora.rad_ace_cot.records import CONFIG_RECORDS, CotEvalRecord, CotRecord
from radcorpora.ops.cot import CotBounds, cot_problems, split_cot
from radcorpora.ops.image_check import ImageCheck
from radcorpora.spec.report import ValidationReport
from radcorpora.spec.rules import CorpusRules
from radcorpora.validators.run import DESCRIPTIONS
from radcorpora.validators.structure import (
    OBJECT_CHECKS,
    ImageDecodeCheck,
    iter_records,
)

RULES = {
    "cot_format": "cot_output is exactly <think>...</think><answer>...</answer>, matching think/answer",
    "cot_quality": "length bounds hold and no caption/description/report language leaked",
    "verification_recorded": "with verifiers configured, every sample passed or was adjudicated",
    "split_disjoint": "no source sample in two splits; no eval image among the training images",
    "not_empty": "the default config has training rows",
}


def validate_rad_ace_cot(build: Path, report: ValidationReport, manifest: dict, image_check: ImageCheck = "full",
                         deep: bool = False) -> ValidationReport:
    """Corpus rules, per record (the corpus is LLM-sized: thousands of rows, not millions)."""
    config = (manifest.get("fingerprint") or {}).get("config") or {}
    bounds = CotBounds.model_validate(config.get("bounds") or {})
    verified = bool(config.get("verifiers"))
    decode = ImageDecodeCheck(report, image_check)
    fmt = report.check("cot_format", RULES["cot_format"])
    quality = report.check("cot_quality", RULES["cot_quality"])
    verification = report.check("verification_recorded", RULES["verification_recorded"])
    leak = report.check("split_disjoint", RULES["split_disjoint"])
    split_of: dict[str, str] = {}
    train_images: set[str] = set()
    eval_images: dict[str, str] = {}

    for _config, split, where, record in iter_records(build, CONFIG_RECORDS, report):
        if isinstance(record, CotRecord):
            hashes = record.lineage.image_sha256.split(",")
            if len(hashes) != len(record.images):
                decode.check.fail(f"{where}: {len(record.images)} images but {len(hashes)} lineage hashes")
            for image, expected in zip(record.images, hashes):
                train_images.add(decode(image.bytes, expected, where))
            parts = split_cot(record.cot_output)
            fmt.expect(parts == (record.think, record.answer),
                       f"{where}: cot_output is not <think>think</think><answer>answer</answer>")
            problems = cot_problems(record.think, record.answer, bounds)
            quality.expect(not problems, f"{where}: {'; '.join(problems)}")
            if verified:
                verification.expect(record.verification in ("passed", "adjudicated"),
                                    f"{where}: verification {record.verification!r}")
            previous = split_of.setdefault(record.lineage.source_id, split)
            leak.expect(previous == split, f"{where}: {record.lineage.source_id} in {previous} and {split}")
        elif isinstance(record, CotEvalRecord):
            eval_images[decode(record.image.bytes, record.lineage.image_sha256, where)] = where
    report.check("not_empty", RULES["not_empty"]).expect(
        bool(manifest.get("splits", {}).get("default", {}).get("train")), "default/train is empty: nothing to train on")
    for digest, where in sorted(eval_images.items()):
        leak.expect(digest not in train_images, f"{where}: this VQA-RAD image is also a training image")
    report.stats.update({"distinct_images": len(decode.seen)})
    return report


# images_decode and record_objects: the shared checks this pass adds to (each record is re-read here)
CORPUS_RULES = CorpusRules({**RULES, "images_decode": DESCRIPTIONS["images_decode"], "record_objects": OBJECT_CHECKS["record_objects"]}, validate_rad_ace_cot)
