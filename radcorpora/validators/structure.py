"""Checks every corpus shares: card configs vs files, shard sets and schemas, record re-parse
(deep), ids and counts, images."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from radcorpora.ops.image_check import ImageCheck, ImageCheckError, check_image
from radcorpora.schemas.features import arrow_schema_for
from radcorpora.store.folder import SHARD_RE, config_shards, iter_rows, read_card_yaml
from radcorpora.validators.report import ValidationReport


def check_layout(build: Path, records: dict[str, type[BaseModel]], report: ValidationReport,
                 card: dict[str, Any] | None = None) -> None:
    """Card configs vs files, shard naming and completeness, Parquet schemas vs record models.
    `card` is the card's YAML when it is not on disk yet (a build validating itself)."""
    card = read_card_yaml(build) if card is None else card
    configs = {c["config_name"]: c for c in card.get("configs", [])}
    check = report.check("card_configs", "every config in the card exists on disk with the declared splits")
    for name in records:
        on_disk = config_shards(build, name)
        if name not in configs:
            check.expect(not on_disk, f"config {name!r} has shards but is not in the card")
            continue
        declared = {d["split"] for d in configs[name].get("data_files", [])}
        check.expect(declared == set(on_disk), f"{name}: card splits {sorted(declared)} != files {sorted(on_disk)}")
    check.expect(set(configs) <= set(records), f"card declares unknown configs {sorted(set(configs) - set(records))}")

    shards_check = report.check("shard_sets", "shards named <split>-NNNNN-of-NNNNN.parquet, none missing")
    schema_check = report.check("parquet_schema", "every shard has the schema derived from the record model")
    for name, model in records.items():
        expected = arrow_schema_for(model)
        for split, paths in config_shards(build, name).items():
            totals = {int(SHARD_RE.match(p.name)["total"]) for p in paths}
            indices = sorted(int(SHARD_RE.match(p.name)["index"]) for p in paths)
            shards_check.expect(len(totals) == 1 and indices == list(range(next(iter(totals)))),
                                f"{name}/{split}: shard set incomplete or inconsistent: {[p.name for p in paths]}")
            for path in paths:
                try:
                    schema = pq.read_schema(path)
                except Exception as exc:  # truncated / not Parquet: a finding naming the shard
                    schema_check.fail(f"{path.relative_to(build)}: not a readable Parquet shard ({exc})")
                    continue
                schema_check.expect(schema.remove_metadata().equals(expected.remove_metadata()),
                                    f"{path.relative_to(build)}: schema differs from {model.__name__}")


def validate_record(model: type[BaseModel], row: dict[str, Any], where: str, report: ValidationReport,
                    check_name: str = "record_schema", count: bool = True) -> BaseModel | None:
    """`row` parsed as `model`, or None with the first problem reported under `check_name`
    (`count=False`: parse without counting, for a pass that was already counted)."""
    try:
        record = model.model_validate(row)
    except ValidationError as exc:
        if count:
            first = exc.errors()[0]
            report.check(check_name, OBJECT_CHECKS.get(check_name, check_name)).expect(
                False, f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}")
        return None
    if count:
        report.check(check_name, OBJECT_CHECKS.get(check_name, check_name)).checked += 1
    return record


OBJECT_CHECKS = {
    "record_schema": "every row validates against its record model",
    "record_objects": "every row parses as its pydantic record object (the object-level re-parse)",
}


def iter_records(build: Path, records: dict[str, type[BaseModel]],
                 report: ValidationReport) -> Iterator[tuple[str, str, str, BaseModel]]:
    """(config, split, where, record) for every row of every shard that parses as its record
    model: the object-level view for `--deep` and for rules that need whole records. Rows that
    do not parse are counted under `record_objects`, once per report however many rules iterate
    them; ids and row counts are the shard pass's checks (`run._merge`), not repeated here."""
    count = not report._records_parsed
    for config, model in records.items():
        for split, paths in config_shards(build, config).items():
            for path in paths:
                rel = path.relative_to(build)
                for row_number, row in iter_rows(path):
                    where = f"{rel} row {row_number}"
                    record = validate_record(model, row, where, report, "record_objects", count=count)
                    if record is not None:
                        yield config, split, where, record
    report._records_parsed = True


class ImageDecodeCheck:
    """Checks each distinct image once (by content hash) at the given level, and its lineage hash."""

    def __init__(self, report: ValidationReport, level: ImageCheck = "full"):
        self.level = level
        self.check = report.check("images_decode", f"every image is readable ({level} check) and matches its lineage hash")
        self.seen: set[str] = set()

    def __call__(self, data: bytes, expected_sha256: str | None, where: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None:
            self.check.expect(digest == expected_sha256, f"{where}: image bytes do not match lineage.image_sha256")
        if digest in self.seen:
            return digest
        self.seen.add(digest)
        try:
            check_image(data, self.level)
            self.check.checked += 1
        except ImageCheckError as exc:
            self.check.expect(False, f"{where}: image does not decode ({exc})")
        return digest
