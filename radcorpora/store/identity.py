"""A build's identity index, build/identity.parquet: one line per (row, image) with the row's
source ids as lineage names them and each stored image's sha256 and perceptual hash, so that
`radcorpora leakage` decodes a build's images once, not on every run. Each shard's lines are
kept under the shard's checksum (the manifest's, else the file's): a rebuilt or edited shard is
indexed again, the others are read back. Local only: publish's allow-list leaves it out."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from radcorpora.schemas.identity import (
    IDENTITY_INDEX,
    IDENTITY_META,
    IDENTITY_SCHEMA,
    IDENTITY_VERSION,
    INDEX_BATCH_LINES,
    index_batches,
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
    """What `load_index` found. The lines stay on disk (`path`: the stored index, or a temporary
    copy where the build is read-only) and are read in batches, so indexing a build holds one
    batch of lines, not the whole index."""

    path: Path  # IDENTITY_SCHEMA lines, sorted by (shard, row, image)
    lines: int
    rows: dict[str, int]  # shard -> rows in it (to number rows within a split)
    reused: list[str] = field(default_factory=list)  # shards read back from the stored index
    indexed: list[str] = field(default_factory=list)  # shards whose images were hashed this run
    undecodable: int = 0  # images without a perceptual hash
    stored: bool = True  # False: the index could not be written (a read-only build)
    note: str = ""
    spill: Any = None  # the temporary folder holding `path` where it could not be stored

    def batches(self, columns: list[str] | None = None,
                batch_size: int = INDEX_BATCH_LINES) -> Iterator[pa.RecordBatch]:
        return index_batches(self.path, columns, batch_size)

    @property
    def table(self) -> pa.Table:
        """Every line at once (small builds and tests; the join reads `batches`)."""
        return pq.read_table(self.path).replace_schema_metadata(None)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stored(path: Path) -> tuple[Path | None, dict[str, Any]]:
    """The stored index (when readable, of this version and sorted by shard) and its per-shard
    keys; (None, {}) otherwise (then it is rebuilt: it is a cache). Reads the footer and the shard
    column only."""
    if not path.exists():
        return None, {}
    try:
        schema = pq.read_schema(path)
        meta = json.loads((pq.ParquetFile(path).metadata.metadata or {}).get(IDENTITY_META, b"{}"))
        if meta.get("version") != IDENTITY_VERSION or not schema.remove_metadata().equals(IDENTITY_SCHEMA):
            return None, {}
        last = ""
        for batch in index_batches(path, ["shard"]):
            shards = batch.column(0)
            if len(shards) and (shards.null_count or not _ascending(shards) or shards[0].as_py() < last):
                return None, {}
            last = shards[len(shards) - 1].as_py() if len(shards) else last
    except (OSError, pa.ArrowException, ValueError):
        return None, {}
    return path, meta.get("shards") or {}


def _ascending(values: pa.Array) -> bool:
    if len(values) < 2:
        return True
    return bool(pc.all(pc.less_equal(values.slice(0, len(values) - 1), values.slice(1))).as_py())


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


def _runs(path: Path) -> Iterator[tuple[str, pa.Table]]:
    """(shard, its lines) of a stored index in file order, a batch at a time (a shard's lines may
    come as several runs)."""
    for batch in index_batches(path):
        table = pa.Table.from_batches([batch]).replace_schema_metadata(None)
        shards = table["shard"].combine_chunks()
        if not len(shards):
            continue
        change = np.flatnonzero(pc.not_equal(shards.slice(1), shards.slice(0, len(shards) - 1)).to_numpy(
            zero_copy_only=False)) + 1
        bounds = [0, *change.tolist(), len(shards)]
        for lo, hi in pairwise(bounds):
            yield shards[lo].as_py(), table.slice(lo, hi - lo)


def _merged(stored: Path | None, reused: set[str], fresh: Iterator[tuple[str, pa.Table]]) -> Iterator[pa.Table]:
    """The lines of every shard in shard order: the reused shards' from the stored index (sorted by
    shard), the others' as `fresh` yields them (also in shard order), merged as they come."""
    pending = next(fresh, None)
    for shard, run in _runs(stored) if stored is not None and reused else ():
        while pending is not None and pending[0] < shard:
            yield pending[1]
            pending = next(fresh, None)
        if shard in reused:
            yield run
    while pending is not None:
        yield pending[1]
        pending = next(fresh, None)


class _IndexWriter:
    """Lines to a Parquet file in row groups of INDEX_BATCH_LINES (a shard's lines are small: buffered
    until a row group fills), counting lines and undecodable images on the way."""

    def __init__(self, path: Path):
        self.path, self.lines, self.undecodable = path, 0, 0
        self._writer = pq.ParquetWriter(path, IDENTITY_SCHEMA)
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def write(self, part: pa.Table) -> None:
        self.lines += part.num_rows
        self.undecodable += _undecodable(part["image"], part["phash"])
        self._buffer.append(part)
        self._buffered += part.num_rows
        if self._buffered >= INDEX_BATCH_LINES:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.concat_tables(self._buffer), row_group_size=INDEX_BATCH_LINES)
        self._buffer, self._buffered = [], 0

    def close(self, meta: dict[bytes, str]) -> None:
        self._flush()
        self._writer.add_key_value_metadata(meta)
        self._writer.close()

    def abort(self) -> None:
        self._writer.close()
        self.path.unlink(missing_ok=True)


def _undecodable(image: pa.Array | pa.ChunkedArray, phash: pa.Array | pa.ChunkedArray) -> int:
    """Lines of an image without a pHash (a line for a row without images has none either)."""
    return int(phash.null_count) - int(pc.sum(pc.equal(image, -1)).as_py() or 0)


def _count_undecodable(path: Path) -> int:
    return sum(_undecodable(batch.column(0), batch.column(1)) for batch in index_batches(path, ["image", "phash"]))


def load_index(build: Path, hasher: ImageHasher, map_tasks: TaskMap | None = None) -> IndexResult:
    """The build's identity index, from build/identity.parquet where its shards are unchanged,
    hashing the images of the others (and storing the result back). `map_tasks` runs the shards'
    hashing (`index_shard`, one task per shard; `hasher` must pickle): the same lines whatever
    runs them, since each shard's lines depend on that shard alone. The new index is written as
    it is merged, a row group at a time: memory does not grow with the build."""
    build = Path(build)
    manifest = read_manifest(build)
    listed = manifest.get("shards") or {}
    shards = sorted(all_shards(build), key=lambda shard: shard.rel(build))
    if not shards:
        raise BuildFolderError(f"{build}: no data shards under {build / 'data'}")
    path = build / IDENTITY_INDEX
    stored, keys = _stored(path)
    rows: dict[str, int] = {}
    reused: list[str] = []
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
            rows[rel] = int(old["rows"])
            reused.append(rel)
            new_keys[rel] = {**key, "rows": rows[rel]}
        else:
            todo.append((rel, shard, key))
    result = IndexResult(path=path, lines=0, rows=rows, reused=reused)
    if stored is not None and not todo and new_keys == keys:  # unchanged: read as it is
        result.lines = pq.ParquetFile(path).metadata.num_rows
        result.undecodable = _count_undecodable(path)
        return result
    jobs = [(str(build), shard.config, shard.split, str(shard.path), hasher) for _, shard, _ in todo]

    def fresh() -> Iterator[tuple[str, pa.Table]]:
        for (rel, _, key), (part, count) in zip(todo, (map_tasks or map)(index_shard, jobs)):
            rows[rel] = count
            result.indexed.append(rel)
            new_keys[rel] = {**key, "rows": count}
            yield rel, part

    tmp = tmp_path_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = _IndexWriter(tmp)
    except OSError as exc:  # a read-only build: the index goes to a temporary folder instead
        result.stored, result.note = False, f"{path}: not stored ({exc.strerror or exc})"
        result.spill = tempfile.TemporaryDirectory(prefix="radcorpora-identity-")
        tmp = Path(result.spill.name) / "identity.parquet"
        writer = _IndexWriter(tmp)
    try:
        for part in _merged(stored, set(reused), fresh()):
            writer.write(part)
        meta = {IDENTITY_META: json.dumps({"version": IDENTITY_VERSION,
                                           "shards": {rel: new_keys[rel] for rel in sorted(new_keys)}},
                                          sort_keys=True)}
        writer.close(meta)
    except BaseException:
        writer.abort()
        raise
    result.lines, result.undecodable = writer.lines, writer.undecodable
    if result.stored:
        try:
            commit(tmp, path, durable=False)
        except OSError as exc:
            result.stored, result.note = False, f"{path}: not stored ({exc.strerror or exc})"
            result.path = tmp  # still there: read from it (the next run indexes again)
    else:
        result.path = tmp
    return result
