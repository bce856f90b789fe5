"""`radcorpora preview` on a large build: time, peak RSS and page size.

Writes a synthetic build of ROWS small text rows (conversation, labels, fused boxes; no images) in
64-row row groups like the builders' shards, plus a rejects ledger, then runs the preview in a
fresh process and reports wall time, peak RSS (and the RSS of the same process after imports only)
and the HTML size. The preview reads the sampled rows' row groups, the plot columns of a seeded
subset of row groups (`stat_rows`), the footers and the manifest: its cost should not grow with
the build.

    .venv/bin/python benchmarks/bench_preview.py --rows 1000000 --out bench-out/preview
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 64
LABELS = np.array(["Nodule", "Pleural effusion", "Cardiomegaly", "Atelectasis", "Pneumothorax", "Consolidation"])
BOX = pa.struct([("x1", pa.float64()), ("y1", pa.float64()), ("x2", pa.float64()), ("y2", pa.float64()),
                 ("frame", pa.string()), ("width", pa.int64()), ("height", pa.int64()), ("readers", pa.int64())])


def shard_table(start: int, n: int, rng: np.random.Generator) -> pa.Table:
    ids = pa.array([f"cxr-{i:07d}" for i in range(start, start + n)])
    label = LABELS[rng.integers(0, len(LABELS), n)]
    x1, y1 = rng.uniform(0, 0.6, n), rng.uniform(0, 0.6, n)
    x2, y2 = x1 + rng.uniform(0.05, 0.35, n), y1 + rng.uniform(0.05, 0.35, n)
    boxes = pa.StructArray.from_arrays(
        [pa.array(x1), pa.array(y1), pa.array(x2), pa.array(y2), pa.array(["normalised_xyxy"] * n),
         pa.array(np.full(n, 1024)), pa.array(np.full(n, 1024)), pa.array(rng.integers(1, 4, n))], fields=list(BOX))
    box_lists = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), boxes)
    human = [f"<image>\nWhere is the {t.lower()}?" for t in label]
    gpt = [f"{t} at [{a:.2f}, {b:.2f}, {c:.2f}, {d:.2f}]." for t, a, b, c, d in zip(label, x1, y1, x2, y2)]
    turns = pa.StructArray.from_arrays([pa.array(["human", "gpt"] * n), pa.array([v for pair in zip(human, gpt) for v in pair])],
                                       names=["from", "value"])
    conversations = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), turns)
    return pa.table({"id": ids, "conversations": conversations, "boxes": box_lists,
                     "labels": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pa.array(label)),
                     "view": pa.array(np.where(rng.random(n) < 0.5, "PA", "AP"))})


def write_build(out: Path, rows: int, shards: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    data = out / "data" / "default"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = -(-rows // shards)
    for s in range(shards):
        n = min(per, rows - s * per)
        pq.write_table(shard_table(s * per, n, rng), data / f"train-{s:05d}-of-{shards:05d}.parquet",
                       row_group_size=ROW_GROUP, compression="zstd")
    (out / "build").mkdir()
    reasons = ["box_outside_frame", "image_missing", "no_finding_text"]
    with (out / "build" / "rejects.jsonl").open("w") as handle:
        for i in range(rows // 5):
            handle.write(json.dumps({"detail": f"row {i}", "reason": reasons[i % 3], "row": str(i), "source": "x.csv"}) + "\n")
    (out / "build" / "manifest.json").write_text(json.dumps({
        "corpus": "synthetic-boxes", "licence_class": "public", "splits": {"default": {"train": rows}},
        "rejects": {r: rows // 15 for r in reasons},
        "validation": {"valid": True, "checks": 0, "violations": 0, "failed_checks": [], "warnings": []}}))


CHILD = """
import json, resource, sys, time


def peak_kb():
    # VmHWM is this process' own peak (reset at exec); ru_maxrss can carry the parent's over a fork
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


from pathlib import Path
from radcorpora.publish.preview import write_preview
import matplotlib, PIL, pyarrow.parquet  # noqa: F401 (imports counted in the baseline)
base = peak_kb()
t = time.perf_counter()
r = write_preview(Path(sys.argv[1]), Path(sys.argv[2]), samples=int(sys.argv[3]), seed=0)
print(json.dumps({"seconds": round(time.perf_counter() - t, 2), "rss_after_imports_mb": round(base / 1024, 1),
                  "peak_rss_mb": round(peak_kb() / 1024, 1),
                  "html_bytes": r.bytes, "rows_shown": r.rows_shown}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("bench-out/preview"))
    args = parser.parse_args()
    build = args.out / f"build-{args.rows}"
    t = time.perf_counter()
    if not (build / "build" / "manifest.json").exists():
        write_build(build, args.rows, args.shards)
    groups = sum(pq.ParquetFile(p).metadata.num_row_groups for p in (build / "data" / "default").glob("*.parquet"))
    size = sum(p.stat().st_size for p in (build / "data").rglob("*.parquet"))
    print(f"build: {args.rows:,} rows, {groups:,} row groups, {size / 1e6:.1f} MB of shards "
          f"(ready in {time.perf_counter() - t:.1f} s)")
    result = subprocess.run([sys.executable, "-c", CHILD, str(build), str(args.out / "preview.html"), str(args.samples)],
                            capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
