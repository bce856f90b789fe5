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
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
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


class FileBlock:
    """Files read back to back into one block of memory, which becomes the data of an Arrow
    binary column as it is (no copy), and serves batch after batch of files. Reading a tree of
    small images into `bytes` objects and then `pa.array` copied every image once more, and each
    batch's fresh memory was faulted in page by page (a third of a worker's system time).

    `read` appends a file tentatively and returns a view of its bytes and its index entry;
    `keep` makes it part of the batch (a file not kept is overwritten by the next read);
    `binary_array` gives the kept files as a `pa.binary()` array; `start` begins the next batch.
    The block is reused only when nothing still refers to it (no array, buffer or view made from
    the last batch is alive); otherwise the next batch gets a block of its own, so no data any
    caller holds is ever overwritten."""

    def __init__(self, capacity: int = 1 << 20):
        self._block = np.empty(capacity, np.uint8)
        self._used = 0  # bytes of kept files
        self._pending = 0  # bytes of the last file read, not kept yet
        self._offsets = [0]

    def start(self) -> None:
        """Begin a new batch (forgets the kept files)."""
        if sys.getrefcount(self._block) > 2:  # this attribute and getrefcount's argument: anything more is a user
            self._block = np.empty(len(self._block), np.uint8)
        self._used = self._pending = 0
        self._offsets = [0]

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def nbytes(self) -> int:
        return self._used

    def _room(self, need: int) -> None:
        """At least `need` free bytes after the pending file (a bigger block, keeping what is in it)."""
        end = self._used + self._pending
        if end + need > len(self._block):
            grown = np.empty(max(2 * len(self._block), end + need), np.uint8)
            grown[:end] = self._block[:end]
            self._block = grown

    def read(self, path: str | Path) -> tuple[memoryview, Entry]:
        """The file's bytes (a view: release it when done) and its index entry, from one open,
        one fstat and, for a file that matches its stat, one read (as `read_file`). Raises OSError."""
        self._pending = 0
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            want = st.st_size + 1  # one byte more than the stat says: a grown file shows
            while True:
                self._room(want)
                start = self._used + self._pending
                with memoryview(self._block) as whole, whole[start:start + want] as target:
                    got = os.readv(fd, [target])
                self._pending += got
                if got == 0 or (got < want and self._pending == st.st_size):
                    break  # the end of the file, or exactly what the stat said
                want = 1 << 20  # grown, or a short read: read on to the end
        finally:
            os.close(fd)
        view = memoryview(self._block)[self._used:self._used + self._pending]
        return view, (st.st_size, st.st_mtime_ns, hashlib.sha256(view).hexdigest())

    def keep(self) -> None:
        """The file last read belongs to the batch."""
        self._used += self._pending
        self._pending = 0
        self._offsets.append(self._used)

    def binary_array(self) -> pa.BinaryArray:
        """The kept files, in order, as a `pa.binary()` array over the block itself."""
        if self._used > np.iinfo(np.int32).max:
            raise ValueError(f"{len(self)} files of {self._used} bytes: more than one binary array holds")
        offsets = pa.py_buffer(np.array(self._offsets, np.int32))
        return pa.Array.from_buffers(pa.binary(), len(self), [None, offsets, pa.py_buffer(self._block[:self._used])])


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
