"""radimagenet-vqa chunk memory reuse: the benchmark's repeated image column (`_repeat_each`)
is exactly `take` of each image nine times, and memory a live array still uses is never reused."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from radcorpora.corpora.radimagenet_vqa import build


def repeated_by_take(values: pa.Array, times: int) -> pa.Array:
    return values.take(pa.array(np.repeat(np.arange(len(values)), times)))


@pytest.mark.parametrize("sliced", [False, True])
def test_repeat_each_is_take_of_each_value_in_a_row(sliced):
    values = pa.array([os.urandom(n) for n in (0, 1, 700, 33000, 5, 12000)], pa.binary())
    if sliced:  # an ImageSlice.part: the array starts inside its buffers
        values = values.slice(2, 3)
    got = build._repeat_each(values, 9)
    assert got.type == pa.binary() and got.equals(repeated_by_take(values, 9))
    build._REPEAT_MEMORY.clear()


def test_repeat_memory_in_use_is_not_overwritten():
    first = pa.array([b"a" * 1000, b"b" * 2000], pa.binary())
    second = pa.array([b"c" * 3000, b"d" * 10], pa.binary())
    kept = build._repeat_each(first, 9)  # still alive when the next call comes
    expected = repeated_by_take(first, 9).to_pylist()
    again = build._repeat_each(second, 9)
    assert kept.to_pylist() == expected
    assert again.equals(repeated_by_take(second, 9))
    build._REPEAT_MEMORY.clear()


def test_repeat_each_with_nulls_or_nothing_falls_back_to_take():
    with_null = pa.array([b"x", None, b"yz"], pa.binary())
    assert build._repeat_each(with_null, 3).equals(repeated_by_take(with_null, 3))
    empty = pa.array([], pa.binary())
    assert len(build._repeat_each(empty, 9)) == 0


def png_with_text(png: bytes, text: str) -> bytes:
    """The same PNG with a tEXt chunk after IHDR: other bytes, the same pixels."""
    import struct
    import zlib

    body = b"tEXt" + b"copy\x00" + text.encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]


def test_slice_sizes_do_not_change_a_byte(demo_source, tmp_path, monkeypatch):
    """Shards hold the same row groups whatever the slices (multiples of 64 rows): a tree with
    160 test and 480 train images built with one slice per chunk and with 64-image slices."""
    import shutil

    from helpers import build_radimagenet_vqa

    source = tmp_path / "source"
    shutil.copytree(demo_source, source)
    for split in ("train", "test"):
        listing = source / f"RadiologyAI_{split}.csv"
        lines = listing.read_text().splitlines()
        extra = []
        for line in lines[1:]:
            rel, label = line.rsplit(",", 1)
            for copy in range(1, 5):
                new = rel.replace(".png", f"-copy{copy}.png")
                (source / new).write_bytes(png_with_text((source / rel).read_bytes(), new))
                extra.append(f"{new},{label}")
        listing.write_text("\n".join([*lines, *extra]) + "\n")

    def shards(out):
        build_radimagenet_vqa(source, out, benchmark_images=160, images_per_shard=2000)
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "data").rglob("*.parquet"))}

    whole = shards(tmp_path / "whole")
    monkeypatch.setattr(build, "SLICE_IMAGES", 64)
    monkeypatch.setattr(build, "BENCHMARK_SLICE_IMAGES", 64)
    sliced = shards(tmp_path / "sliced")
    assert sliced == whole
    import pyarrow.parquet as pq

    bench = pq.ParquetFile(tmp_path / "sliced" / "data" / "benchmark" / "test-00000-of-00001.parquet")
    assert bench.metadata.num_rows == 160 * 9 and bench.metadata.num_row_groups == 160 * 9 // 64 + 1


def test_wording_is_parsed_once_per_file_version(tmp_path):
    """load_templates keeps the parsed wording per file version: the same object while the file
    is unchanged, the new wording once it is edited (its size or mtime changed)."""
    from radcorpora.prompts.loader import packaged_text

    default = build.RadImageNetVQAConfig()
    assert build.load_templates(default) is build.load_templates(default)
    _, text = packaged_text(build.__package__, "radimagenet_vqa")
    mine = tmp_path / "wording.yaml"
    mine.write_text(text, encoding="utf-8")
    config = build.RadImageNetVQAConfig(templates_path=str(mine))
    first = build.load_templates(config)
    assert build.load_templates(config) is first
    assert "\nid: " in text
    mine.write_text(text.replace("\nid: ", "\nid: edited-", 1), encoding="utf-8")
    os.utime(mine, ns=(1, 1))  # a new version even where the clock did not move
    assert build.load_templates(config).id.startswith("edited-") and build.load_templates(config) is not first


WORKER_FAULTS = """
import resource, sys
from radcorpora.engine.executors import keep_freed_memory, worker_memory
tuned = worker_memory() if sys.argv[1] == "worker" else keep_freed_memory()
blocks = [bytearray(1 << 20) for _ in range(4)]  # a heap that has held 1 MB blocks
del blocks
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    block = bytearray(1 << 20)  # a Parquet page's size: written, freed, asked for again
    del block
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_worker_processes_take_megabyte_blocks_from_the_kept_heap():
    """A worker reuses freed 1 MB blocks (no page faults); the command line's own process keeps
    glibc's mmap for them (each block faulted in afresh: ~256 faults a block)."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    faults = {}
    for kind in ("worker", "command line"):
        done = subprocess.run([sys.executable, "-c", WORKER_FAULTS, kind], capture_output=True, text=True, check=True)
        tuned, count = done.stdout.split()
        assert tuned == "True"
        faults[kind] = int(count)
    assert faults["worker"] < 200 < 50 * 200 < faults["command line"], faults
