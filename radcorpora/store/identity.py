"""A build's identity index, build/identity.parquet: one line per (row, image) with the row's
source ids as lineage names them and each stored image's sha256 and perceptual hash, so that
`radcorpora leakage` decodes a build's images once, not on every run. Each shard's lines are
kept under the shard's checksum (the manifest's, else the file's): a rebuilt or edited shard is
indexed again, the others are read back. Local only: publish's allow-list leaves it out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from radcorpora.schemas.identity import (
    IDENTITY_INDEX,
    IDENTITY_META,
    IDENTITY_SCHEMA,
    IDENTITY_VERSION,
)
from radcorpora.store.atomic import commit, tmp_path_for
from radcorpora.store.folder import (
    BuildFolderError,
    ShardRef,
    all_shards,
    iter_batches,
    open_shard,
    read_manifest,
)

# encoded image -> (sha256 hex, perceptual hash or None where it does not decode)
ImageHasher = Callable[[bytes], "tuple[str, int | None]"]
# (task, jobs) -> the task's results in job order: the builtin `map`, or the engine's executors
TaskMap = Callable[[Callable[[Any], Any], list[Any]], Iterable[Any]]


@dataclass
class IndexResult:
    table: pa.Table  # IDENTITY_SCHEMA
    rows: dict[str, int]  # shard -> rows in it (to number rows within a split)
    reused: list[str] = field(default_factory=list)  # shards read back from the stored index
    indexed: list[str] = field(default_factory=list)  # shards whose images were hashed this run
    undecodable: int = 0  # images without a perceptual hash
    stored: bool = True  # False: the index could not be written (a read-only build)
    note: str = ""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stored(path: Path) -> tuple[pa.Table | None, dict[str, Any]]:
    """The stored index and its per-shard keys; (None, {}) when absent, unreadable or of another
    version (then it is rebuilt: it is a cache)."""
    if not path.exists():
        return None, {}
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(IDENTITY_META, b"{}"))
    except (OSError, pa.ArrowException, ValueError):
        return None, {}
    if meta.get("version") != IDENTITY_VERSION or not table.schema.remove_metadata().equals(IDENTITY_SCHEMA):
        return None, {}
    return table, meta.get("shards") or {}


def _image_columns(schema: pa.Schema) -> list[tuple[str, bool]]:
    """(column, is a list) for every top-level image column: a struct with binary `bytes`, or a
    list of them (mmrad-ivl's `images`, rad-ace-cot's)."""
    out = []
    for f in schema:
        kind = f.type
        many = pa.types.is_list(kind) or pa.types.is_large_list(kind)
        inner = kind.value_type if many else kind
        if pa.types.is_struct(inner) and inner.get_field_index("bytes") >= 0:
            blob = inner.field("bytes").type
            if pa.types.is_binary(blob) or pa.types.is_large_binary(blob):
                out.append((f.name, many))
    return out


def index_shard(job: tuple[str, str, str, str, ImageHasher]) -> tuple[pa.Table, int]:
    """The index lines of one shard (build, config, split, shard path, hasher) as an Arrow table,
    and its row count: one task of a (parallel) indexing run. Memory: one batch of images at a time."""
    build, config, split, path, hasher = job
    lines, rows = _index_shard(Path(build), ShardRef(config, split, Path(path)), hasher)
    return pa.Table.from_pylist(lines, schema=IDENTITY_SCHEMA), rows


def _index_shard(build: Path, shard, hasher: ImageHasher) -> tuple[list[dict[str, Any]], int]:
    """Lines of one shard and its row count."""
    schema = open_shard(shard.path).schema_arrow
    images = _image_columns(schema)
    lineage = schema.field("lineage").type if "lineage" in schema.names else None
    if lineage is None or not pa.types.is_struct(lineage):
        raise BuildFolderError(f"{shard.path}: no lineage column (not a radcorpora build shard?)")
    wanted = ["lineage"] + [n for n in ("id", "subject_id", "study_id") if n in schema.names] + [n for n, _ in images]
    rel = shard.rel(build)
    lines, row = [], 0
    for batch in iter_batches(shard.path, batch_size=64, columns=wanted):
        for record in batch.to_pylist():
            lin = record.get("lineage") or {}
            base = {"shard": rel, "config": shard.config, "split": shard.split, "row": row,
                    "id": None if record.get("id") is None else str(record["id"]),
                    "source_dataset": lin.get("source_dataset"), "source_id": lin.get("source_id"),
                    "patient_id": lin.get("patient_id") or _text(record.get("subject_id")),
                    "study_id": lin.get("study_id") or _text(record.get("study_id"))}
            blobs = []
            for name, many in images:
                value = record.get(name)
                for item in (value or []) if many else [value]:
                    if item and item.get("bytes"):
                        blobs.append(item["bytes"])
            for place, blob in enumerate(blobs):
                sha, phash = hasher(blob)
                lines.append({**base, "image": place, "sha256": sha, "phash": phash})
            if not blobs:
                lines.append({**base, "image": -1, "sha256": None, "phash": None})
            row += 1
    return lines, row


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _in_order(table: pa.Table) -> bool:
    """Whether the lines are sorted by (shard, row, image) already (column-wise, no copy of the index)."""
    if table.num_rows < 2:
        return True
    n = table.num_rows
    shard, row, image = (table[c] for c in ("shard", "row", "image"))
    a = [c.slice(0, n - 1) for c in (shard, row, image)]
    b = [c.slice(1) for c in (shard, row, image)]
    after = pc.or_(pc.less(a[0], b[0]), pc.and_(pc.equal(a[0], b[0]), pc.or_(
        pc.less(a[1], b[1]), pc.and_(pc.equal(a[1], b[1]), pc.less_equal(a[2], b[2])))))
    return bool(pc.all(after).as_py())


def load_index(build: Path, hasher: ImageHasher, map_tasks: TaskMap | None = None) -> IndexResult:
    """The build's identity index, from build/identity.parquet where its shards are unchanged,
    hashing the images of the others (and storing the result back). `map_tasks` runs the shards'
    hashing (`index_shard`, one task per shard; `hasher` must pickle): the same lines whatever
    runs them, since each shard's lines depend on that shard alone."""
    build = Path(build)
    manifest = read_manifest(build)
    listed = manifest.get("shards") or {}
    shards = all_shards(build)
    if not shards:
        raise BuildFolderError(f"{build}: no data shards under {build / 'data'}")
    path = build / IDENTITY_INDEX
    stored, keys = _stored(path)
    parts: list[pa.Table] = []
    result = IndexResult(table=IDENTITY_SCHEMA.empty_table(), rows={})
    new_keys: dict[str, Any] = {}
    todo: list[tuple[str, ShardRef, dict[str, Any]]] = []
    for shard in shards:
        rel = shard.rel(build)
        stat = shard.path.stat()
        sha = (listed.get(rel) or {}).get("sha256")
        old = keys.get(rel) or {}
        same_file = old.get("size") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns
        if not (sha and same_file and old.get("sha256") == sha):
            sha = _file_sha256(shard.path)  # the file itself decides when the stat or manifest disagree
        key = {"sha256": sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if stored is not None and old.get("sha256") == sha:
            result.rows[rel] = int(old["rows"])
            result.reused.append(rel)
            new_keys[rel] = {**key, "rows": result.rows[rel]}
        else:
            todo.append((rel, shard, key))
    jobs = [(str(build), shard.config, shard.split, str(shard.path), hasher) for _, shard, _ in todo]
    for (rel, _, key), (part, count) in zip(todo, (map_tasks or map)(index_shard, jobs)):
        parts.append(part)
        result.rows[rel] = count
        result.indexed.append(rel)
        new_keys[rel] = {**key, "rows": count}
    new_keys = {rel: new_keys[rel] for rel in sorted(new_keys)}
    if result.reused:
        whole = len(result.reused) == len(keys) == len(set(stored["shard"].unique().to_pylist()))
        parts.append(stored if whole else stored.filter(pc.is_in(stored["shard"], value_set=pa.array(result.reused))))
    table = pa.concat_tables(parts).replace_schema_metadata(None)
    if not _in_order(table):  # parts come in shard order, each in (row, image) order: sorting copies the index
        table = table.sort_by([("shard", "ascending"), ("row", "ascending"), ("image", "ascending")])
    result.table = table
    result.undecodable = int(table["phash"].null_count) - int(pc.sum(
        pc.equal(table["image"], -1)).as_py() or 0)
    if result.indexed or set(keys) != set(new_keys) or any(keys[k] != new_keys[k] for k in keys):
        meta = {IDENTITY_META: json.dumps({"version": IDENTITY_VERSION, "shards": new_keys}, sort_keys=True)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_path_for(path)
            pq.write_table(table.replace_schema_metadata(meta), tmp)
            commit(tmp, path, durable=False)
        except OSError as exc:
            result.stored, result.note = False, f"{path}: not stored ({exc.strerror or exc})"
    return result
