"""What a build read from its sources, so a rerun can tell a changed source from an unchanged one.

Each source file a build reads is recorded as (size, mtime_ns, sha256 of its content). On a
rerun, `stat` is the fast key: files whose size and mtime are unchanged are taken as unchanged
(the rule make and rsync use); files whose stat changed are hashed again, and only a different
content counts as a change. So replacing corrupt images with good ones is seen, while touching a
file or copying a tree with new mtimes costs a re-hash of those files, not a rebuild.

Chunks record the files they read in their done-marker (a chunk whose files changed is built
again on resume); a finished build keeps the whole index in `build/source_index.parquet`
(local paths: never pushed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from radcorpora.store import atomic

INDEX_FILE = "build/source_index.parquet"
Entry = tuple[int, int, str]  # size, mtime_ns, sha256


def stat_key(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def entry_for(path: str | Path, data: bytes | None = None) -> Entry:
    """The index entry of a file; `data` is its content when the caller has just read it."""
    key = stat_key(path)
    if key is None:
        return (-1, -1, "")
    digest = hashlib.sha256(data).hexdigest() if data is not None else file_digest(path)
    return key[0], key[1], digest


def read_file(path: str | Path) -> tuple[bytes, Entry]:
    """A file's bytes and its index entry from one open, one fstat and (for a file that matches
    its stat) one read. A tree of small images is read this way: `Path.read_bytes()` and a
    separate `os.stat` cost about four times as much per 32 KB file. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        data = os.read(fd, st.st_size + 1)  # one byte more than the stat says: a grown file shows
        if len(data) != st.st_size:  # grown, shrunk or a short read: read on to the end
            rest = []
            while block := os.read(fd, 1 << 20):
                rest.append(block)
            data += b"".join(rest)
    finally:
        os.close(fd)
    return data, (st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest())


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def changed_files(entries: dict[str, Entry] | Iterable[tuple[str, Entry]], limit: int | None = None) -> list[str]:
    """Files whose content differs from the entries (stat first, content where stat changed)."""
    changed: list[str] = []
    items = entries.items() if isinstance(entries, dict) else entries
    for path, (size, mtime, digest) in items:
        key = stat_key(path)
        if key == (size, mtime):
            continue
        if key is None or key[0] != size or file_digest(path) != digest:
            changed.append(path)
            if limit is not None and len(changed) >= limit:
                break
    return changed


def write_index(out: Path, entries: dict[str, Entry]) -> None:
    paths = sorted(entries)
    table = pa.table({
        "path": pa.array(paths, pa.string()),
        "size": pa.array([entries[p][0] for p in paths], pa.int64()),
        "mtime_ns": pa.array([entries[p][1] for p in paths], pa.int64()),
        "sha256": pa.array([entries[p][2] for p in paths], pa.string()),
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic.write_bytes(out / INDEX_FILE, sink.getvalue().to_pybytes())


def read_index(out: Path) -> dict[str, Entry]:
    path = out / INDEX_FILE
    if not path.exists():
        return {}
    table = pq.read_table(path)
    return {p: (s, m, h) for p, s, m, h in zip(*(table.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "sha256")))}
