"""Parquet shards in the Hub layout `data/<config>/<split>-NNNNN-of-NNNNN.parquet`.

Rows are validated pydantic records, written in small row groups (bounded memory, fast random
access on the Hub viewer). Image bytes are embedded exactly as read. Same rows in, same bytes out.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from radcorpora.schemas.features import arrow_schema_for
from radcorpora.store import atomic

ROW_GROUP_ROWS = 64


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.parquet"


def shard_relpath(config: str, split: str, index: int, total: int) -> str:
    return f"data/{config}/{shard_name(split, index, total)}"


def record_to_row(record: BaseModel) -> dict[str, Any]:
    return record.model_dump(by_alias=True)


class _HashingFile:
    """A write-only file that hashes what passes through, so a shard's checksum costs no re-read."""

    def __init__(self, path: Path):
        self._handle = open(path, "wb")
        self.digest = hashlib.sha256()
        self.position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self._handle.write(view)
        self.position += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
            self.closed = True


class ShardWriter:
    """Writes one shard to a temporary file (hashing as it goes); `close()` renames it into place
    and returns its sha256. Takes Arrow tables (the columnar path) or records.

    The rename makes a shard appear whole or not at all to any reader; durability against power
    loss comes from `sync_files` once the build's shards are all written (as `cp -r && sync`
    does), not from one fsync per shard, which would serialise the build on the disk. A chunk's
    done-marker holds its shards' sha256, and a resumed build re-hashes them, so a shard torn by
    a crash before that sync is rebuilt, never trusted."""

    def __init__(self, path: Path, model: type[BaseModel], shared_images: bool = False):
        """`shared_images`: consecutive rows repeat the same image (one row per question of an
        image): the image bytes are dictionary-encoded, so each row group stores each image once
        (Parquet falls back to plain pages by itself where the dictionary page would grow past
        its limit). Readers see the same values either way."""
        self.path = path
        self.shared_images = shared_images
        self.schema: pa.Schema = arrow_schema_for(model)
        self._tmp = atomic.tmp_path_for(path)
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._sink: _HashingFile | None = None
        self.rows = 0
        self.size: int | None = None  # bytes, once closed
        path.parent.mkdir(parents=True, exist_ok=True)

    def _open(self) -> pq.ParquetWriter:
        leaves = _leaf_paths(self.schema)
        binary_columns = [c for c in leaves if c.endswith(".bytes")]  # images, as read
        stats_columns = [c for c in leaves if c not in binary_columns]
        # With images in the row group, text is under 1% of a shard and each 64-row column chunk
        # is a few KB: zstd sets up a compression context per chunk, which cost more than the
        # rest of writing the text. Text-only shards get zstd's better ratio.
        text_codec = "snappy" if binary_columns else "zstd"
        self._sink = _HashingFile(self._tmp)
        return pq.ParquetWriter(
            self._sink,
            self.schema,
            compression={c: ("none" if c in binary_columns else text_codec) for c in leaves},
            write_statistics=stats_columns,
            use_dictionary=stats_columns + (binary_columns if self.shared_images else []),
        )

    def write_table(self, table: pa.Table) -> None:
        """Append rows (already checked) in row groups of ROW_GROUP_ROWS."""
        self._flush()
        self._append(table)
        self.rows += table.num_rows

    def write(self, record: BaseModel) -> None:
        self._buffer.append(record_to_row(record))
        self.rows += 1
        if len(self._buffer) >= ROW_GROUP_ROWS:
            self._flush()

    def _append(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = self._open()
        self._writer.write_table(table.cast(self.schema) if not table.schema.equals(self.schema) else table,
                                 row_group_size=ROW_GROUP_ROWS)

    def _flush(self) -> None:
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        self._append(pa.Table.from_pylist(rows, schema=self.schema))

    def close(self) -> str:
        """Finish the shard atomically; returns its sha256 (`size` is then its length in bytes)."""
        self._flush()
        if self._writer is None:  # no rows: still write a valid, empty shard
            self._writer = self._open()
            self._writer.write_table(self.schema.empty_table())
        self._writer.close()
        assert self._sink is not None
        self._sink.close()
        os.replace(self._tmp, self.path)
        self.size = self._sink.position
        return self._sink.digest.hexdigest()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._sink is not None:
            self._sink.close()
        self._tmp.unlink(missing_ok=True)


def write_split(out: Path, config: str, split: str, records: Iterable[BaseModel], rows: int,
                model: type[BaseModel], rows_per_shard: int) -> dict[str, tuple[int, str]]:
    """Write `rows` records (an iterable, consumed once) as ceil(rows / rows_per_shard) shards of
    one split; returns shard relpath -> (rows, sha256). An empty split still gets one valid, empty shard."""
    total = max(1, -(-rows // rows_per_shard))
    written: dict[str, tuple[int, str]] = {}
    iterator = iter(records)
    for index in range(total):
        relpath = shard_relpath(config, split, index, total)
        writer = ShardWriter(out / relpath, model)
        try:
            for _ in range(min(rows_per_shard, rows - index * rows_per_shard)):
                writer.write(next(iterator))
        except BaseException:
            writer.abort()
            raise
        count = writer.rows
        written[relpath] = (count, writer.close())
    return written


def _leaf_paths(schema: pa.Schema) -> list[str]:
    paths: list[str] = []

    def walk(prefix: str, dtype: pa.DataType) -> None:
        if pa.types.is_struct(dtype):
            for child in dtype:
                walk(f"{prefix}.{child.name}", child.type)
        elif pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
            walk(f"{prefix}.list.element", dtype.value_type)
        else:
            paths.append(prefix)

    for field in schema:
        walk(field.name, field.type)
    return paths


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sync_files(paths: Iterable[Path]) -> None:
    """fsync each file and each folder holding one (the renames), once, at the end of a build."""
    folders: set[Path] = set()
    for path in paths:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        folders.add(Path(path).parent)
    for folder in sorted(folders):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class BackgroundSync:
    """fsyncs finished shards on one background thread while the build goes on computing, so the
    final sync before the manifest finds little left to write. `wait()` returns what it synced."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="radcorpora-sync")
        self._futures: list[Any] = []
        self._synced: set[Path] = set()

    def submit(self, paths: Iterable[Path]) -> None:
        batch = [Path(p) for p in paths]
        self._futures.append(self._pool.submit(self._sync, batch))

    def _sync(self, batch: list[Path]) -> None:
        sync_files(batch)
        self._synced.update(batch)

    def wait(self) -> set[Path]:
        for future in self._futures:
            future.result()
        self._pool.shutdown()
        return set(self._synced)
