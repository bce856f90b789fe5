"""store.source_index.FileBlock: files read back to back into one reused block of memory that
becomes an Arrow binary column without a copy (the radimagenet-vqa chunk reader)."""

from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path

import pyarrow as pa
import pytest

from radcorpora.store.source_index import FileBlock, read_file


def write_files(tmp_path: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for n, size in enumerate(sizes):
        path = tmp_path / f"f{n}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def test_files_kept_in_order_as_read_with_the_same_entries_as_read_file(tmp_path):
    paths = write_files(tmp_path, [5000, 0, 70000, 1, 123457])
    block = FileBlock(capacity=1024)  # far too small: the block grows, keeping what it holds
    block.start()
    for path in paths:
        view, entry = block.read(path)
        with view:
            assert bytes(view) == path.read_bytes()
        assert entry == read_file(path)[1]
        assert entry[2] == hashlib.sha256(path.read_bytes()).hexdigest()
        block.keep()
    array = block.binary_array()
    assert array.type == pa.binary() and len(block) == len(paths) == len(array)
    assert array.to_pylist() == [p.read_bytes() for p in paths]
    assert block.nbytes == sum(p.stat().st_size for p in paths)


def test_a_file_not_kept_is_overwritten_by_the_next(tmp_path):
    first, rejected, second = write_files(tmp_path, [300, 400, 500])
    block = FileBlock(capacity=4096)
    block.start()
    block.read(first)[0].release()
    block.keep()
    block.read(rejected)[0].release()  # e.g. it failed its image check: not kept
    block.read(second)[0].release()
    block.keep()
    assert block.binary_array().to_pylist() == [first.read_bytes(), second.read_bytes()]


def test_the_block_is_reused_only_when_nothing_refers_to_it(tmp_path):
    old, new = write_files(tmp_path, [2000, 2000])
    block = FileBlock(capacity=8192)
    block.start()
    block.read(old)[0].release()
    block.keep()
    alive = block.binary_array()
    block.start()  # `alive` still points into the block: the next batch gets its own
    block.read(new)[0].release()
    block.keep()
    assert alive.to_pylist() == [old.read_bytes()]  # not overwritten
    assert block.binary_array().to_pylist() == [new.read_bytes()]
    del alive
    memory = weakref.ref(block._block)
    block.start()  # nothing refers to it now: reused
    assert block._block is memory()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_file_longer_than_its_stat_is_read_to_its_end():
    """/proc files stat as 0 bytes and hold more: the grown-file path (read on to the end)."""
    block = FileBlock(capacity=16)
    block.start()
    view, (size, _, digest) = block.read("/proc/self/status")
    with view:
        data = bytes(view)
    assert size == 0 and b"Name:" in data and digest == hashlib.sha256(data).hexdigest()


def test_a_missing_file_raises_oserror_and_keeps_the_batch(tmp_path):
    (kept,) = write_files(tmp_path, [100])
    block = FileBlock()
    block.start()
    block.read(kept)[0].release()
    block.keep()
    with pytest.raises(OSError):
        block.read(tmp_path / "missing.png")
    assert block.binary_array().to_pylist() == [kept.read_bytes()]
