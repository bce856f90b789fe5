"""Build radimagenet-vqa from a generated RadImageNet tree of N distinct 224x224 PNGs and compare with
`cp -r` of the same tree. Reports wall time, samples/s, peak RSS and storage amplification.

    python benchmarks/bench_radimagenet_vqa.py --images 20000 --work /tmp/bench
Peak RSS is measured in a child process (the build) via resource.getrusage(RUSAGE_CHILDREN).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from radcorpora.demo.radimagenet import DEMO_CLASSES, draw_image

POOL_PER_CLASS = 4


def with_text_chunk(png: bytes, text: str) -> bytes:
    """The same PNG with a tEXt chunk after IHDR: pixels unchanged, bytes (and hash) unique, so
    the validator's once-per-distinct-image decode sees as many images as a real tree has."""
    ihdr_end = 8 + 4 + 4 + 13 + 4
    body = b"tEXt" + b"radcorpora-bench\x00" + text.encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def make_tree(root: Path, images: int) -> int:
    """N images spread over the demo classes; pixels come from a small drawn pool, each file made
    byte-distinct by a text chunk (drawing 20k images would dominate the benchmark's own time)."""
    classes = [(m, a, p, i) for m, a, ps in DEMO_CLASSES for i, p in enumerate((*ps, "normal"))]
    pool = {c: [draw_image(c[1], None if c[2] == "normal" else c[3], f"{c}{k}") for k in range(POOL_PER_CLASS)]
            for c in classes}
    rows = {"train": [], "val": [], "test": []}
    total = 0
    for n in range(images):
        modality, anatomy, pathology, _ = cls = classes[n % len(classes)]
        folder = root / "radiology_ai" / modality / anatomy / pathology
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{anatomy}-{pathology}{n:07d}.png"
        data = with_text_chunk(pool[cls][n % POOL_PER_CLASS], name)
        (folder / name).write_bytes(data)
        total += len(data)
        split = ("train", "train", "train", "train", "train", "train", "train", "val", "test", "test")[n % 10]
        rows[split].append((f"radiology_ai/{modality}/{anatomy}/{pathology}/{name}", f"{anatomy}-{pathology}"))
    for split, entries in rows.items():
        with open(root / f"RadiologyAI_{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            writer.writerows(entries)
    return total


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a child command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/radcorpora-bench"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-check", choices=("crc", "full"), default="crc")
    args = parser.parse_args()
    work = args.work / str(args.images)
    shutil.rmtree(work, ignore_errors=True)
    source = work / "src"
    source_bytes = make_tree(source, args.images)
    subprocess.run(["sync"], check=False)
    copy_wall, _ = timed(["cp", "-r", str(source), str(work / "copy")])
    out = work / "out"
    cmd = [sys.executable, "-c", "from radcorpora.cli import app; app()", "build", "radimagenet-vqa",
           "--source", str(source), "--out", str(out), "--workers", str(args.workers),
           "--image-check", args.image_check]
    build_wall, peak_kib = timed(cmd)
    manifest = json.loads((out / "build/manifest.json").read_text())
    rows = sum(n for splits in manifest["splits"].values() for n in splits.values())
    images_built = sum(manifest["source"]["images_per_split"][s] for s in ("train", "validation"))
    storage = manifest["storage"]["output_bytes"]
    result = {
        "images": args.images,
        "source_bytes": source_bytes,
        "copy_seconds": round(copy_wall, 2),
        "build_seconds": round(build_wall, 2),
        "build_over_copy": round(build_wall / copy_wall, 2),
        "images_per_second": round(args.images / build_wall, 1),
        "rows_per_second": round(rows / build_wall, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "storage_per_config_over_its_source": {
            c: round(storage[c] / (source_bytes * (images_built if c != "benchmark" else 1) / args.images), 3)
            for c in ("alignment", "instruct")
        },
        "whole_build_over_source": round(sum(storage.values()) / source_bytes, 3),
        "valid": manifest["validation"]["valid"],
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        "workers": args.workers,
        "image_check": args.image_check,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
