"""Trainer exports on a large build: rows/s, peak RSS, bytes written vs the build.

Writes a synthetic build of ROWS rows shaped like the corpora (an image struct, a LLaVA
conversation of one question and answer, a lineage-sized string) in 64-row row groups, 10,000 rows
a shard. Every IMAGE_SHARE rows share one PNG (as an image's several instances or questions do), so
the export's write-each-image-once is measured too. Each format then runs in a fresh process (so
its peak RSS is its own), and the report gives wall time, rows/s, peak RSS (and RSS after imports
only), the bytes written (JSON, images) and the build's bytes.

    .venv/bin/python benchmarks/bench_exports.py --rows 100000 --out bench-out/exports
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 64
SHARD_ROWS = 10_000
FORMATS = ("llava", "sharegpt", "trl", "swift")


def _png(seed: int, side: int = 48) -> bytes:
    """A small grey PNG with noise (about 2-3 KB), written without PIL for speed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(side, side), dtype=np.uint8)
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_build(out: Path, rows: int, image_share: int) -> int:
    shutil.rmtree(out, ignore_errors=True)
    (out / "build").mkdir(parents=True)
    (out / "data" / "default").mkdir(parents=True)
    shards = max(1, -(-rows // SHARD_ROWS))
    for s in range(shards):
        start, stop = s * SHARD_ROWS, min(rows, (s + 1) * SHARD_ROWS)
        images = {k: _png(k) for k in range(start // image_share, (stop - 1) // image_share + 1)}
        table = pa.table({
            "id": [f"row{i:07d}" for i in range(start, stop)],
            "image": [{"bytes": images[i // image_share], "path": f"img{i // image_share}.png"} for i in range(start, stop)],
            "conversations": [[{"from": "human", "value": f"<image>\nIs there a finding in region {i % 17}?"},
                               {"from": "gpt", "value": f"Finding {i % 5}: a {i % 7} mm opacity in region {i % 17}."}]
                              for i in range(start, stop)],
            "lineage": [json.dumps({"source_id": f"src{i}", "image_sha256": "0" * 64}) for i in range(start, stop)],
        })
        pq.write_table(table, out / "data" / "default" / f"train-{s:05d}-of-{shards:05d}.parquet", row_group_size=ROW_GROUP)
    (out / "build" / "manifest.json").write_text(json.dumps({"corpus": "bench", "splits": {"default": {"train": rows}}}))
    return sum(p.stat().st_size for p in (out / "data").rglob("*.parquet"))


CHILD = """
import json, resource, sys, time


def peak_kb():
    # VmHWM is this process' own peak (reset at exec); ru_maxrss can carry the parent's over a fork
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


from pathlib import Path
from radcorpora.publish.exports import export
idle = peak_kb()
fmt, build, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
started = time.perf_counter()
settings = export(fmt, build, out, config="default", loss="all_assistant")
seconds = time.perf_counter() - started
rows = sum(f["rows"] for n, f in settings["files"].items() if n != "dataset_info.json")
json_bytes = sum(f["bytes"] for f in settings["files"].values())
print(json.dumps({"format": fmt, "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
                  "peak_rss_mb": round(peak_kb() / 1024, 1),
                  "rss_after_imports_mb": round(idle / 1024, 1), "json_bytes": json_bytes,
                  "images": settings["images"]["count"], "image_bytes": settings["images"]["bytes"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--image-share", type=int, default=3, help="rows sharing one image")
    parser.add_argument("--formats", nargs="*", default=list(FORMATS))
    parser.add_argument("--out", type=Path, default=Path("bench-out/exports"))
    args = parser.parse_args()
    build = args.out / "build"
    started = time.perf_counter()
    build_bytes = write_build(build, args.rows, args.image_share)
    print(f"synthetic build: {args.rows} rows, {build_bytes / 1e6:.1f} MB of shards ({time.perf_counter() - started:.1f} s)")
    results = []
    for fmt in args.formats:
        out = args.out / fmt
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run([sys.executable, "-c", CHILD, fmt, str(build), str(out)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        written = result["json_bytes"] + result["image_bytes"]
        result["bytes_written_vs_build"] = round(written / build_bytes, 2)
        results.append(result)
        print(f"{fmt:9s} {result['rows']} rows in {result['seconds']} s = {result['rows_per_s']} rows/s; "
              f"peak RSS {result['peak_rss_mb']} MB (imports {result['rss_after_imports_mb']} MB); "
              f"wrote {result['json_bytes'] / 1e6:.1f} MB JSON + {result['images']} images {result['image_bytes'] / 1e6:.1f} MB "
              f"= {result['bytes_written_vs_build']}x the build")
    (args.out / "results.json").write_text(json.dumps({"rows": args.rows, "build_bytes": build_bytes,
                                                       "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
