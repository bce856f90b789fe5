"""`radcorpora leakage` at scale: hashing (sha256 + imagehash pHash) on the engine's executors and
the leakage join, next to the same hashing in a plain Python loop.

Writes two builds of N small varied PNGs in all (64x64 grey: seeded random low-frequency structure
and noise, so no two are alike, to pHash either), half a `train` build and half a `test` build, in 2,000-row shards with
64-row row groups like the builders', lineage with MIMIC-style patient and study ids; a few
hundred test rows share a patient, the bytes, or a JPEG re-encoding with a train row (planted
cases). Then, each in a fresh process (for its own peak RSS):

  radcorpora: `load_index` on both builds (one task per shard on the local pool, --workers W),
              then `find_cases` (the join) at the default pHash distance;
  plain:      for each shard, for each row, sha256 and imagehash.phash of the decoded image,
              one process, no join.

  join:       the join alone on the stored index (read back, no hashing), in a process of its own,
              for the current code and, with --before REV, for ops/leakage.py + ops/phash.py as
              they were at git revision REV (the same index, the same machine load);
  ship:       what partitioning the join across the executors would cost at least: the index
              split by key hash into --workers parts and sent to the local pool (nothing joined).

and reports images hashed per second, the join's time, the ratio (plain seconds / radcorpora
seconds for the same hashing) and peak RSS (the driver's; the workers' largest separately), at
two sizes. The planted cases are checked against what the join finds.

    .venv/bin/python benchmarks/bench_leakage.py --images 100000 25000 --workers 2 --before 6cff651
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARD_ROWS = 2000
ROW_GROUP = 64
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
LINEAGE = pa.struct([("source_dataset", pa.string()), ("source_id", pa.string()), ("patient_id", pa.string()),
                     ("study_id", pa.string()), ("source_split", pa.string())])
SCHEMA = pa.schema([("id", pa.string()), ("image", IMAGE), ("lineage", LINEAGE)])
PLANTED_EVERY = 500  # every 500th test row repeats a train row's patient, bytes or radiograph (as JPEG)


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec (getrusage's ru_maxrss keeps
    the peak of the process that forked us, so a child of a big parent would report the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def picture(k: int) -> np.ndarray:
    """A 64x64 grey image of its own: seeded random low-frequency structure (an 8x8 field blown up
    smoothly, which is what pHash reads, so unrelated pictures stay far apart) plus fine noise."""
    from PIL import Image

    rng = np.random.default_rng(k)
    field = Image.fromarray(rng.uniform(30, 225, (8, 8)).astype(np.float32), mode="F")
    img = np.asarray(field.resize((64, 64), Image.Resampling.BICUBIC)) + rng.normal(0, 6, (64, 64))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_builds(out: Path, images: int) -> dict[str, int]:
    """Two builds (train, test) of images/2 rows each; returns the planted cases per kind."""
    if out.exists():
        shutil.rmtree(out)
    half = images // 2
    planted = {"patient": 0, "sha256": 0, "phash": 0}
    for name, split, base in (("train", "train", 0), ("test", "test", half)):
        shards = {}
        total = -(-half // SHARD_ROWS)
        for s in range(total):
            rows = []
            for k in range(s * SHARD_ROWS, min(half, (s + 1) * SHARD_ROWS)):
                pixels, fmt, patient = picture(base + k), "PNG", f"p{10_000_000 + base + k}"
                if split == "test" and k % PLANTED_EVERY == 0:
                    kind = ("patient", "sha256", "phash")[(k // PLANTED_EVERY) % 3]
                    planted[kind] += 1
                    if kind == "patient":
                        patient = f"p{10_000_000 + k}"  # train row k's patient, another image
                    else:
                        pixels, fmt = picture(k), "PNG" if kind == "sha256" else "JPEG"
                rows.append({"id": f"{name}-{k}", "image": {"bytes": encode(pixels, fmt), "path": f"{k}.png"},
                             "lineage": {"source_dataset": "mimic-cxr", "source_id": f"{name}-dicom-{k}",
                                         "patient_id": patient, "study_id": f"s{name}{k}", "source_split": split}})
            rel = f"data/default/{split}-{s:05d}-of-{total:05d}.parquet"
            (out / name / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / name / rel, row_group_size=ROW_GROUP)
            shards[rel] = {"rows": len(rows), "sha256": hashlib.sha256((out / name / rel).read_bytes()).hexdigest()}
        (out / name / "build").mkdir(parents=True, exist_ok=True)
        (out / name / "build" / "manifest.json").write_text(json.dumps({"corpus": "bench", "shards": shards}))
    return planted


def run_radcorpora(out: Path, workers: int, report: Path) -> None:
    from radcorpora.engine.executors import ExecutorSettings, map_tasks
    from radcorpora.ops.leakage import build_rows, find_cases
    from radcorpora.ops.phash import hash_image, warm
    from radcorpora.schemas.identity import DEFAULT_PHASH_DISTANCE
    from radcorpora.store.identity import load_index

    warm()  # as `radcorpora leakage` does before its workers fork (the plain loop imports first too)
    settings = ExecutorSettings(workers=workers)
    started = time.perf_counter()
    rows, images = [], 0
    for name in ("train", "test"):
        index = load_index(out / name, hash_image, lambda fn, jobs: map_tasks(fn, jobs, settings))
        images += index.lines
        rows.append(build_rows(name, index.path, index.rows, keep=index))
    hashed = time.perf_counter()
    cases = find_cases(rows, DEFAULT_PHASH_DISTANCE)
    joined = time.perf_counter()
    kinds: dict[str, int] = {}
    for case in cases:
        kinds[case["kind"]] = kinds.get(case["kind"], 0) + 1
    report.write_text(json.dumps({
        "images": images, "hash_s": hashed - started, "join_s": joined - hashed, "kinds": kinds,
        "rss_mib": peak_rss_mib(),
        "workers_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def _old_join(rev: str, into: Path):
    """find_cases and build_rows as they were at `rev` (ops/leakage.py and the ops/phash.py it used)."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("leakage", "phash"):
        text = subprocess.run(["git", "show", f"{rev}:radcorpora/ops/{name}.py"], check=True, capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parent.parent).stdout
        (into / f"before_{name}.py").write_text(text.replace("from radcorpora.ops.phash import", "from before_phash import"))
    sys.path.insert(0, str(into))
    import before_leakage

    return before_leakage.build_rows, before_leakage.find_cases


def run_join(out: Path, report: Path, rev: str | None) -> None:
    """The join alone, on the index `run_radcorpora` stored (read back: no image is decoded)."""
    from radcorpora.ops.phash import hash_image
    from radcorpora.schemas.identity import DEFAULT_PHASH_DISTANCE
    from radcorpora.store.identity import load_index

    if rev:
        build_rows, find_cases = _old_join(rev, out / "before-code")
    else:
        from radcorpora.ops.leakage import build_rows, find_cases
    indexes = [load_index(out / name, hash_image) for name in ("train", "test")]
    assert not any(index.indexed for index in indexes)
    # the code at `rev` took the index as one table (read here, before the clock starts); now the
    # file is read in batches by the join itself, so its time includes reading
    tables = [index.table for index in indexes] if rev else [index.path for index in indexes]
    rss_index = peak_rss_mib()
    started = time.perf_counter()
    cases = find_cases([build_rows(name, table, index.rows)
                        for name, table, index in zip(("train", "test"), tables, indexes)], DEFAULT_PHASH_DISTANCE)
    report.write_text(json.dumps({"join_s": time.perf_counter() - started, "cases": len(cases),
                                  "digest": hashlib.sha256(json.dumps(cases, sort_keys=True).encode()).hexdigest(),
                                  "rss_index_mib": rss_index,
                                  "rss_mib": peak_rss_mib()}))


def _received(part) -> int:
    return part.num_rows


def run_ship(out: Path, report: Path, workers: int) -> None:
    """The least a partitioned join pays: the stored index split by hash into `workers` parts,
    pickled to the local pool and back (a row count); no joining."""
    import pyarrow.compute as pc

    from radcorpora.engine.executors import ExecutorSettings, map_tasks

    table = pa.concat_tables([pq.read_table(out / name / "build" / "identity.parquet").replace_schema_metadata(None)
                              for name in ("train", "test")])
    started = time.perf_counter()
    # by the pHash (an image's sha256 and ids would need their own pass: this is the least)
    part = pc.fill_null(table["phash"], 0).to_numpy() % np.uint64(workers)
    parts = [table.filter(pa.array(part == k)) for k in range(workers)]
    split = time.perf_counter()
    sent = sum(map_tasks(_received, parts, ExecutorSettings(workers=workers)))
    assert sent == table.num_rows
    report.write_text(json.dumps({"split_s": split - started, "ship_s": time.perf_counter() - split}))


def write_synthetic(out: Path, lines: int) -> dict[str, dict[str, int]]:
    """Two identity index files (train, test) of lines/2 lines each, as `load_index` stores them,
    without images: MIMIC-style ids, random sha256 and uniform random pHashes; every 500th test line
    repeats a train line's patient, bytes or (3 bits off) pHash. Returns each build's shard rows."""
    from radcorpora.schemas.identity import IDENTITY_SCHEMA

    out.mkdir(parents=True, exist_ok=True)
    half = lines // 2
    rng = np.random.default_rng(lines)
    train_hash = rng.integers(0, 2**63, half, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    rows_of = {}
    for name, split, base in (("train", "train", 0), ("test", "test", half)):
        k = np.arange(half)
        patient = [f"p{10_000_000 + base + i}" for i in range(half)]
        sha = [f"{base + i:064x}" for i in range(half)]
        phash = train_hash.copy() if split == "train" else \
            rng.integers(0, 2**63, half, dtype=np.int64).astype(np.uint64) * np.uint64(2)
        if split == "test":
            for i in range(0, half, PLANTED_EVERY):
                kind = (i // PLANTED_EVERY) % 3
                if kind == 0:
                    patient[i] = f"p{10_000_000 + i}"
                elif kind == 1:
                    sha[i], phash[i] = f"{i:064x}", train_hash[i]
                else:
                    phash[i] = train_hash[i] ^ np.uint64(0b10101)
        shard = [f"data/default/{split}-{i // SHARD_ROWS:05d}-of-{-(-half // SHARD_ROWS):05d}.parquet" for i in range(half)]
        table = pa.table({
            "shard": shard, "config": ["default"] * half, "split": [split] * half,
            "row": pa.array(k % SHARD_ROWS, pa.int64()), "id": [f"{name}-{i}" for i in range(half)],
            "image": pa.array(np.zeros(half, np.int32)), "source_dataset": ["mimic-cxr"] * half,
            "source_id": [f"{name}-dicom-{i}" for i in range(half)], "patient_id": patient,
            "study_id": [f"s{name}{i}" for i in range(half)], "sha256": sha, "phash": pa.array(phash, pa.uint64()),
        }, schema=IDENTITY_SCHEMA)
        pq.write_table(table, out / f"{name}.parquet", row_group_size=1 << 16)
        rows_of[name] = {s: int(n) for s, n in zip(*np.unique(shard, return_counts=True))}
    (out / "rows.json").write_text(json.dumps(rows_of))
    return rows_of


def run_synthetic_join(out: Path, report: Path, rev: str | None, workers: int = 1) -> None:
    """The join alone over the synthetic index files: now (read in batches), or as it was at `rev`
    (the index files read whole, as that code took them)."""
    from radcorpora.schemas.identity import DEFAULT_PHASH_DISTANCE

    rows_of = json.loads((out / "rows.json").read_text())
    rss_start = peak_rss_mib()
    started = time.perf_counter()
    if rev:
        build_rows, find_cases = _old_join(rev, out / "before-code")
        indexes = [pq.read_table(out / f"{name}.parquet") for name in ("train", "test")]
    else:
        from radcorpora.ops.leakage import build_rows, find_cases

        indexes = [out / f"{name}.parquet" for name in ("train", "test")]
    builds = [build_rows(name, index, rows_of[name]) for name, index in zip(("train", "test"), indexes)]
    if workers > 1:  # the join's parts and pHash block pairs on the local pool, as `leakage --workers N`
        from radcorpora.engine.executors import ExecutorSettings, map_tasks

        pool = ExecutorSettings(workers=workers)
        cases = find_cases(builds, DEFAULT_PHASH_DISTANCE, map_tasks=lambda fn, jobs: map_tasks(fn, jobs, pool),
                           workers=workers)
    else:
        cases = find_cases(builds, DEFAULT_PHASH_DISTANCE)
    kinds: dict[str, int] = {}
    for case in cases:
        kinds[case["kind"]] = kinds.get(case["kind"], 0) + 1
    report.write_text(json.dumps({"join_s": time.perf_counter() - started, "kinds": kinds, "rss_start_mib": rss_start,
                                  "digest": hashlib.sha256(json.dumps(cases, sort_keys=True).encode()).hexdigest(),
                                  "rss_mib": peak_rss_mib(),
                                  "workers_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def synthetic(args: argparse.Namespace) -> None:
    """Join alone on synthetic indexes of growing size, now and (--before REV) as it was."""
    from radcorpora.ops.leakage import HASH_BLOCK, PART_LINES

    print(f"synthetic indexes (no images), join alone (index read included); parts of {PART_LINES:,} lines, "
          f"pHash blocks of {HASH_BLOCK:,}")
    for lines in args.synthetic:
        out = args.out / f"synthetic-{lines}"
        write_synthetic(out, lines)
        results = {}
        runs = [("now", None, 1)] + ([(f"now, {args.workers} workers", None, args.workers)] if args.workers > 1 else [])
        runs += [(f"at {args.before}", args.before, 1)] if args.before else []
        for label, rev, workers in runs:
            report = out / f"join-{rev or 'now'}-{workers}.json"
            subprocess.run([sys.executable, __file__, "--child", "synthetic", "--out", str(out), "--workers",
                            str(workers), *(["--before", rev] if rev else [])], check=True)
            results[label] = json.loads(report.read_text())
        digests = {r["digest"] for r in results.values()}
        same = "" if len(results) == 1 else " (the same cases)" if len(digests) == 1 else " (OTHER CASES)"
        for label, r in results.items():
            workers = f", largest worker {r['workers_rss_mib']:.0f} MiB" if r.get("workers_rss_mib") else ""
            print(f"  {lines:>10,} lines, {label}: join {r['join_s']:.2f} s, peak RSS {r['rss_mib']:.0f} MiB "
                  f"({r['rss_start_mib']:.0f} at start{workers}), cases {r['kinds']}{same}")


def run_plain(out: Path, report: Path) -> None:
    """The same hashing, the obvious way: every row of every shard, one at a time."""
    import imagehash
    from PIL import Image

    started = time.perf_counter()
    images = 0
    found = []
    for shard in sorted(out.glob("*/data/default/*.parquet")):
        for row in pq.read_table(shard, columns=["image"]).column("image").to_pylist():
            data = row["bytes"]
            found.append((hashlib.sha256(data).hexdigest(), str(imagehash.phash(Image.open(io.BytesIO(data))))))
            images += 1
    report.write_text(json.dumps({"images": images, "hash_s": time.perf_counter() - started,
                                  "rss_mib": peak_rss_mib()}))


def fresh(mode: str, out: Path, workers: int, before: str | None = None) -> dict:
    report = out / f"{mode}{'-before' if before else ''}.json"
    if mode in ("radcorpora", "plain"):
        for index in out.glob("*/build/identity.parquet"):
            index.unlink()  # hash every image again
    subprocess.run([sys.executable, __file__, "--child", mode, "--out", str(out), "--workers", str(workers),
                    *(["--before", before] if before else [])], check=True)
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[100_000, 25_000], help="Sizes to run (images in all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-out/leakage"))
    parser.add_argument("--before", help="Also time the join as it was at this git revision (e.g. 6cff651)")
    parser.add_argument("--synthetic", type=int, nargs="*", default=[],
                        help="Also (or, with --images 0, only) join synthetic indexes of these many lines")
    parser.add_argument("--child", choices=("radcorpora", "plain", "join", "ship", "synthetic"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "synthetic":
        return run_synthetic_join(args.out, args.out / f"join-{args.before or 'now'}-{args.workers}.json", args.before,
                                  args.workers)
    if args.child == "radcorpora":
        return run_radcorpora(args.out, args.workers, args.out / "radcorpora.json")
    if args.child == "plain":
        return run_plain(args.out, args.out / "plain.json")
    if args.child == "join":
        return run_join(args.out, args.out / f"join{'-before' if args.before else ''}.json", args.before)
    if args.child == "ship":
        return run_ship(args.out, args.out / "ship.json", args.workers)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}")
    if args.synthetic:
        synthetic(args)
    for images in (n for n in args.images if n):
        out = args.out / str(images)
        started = time.perf_counter()
        planted = write_builds(out, images)
        print(f"\n{images:,} images written in {time.perf_counter() - started:.1f} s "
              f"({sum(p.stat().st_size for p in out.rglob('*.parquet')) / 2**20:.0f} MiB); planted {planted}")
        ours = fresh("radcorpora", out, args.workers)
        join = fresh("join", out, args.workers)  # on the index the radcorpora run stored
        old = fresh("join", out, args.workers, args.before) if args.before else None
        ship = fresh("ship", out, args.workers)
        plain = fresh("plain", out, args.workers)
        assert ours["images"] == plain["images"] == images
        found = ours["kinds"]
        assert found.get("patient", 0) >= planted["patient"] and found.get("sha256", 0) >= planted["sha256"], found
        assert found.get("phash", 0) >= planted["phash"], found
        print(f"  radcorpora ({args.workers} workers): hashing {ours['hash_s']:.1f} s = "
              f"{images / ours['hash_s']:,.0f} images/s; join {ours['join_s']:.2f} s; cases {found}; "
              f"peak RSS {ours['rss_mib']:.0f} MiB (largest worker {ours['workers_rss_mib']:.0f} MiB)")
        print(f"  plain loop (1 process): hashing {plain['hash_s']:.1f} s = {images / plain['hash_s']:,.0f} images/s; "
              f"peak RSS {plain['rss_mib']:.0f} MiB")
        print(f"  ratio (plain s / radcorpora s, hashing): {plain['hash_s'] / ours['hash_s']:.2f}x")
        print(f"  join alone (stored index read back): {join['join_s']:.2f} s, {join['cases']} cases; peak RSS "
              f"{join['rss_mib']:.0f} MiB ({join['rss_index_mib']:.0f} MiB before joining)")
        if old:
            same = "the same cases" if old["digest"] == join["digest"] else "OTHER CASES"
            print(f"  join at {args.before}: {old['join_s']:.2f} s, {old['cases']} cases ({same}); peak RSS "
                  f"{old['rss_mib']:.0f} MiB ({old['rss_index_mib']:.0f} MiB with the index read whole, before joining)")
        print(f"  partitioning the join over {args.workers} workers would cost at least: split {ship['split_s']:.2f} s"
              f" + shipping the parts {ship['ship_s']:.2f} s (nothing joined yet)")


if __name__ == "__main__":
    main()
