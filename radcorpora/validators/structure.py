"""Checks every corpus shares: card configs vs files, shard sets and schemas, record re-parse
(deep), ids and counts, images, and `<image>` placeholders against the images of any record
with an `images` list and conversation turns."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from radcorpora.ops.image_check import ImageCheck, ImageCheckError, check_image
from radcorpora.schemas.features import arrow_schema_for
from radcorpora.schemas.interleaved import NEAR_PLACEHOLDER, placeholder_rows
from radcorpora.spec.report import ValidationReport
from radcorpora.store.folder import SHARD_RE, config_shards, iter_rows, read_card_yaml, shard_footer, shard_schema


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
                    schema = shard_schema(path)
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


# --------------------------------------------------------------------------- <image> placeholders

PLACEHOLDER_RULE = "placeholders_match_images"
PLACEHOLDER_DESCRIPTION = ("every `<image>` placeholder has its image: as many placeholders, in turn order, as the "
                           "row's `images` list holds, in human turns only, none misspelt, none in an answer")


def _is_turn_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= {"from", "value"}


@dataclass(frozen=True)
class PlaceholderColumns:
    """Where a config's placeholders and images are: the `images` list, the one top-level list of
    turns they are counted in (`conversations`, a preference `prompt`), and single-turn columns
    beside it (a pair's `chosen` / `rejected`) that must hold none."""

    images: str
    turns: str
    answers: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return [self.turns, *self.answers]


def placeholder_columns(schema: pa.Schema) -> PlaceholderColumns | None:
    """The placeholder rule's columns when `schema` has an `images` list of images and exactly one
    top-level list of conversation turns (decided by the Arrow schema, so any corpus whose record
    has that shape gets the rule); None otherwise (one `image` per row, turns nested in instances)."""
    if "images" not in schema.names:
        return None
    images = schema.field("images").type
    if not (pa.types.is_list(images) and pa.types.is_struct(images.value_type)
            and {f.name for f in images.value_type} >= {"bytes", "path"}):
        return None
    turns = [f.name for f in schema if pa.types.is_list(f.type) and _is_turn_struct(f.type.value_type)]
    if len(turns) != 1:
        return None
    answers = tuple(f.name for f in schema if _is_turn_struct(f.type))
    return PlaceholderColumns("images", turns[0], answers)


def placeholder_problems(table: pa.Table, where: PlaceholderColumns) -> dict[int, list[str]]:
    """{row: [problem, ...]} of a table holding `where`'s columns, column-wise: the schema's own
    `placeholder_rows` on the turns, and any placeholder (or near-miss spelling) in an answer."""
    found: dict[int, list[str]] = {}
    for problem, rows in placeholder_rows(table, images=where.images, turns=where.turns).items():
        for row in rows:
            found.setdefault(row, []).append(problem)
    for name in where.answers:
        column = table.column(name)
        values = pc.struct_field(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column, "value")
        for row in np.flatnonzero(np.asarray(pc.count_substring_regex(values, NEAR_PLACEHOLDER).fill_null(0)) > 0):
            found.setdefault(int(row), []).append(f"placeholder_in_{name}")
    return dict(sorted(found.items()))


def images_length_leaf(path: Path) -> str | None:
    """The Parquet leaf `images.<list>.<element>.path` of a shard: read alone, it gives every row's
    image count without the image bytes."""
    schema = shard_footer(path).schema
    return next((schema.column(i).path for i in range(len(schema))
                 if schema.column(i).path.startswith("images.") and schema.column(i).path.endswith(".path")), None)
