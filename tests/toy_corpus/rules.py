"""The toy corpus' corpus rule: every captions row has its labels twin."""

from __future__ import annotations

from pathlib import Path

from radcorpora.spec.report import ValidationReport
from radcorpora.spec.rules import CorpusRules
from radcorpora.store.folder import config_shards, read_columns

RULES = {"captions_have_labels": "every image with a caption also has its label question"}


def validate_toy(build: Path, report: ValidationReport, manifest: dict, **_options) -> None:
    ids = {}
    for config in ("captions", "labels"):
        ids[config] = {i for paths in config_shards(build, config).values() for p in paths
                       for i in read_columns(p, ["id"]).column("id").to_pylist()}
    check = report.check("captions_have_labels", RULES["captions_have_labels"])
    for missing in sorted(ids["captions"] - ids["labels"]):
        check.fail(f"{missing}: captioned but has no label row")
    check.checked += len(ids["captions"])


CORPUS_RULES = CorpusRules(RULES, validate_toy)
