"""Running the checks of a build: the shared ones (structure, checksums, rows column-wise,
images, ids, counts) and the corpus' own rules, as one report.

Two entry points: `validate_finished_build` runs at the end of a build and reads nothing the
build already checked (rows were checked in the workers as they were written; their findings
come with the chunk results); `validate_build_folder` checks a folder from disk, shards in
parallel, as `radcorpora validate` and `publish` do.

Both run `placeholders_match_images` on every config whose record has an `images` list and one
list of conversation turns (`structure.placeholder_columns`, from the schema, whatever the
corpus): a placeholder count that disagrees with the images shifts every image onto the wrong
text. At the end of a build it reads the turns and the images' `path` leaf (no image bytes) of
each such config, unless the chunk workers already report the rule (`placeholder_findings`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from radcorpora.ops.image_check import ImageCheck, ImageCheckError, check_image
from radcorpora.schemas.columnar import check_table
from radcorpora.schemas.features import arrow_schema_for
from radcorpora.spec.report import ValidationReport
from radcorpora.spec.rules import CorpusRules, RowRules
from radcorpora.store.folder import (
    BuildFolderError,
    all_shards,
    config_shards,
    iter_batches,
    open_shard,
    read_columns,
    read_manifest,
)
from radcorpora.store.shards import file_sha256
from radcorpora.validators.structure import (
    PLACEHOLDER_DESCRIPTION,
    PLACEHOLDER_RULE,
    PlaceholderColumns,
    check_layout,
    images_length_leaf,
    iter_records,
    placeholder_columns,
    placeholder_problems,
)


@dataclass
class ShardFindings:
    """What one shard's check found; merged into the report by the parent process."""

    shard: str
    config: str
    split: str
    rows: int = 0
    sha256: str = ""
    ids: list[str] = field(default_factory=list)
    checked: Counter = field(default_factory=Counter)
    violations: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    image_hashes: set[str] = field(default_factory=set)
    error: str | None = None

    def fail(self, rule: str, example: str, count: int = 1) -> None:
        self.violations[rule] += count
        shown = self.examples.setdefault(rule, [])
        if len(shown) < 5:
            shown.append(example)


def _image_columns(schema: pa.Schema) -> list[str]:
    """Top-level image columns (a struct of bytes + path) and lists of them."""
    names = []
    for f in schema:
        t = f.type.value_type if pa.types.is_list(f.type) else f.type
        if pa.types.is_struct(t) and {c.name for c in t} == {"bytes", "path"}:
            names.append(f.name)
    return names


def check_shard(build: Path, config: str, split: str, path: Path, model: type[BaseModel], row_rules: RowRules | None,
                image_check: ImageCheck | None) -> ShardFindings:
    """Every row of one shard, column-wise; runs in a worker process."""
    rel = str(path.relative_to(build))
    found = ShardFindings(rel, config, split, sha256=file_sha256(path))
    try:
        parquet = open_shard(path)
        images = _image_columns(parquet.schema_arrow)
        placeholders = placeholder_columns(parquet.schema_arrow)
        offset = 0
        for batch in iter_batches(path, batch_size=512):
            table = pa.Table.from_batches([batch])
            if placeholders is not None:
                _check_placeholders(table, placeholders, rel, offset, found)
            violations, total = check_table(table, model)
            found.checked["record_schema"] += table.num_rows
            for v in violations:
                found.fail("record_schema", f"{rel} row {offset + v.row}: {v.field}: {v.message}", 0)
            found.violations["record_schema"] += total
            for rule, rows in (row_rules.findings(config, table) if row_rules else {}).items():
                found.checked[rule] += table.num_rows
                for r in rows:
                    found.fail(rule, f"{rel} row {offset + r}: breaks {rule}")
            found.ids += table.column("id").to_pylist()
            if image_check is not None and images:
                _check_images(table, images, rel, offset, image_check, found)
            offset += table.num_rows
        found.rows = offset
    except BuildFolderError as exc:
        found.error = str(exc)
    return found


def placeholder_findings(table: pa.Table, where: PlaceholderColumns, shard: str, first_row: int = 0
                         ) -> tuple[int, list[str]]:
    """(rows breaking `placeholders_match_images`, one example per such row naming shard, row, id
    and problem): what a chunk worker reports under that rule (`ChunkResult.checked` /
    `violations` / `violation_counts`), so the end-of-build pass need not read the turns again."""
    problems = placeholder_problems(table, where)
    ids = table.column("id").to_pylist() if "id" in table.column_names and problems else []
    examples = [f"{shard} row {first_row + r}" + (f" ({ids[r]})" if ids else "") + f": {', '.join(p)}"
                for r, p in problems.items()]
    return len(problems), examples


def _check_placeholders(table: pa.Table, where: PlaceholderColumns, rel: str, offset: int,
                        found: ShardFindings) -> None:
    _, examples = placeholder_findings(table, where, rel, offset)
    found.checked[PLACEHOLDER_RULE] += table.num_rows
    for example in examples:
        found.fail(PLACEHOLDER_RULE, example)


def _check_images(table: pa.Table, columns: list[str], rel: str, offset: int, level: ImageCheck,
                  found: ShardFindings) -> None:
    lineage = table.column("lineage").to_pylist() if "lineage" in table.column_names else None
    for column in columns:
        for i, value in enumerate(table.column(column).to_pylist()):
            stored = value if isinstance(value, list) else [value]
            if not stored:  # a row of a list column with no image (a text-only prompt): nothing to check
                continue
            expected = (lineage[i]["image_sha256"].split(",") if lineage else [None] * len(stored))
            if len(expected) != len(stored):
                found.fail("images_decode", f"{rel} row {offset + i}: {len(stored)} images, {len(expected)} lineage hashes")
                continue
            for image, want in zip(stored, expected):
                data = (image or {}).get("bytes") or b""
                digest = hashlib.sha256(data).hexdigest()
                found.checked["images_decode"] += 1
                if want is not None and digest != want:
                    found.fail("images_decode", f"{rel} row {offset + i}: image bytes do not match lineage.image_sha256")
                if digest in found.image_hashes:
                    continue
                found.image_hashes.add(digest)
                try:
                    check_image(data, level)
                except ImageCheckError as exc:
                    found.fail("images_decode", f"{rel} row {offset + i}: image does not decode ({exc})")


DESCRIPTIONS = {
    "record_schema": "every row has the columns, types, required fields and allowed values of its record model",
    "images_decode": "every image is readable and matches its lineage hash",
    "shard_checksums": "every shard's sha256 equals the one recorded in the manifest",
    "unique_ids": "ids are unique within each config",
    "counts_match_manifest": "row counts equal those recorded in the manifest",
    "configs_not_empty": "every config the build was asked for holds rows (unless built with --allow-empty)",
    PLACEHOLDER_RULE: PLACEHOLDER_DESCRIPTION,
}


def check_not_empty(report: ValidationReport, manifest: dict[str, Any]) -> None:
    """An empty build is not a success: a config asked for with no rows (all sources empty, every
    LLM request failed) fails the build, unless it was built with --allow-empty (then a warning)."""
    check = report.check("configs_not_empty", DESCRIPTIONS["configs_not_empty"])
    splits = manifest.get("splits") or {}
    asked = manifest.get("configs_asked") or sorted(splits) or ["(any)"]
    check.checked += len(asked)
    empty = [c for c in asked if not sum((splits.get(c) or {}).values())]
    for config in empty:
        if manifest.get("allow_empty"):
            report.warnings.append(f"config {config} holds no rows (built with --allow-empty)")
        else:
            check.fail(f"config {config} holds no rows: see the rejects and warnings for why, or build with "
                       "--allow-empty")


def declare_rules(report: ValidationReport, row_rules: RowRules | None) -> None:
    """The shared checks and the corpus' row rules, listed up front so a rule that passed (or had
    nothing to check) is in the report all the same, in the same order on both paths."""
    for name in ("record_schema", "shard_checksums", "unique_ids", "counts_match_manifest"):
        report.check(name, DESCRIPTIONS[name])
    for name, description in (row_rules.names.items() if row_rules else ()):
        report.check(name, description)


def add_counts(report: ValidationReport, checked: Mapping[str, int], violations: Mapping[str, int],
               examples: Mapping[str, list[str]]) -> None:
    """Rule counts of one shard (validate) or one chunk worker (the end of a build) into the report."""
    for rule, n in checked.items():
        report.check(rule, DESCRIPTIONS.get(rule, rule.replace("_", " "))).checked += n
    for rule, n in violations.items():
        check = report.check(rule, DESCRIPTIONS.get(rule, rule.replace("_", " ")))
        check.violations += n
        check.examples = (check.examples + examples.get(rule, []))[:5]


def check_checksums(report: ValidationReport, manifest: dict[str, Any], on_disk: dict[str, str]) -> None:
    """Every shard's sha256 (`on_disk`: shard -> sha256) against the manifest's, and none missing."""
    sums = report.check("shard_checksums", DESCRIPTIONS["shard_checksums"])
    recorded = manifest.get("shards") or {}
    for shard, digest in sorted(on_disk.items()):
        want = (recorded.get(shard) or {}).get("sha256")
        sums.expect(want == digest, f"{shard}: sha256 differs from the manifest" if want else
                    f"{shard}: not listed in the manifest")
    for missing in sorted({str(k) for k in recorded} - set(on_disk)):
        sums.fail(f"{missing}: listed in the manifest but missing on disk")


def _merge(report: ValidationReport, findings: Sequence[ShardFindings], manifest: dict[str, Any]) -> None:
    ids = report.check("unique_ids", DESCRIPTIONS["unique_ids"])
    counts = report.check("counts_match_manifest", DESCRIPTIONS["counts_match_manifest"])
    seen: dict[str, dict[str, str]] = {}
    rows: Counter = Counter()
    for f in findings:
        if f.error:
            report.check("record_schema", DESCRIPTIONS["record_schema"]).fail(f.error)
            continue
        add_counts(report, f.checked, f.violations, f.examples)
        ids.expect_unique(f.ids, seen.setdefault(f.config, {}), f.shard)
        rows[(f.config, f.split)] += f.rows
    check_checksums(report, manifest, {f.shard: f.sha256 for f in findings if not f.error})
    for (config, split), n in sorted(rows.items()):
        want = (manifest.get("splits") or {}).get(config, {}).get(split)
        counts.expect(want == n, f"{config}/{split}: {n} rows, manifest says {want}")
    for config, splits in sorted((manifest.get("splits") or {}).items()):
        for split in splits:
            counts.expect((config, split) in rows or any(f.error for f in findings),
                          f"{config}/{split}: in the manifest but no shards on disk")


def validate_build_folder(build: Path, corpus: str, records: dict[str, type[BaseModel]], corpus_rules: CorpusRules,
                          row_rules: RowRules | None = None, *, image_check: ImageCheck = "full", workers: int = 1,
                          deep: bool = False) -> ValidationReport:
    """Check a build folder from disk: structure, checksums, every row (column-wise, shards in
    parallel), images, ids, counts, then the corpus' rules; `deep` adds an object-level re-parse."""
    build = Path(build)
    manifest = read_manifest(build)
    report = ValidationReport(corpus=corpus)
    check_layout(build, records, report)
    declare_rules(report, row_rules)
    shards = [s for s in all_shards(build, list(records))]
    jobs = [(build, s.config, s.split, s.path, records[s.config], row_rules, image_check) for s in shards]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            findings = list(pool.map(check_shard, *zip(*jobs)))
    else:
        findings = [check_shard(*job) for job in jobs]
    _merge(report, findings, manifest)
    if deep:
        for _ in iter_records(build, records, report):
            pass
    check_not_empty(report, manifest)
    corpus_rules.apply(build, report, manifest, image_check=image_check, deep=deep)
    report.stats.update({"distinct_images": len(set().union(*(f.image_hashes for f in findings))) if findings else 0,
                         "rows": sum(f.rows for f in findings)})
    return report


def validate_finished_build(build: Path, corpus: str, records: dict[str, type[BaseModel]], corpus_rules: CorpusRules,
                            manifest: dict[str, Any], chunks: Sequence[Any], image_check: ImageCheck = "crc",
                            row_rules: RowRules | None = None) -> ValidationReport:
    """A build checking itself, with the checks `validate` runs: shard sets and schemas from disk
    (footers only), row findings from the chunk workers (a shard no worker checked, written by a
    corpus' own stage, is checked here as `validate` would), shard checksums and ids from disk,
    counts from Parquet metadata, the corpus rules."""
    report = ValidationReport(corpus=corpus)
    check_layout(build, records, report, card={"configs": [
        {"config_name": c, "data_files": [{"split": s} for s in splits]}
        for c, splits in (manifest.get("splits") or {}).items()]})
    declare_rules(report, row_rules)
    covered: dict[str, Any] = {}  # shard -> its ShardInfo, for the shards a chunk worker checked
    for result in chunks:
        if "record_schema" in result.checked:
            covered.update(result.shards)
        add_counts(report, result.checked, result.violation_counts, result.violations)
    on_disk: dict[str, str] = {}
    for shard in all_shards(build, list(records)):
        rel = str(shard.path.relative_to(build))
        if rel in covered:  # hashed by its writer as it wrote it: re-read only when its size changed since
            info = covered[rel]
            whole = info.bytes is not None and shard.path.stat().st_size == info.bytes
            on_disk[rel] = info.sha256 if whole else file_sha256(shard.path)
            continue
        found = check_shard(build, shard.config, shard.split, shard.path, records[shard.config], row_rules,
                            image_check)
        if found.error:
            report.check("record_schema", DESCRIPTIONS["record_schema"]).fail(found.error)
            continue
        add_counts(report, found.checked, found.violations, found.examples)
        on_disk[rel] = found.sha256
    check_checksums(report, manifest, on_disk)
    if not any(PLACEHOLDER_RULE in result.checked for result in chunks) and covered:
        _placeholders_from_disk(build, records, report, set(covered))
    ids = report.check("unique_ids", DESCRIPTIONS["unique_ids"])
    counts = report.check("counts_match_manifest", DESCRIPTIONS["counts_match_manifest"])
    for config in records:
        seen: dict[str, str] = {}
        for split, paths in config_shards(build, config).items():
            rows = 0
            for path in paths:
                table = read_columns(path, ["id"])
                rows += table.num_rows
                ids.expect_unique(table.column("id").to_pylist(), seen, str(path.relative_to(build)))
            want = (manifest.get("splits") or {}).get(config, {}).get(split)
            counts.expect(want == rows, f"{config}/{split}: {rows} rows, manifest says {want}")
    check_not_empty(report, manifest)
    corpus_rules.apply(build, report, manifest, image_check=image_check, deep=False)
    return report


def _placeholders_from_disk(build: Path, records: dict[str, type[BaseModel]], report: ValidationReport,
                            shards: set[str]) -> None:
    """`placeholders_match_images` for a build whose workers did not check it: per config with
    the shape (from its record model), the turn columns and the images' path leaf of each shard."""
    for config, model in records.items():
        where = placeholder_columns(arrow_schema_for(model))
        if where is None:
            continue
        check = report.check(PLACEHOLDER_RULE, DESCRIPTIONS[PLACEHOLDER_RULE])
        for paths in config_shards(build, config).values():
            for path in paths:
                rel = str(path.relative_to(build))
                if rel not in shards:  # checked with the rest of the shard above
                    continue
                try:
                    leaf = images_length_leaf(path)
                    table = open_shard(path).read(columns=["id", *where.columns, *([leaf] if leaf else [])])
                except (OSError, pa.ArrowException, BuildFolderError) as exc:
                    check.fail(f"{rel}: unreadable ({exc})")
                    continue
                if leaf is None:  # not the record's layout: parquet_schema says so
                    continue
                bad, examples = placeholder_findings(table, where, rel)
                check.checked += table.num_rows
                check.violations += bad
                check.examples = (check.examples + examples)[:5]
