"""Build radimagenet-vqa from a generated RadImageNet tree of N distinct 224x224 PNGs and compare, side by
side in one run, with a durable copy of the tree (`cp -r` then `sync`), the floor (read the tree, write
the two image-embedding configs' bytes durably) and the way a user would write the same alignment +
instruct rows without us (`datasets.Dataset.from_generator` with an `Image` feature, then `to_parquet`). Reports wall time, samples/s, peak RSS and storage amplification.

The `datasets` way is timed twice: `datasets_way_seconds` is its write alone (the measure the
targets were set with), `datasets_way_with_start_and_imports_seconds` adds the interpreter start
and `import datasets` a user's script pays too (the build's own time has always included its
start-up). Neither counts reading the texts from our build, a stand-in for the user's own generation.

    python benchmarks/bench_radimagenet_vqa.py --images 20000 --work /tmp/bench
    python benchmarks/bench_radimagenet_vqa.py --images 5000 --work /tmp/bench --before 2ed90c8
`build_start_up_seconds`: the build command's own start (`build radimagenet-vqa --help`, best of 3).
Peak RSS is the larger of the two builds' (each build process and its workers, from `wait4`).
The build and the `datasets` way run twice each in A B B A order, the durable copy before and
after: figures are the means, each run is listed under `runs_in_order`. With `--before REV` the
radcorpora package as it was at that git revision (`git archive`, byte-compiled) builds the same
tree twice as well, side by side: now, before, datasets, datasets, before, now; its figures are
under `before`. `load_average` is the machine's 1-minute load when the runs start and end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
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


def warm(root: Path) -> None:
    """Read every file of the tree, so each timed run starts with the source in the page cache.
    This machine (a VM) runs DAMON proactive reclaim, which pages out file cache left idle for a
    few seconds: without this, whichever run came after a pause read its source from disk."""
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                while handle.read(1 << 20):
                    pass


def timed(cmd: list[str], source: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB: the largest of the process and the children it waited for,
    from wait4) of a child command that reads `source` (warmed first)."""
    warm(source)
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, cmd)
    return wall, usage.ru_maxrss


def code_at(rev: str, into: Path) -> Path:
    """The radcorpora package as it was at git revision `rev`, byte-compiled, under `into`: a
    PYTHONPATH that builds with it (the same interpreter and libraries as now)."""
    repo = Path(__file__).resolve().parent.parent
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "radcorpora"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into / "radcorpora")], check=True,
                   stdout=subprocess.DEVNULL)
    return into


FLOOR = """
import os, sys, pathlib
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True)
files = sorted(p for p in src.rglob('*.png'))
with open(out / 'alignment.bin', 'wb') as a, open(out / 'instruct.bin', 'wb') as b:
    for f in files:
        data = f.read_bytes()
        a.write(data); b.write(data)
    for h in (a, b):
        h.flush(); os.fsync(h.fileno())
"""

DATASETS_WAY = """
import sys, pathlib, pyarrow.parquet as pq
from datasets import Dataset, Features, Image, Value, List
build, src, out = (pathlib.Path(a) for a in sys.argv[1:4])
turns = List({"from": Value("string"), "value": Value("string")})
features = Features({"image": Image(), "id": Value("string"), "conversations": turns})
import time
read_start = time.perf_counter()
texts = {}
for config in ("alignment", "instruct"):
    rows = []
    for shard in sorted((build / "data" / config).glob("*.parquet")):
        t = pq.read_table(shard, columns=["id", "conversations", "lineage"])
        rows += [(i, c, l["source_id"]) for i, c, l in zip(*(t.column(n).to_pylist() for n in ("id", "conversations", "lineage")))]
    texts[config] = rows
start = time.perf_counter()
print(f"read {start - read_start:.3f}")  # the texts, read from our build (a stand-in for the user's own generation)
for config, rows in texts.items():
    def gen(rows=rows):
        for i, c, source_id in rows:
            yield {"image": {"bytes": (src / source_id).read_bytes(), "path": None}, "id": i, "conversations": c}
    ds = Dataset.from_generator(gen, features=features, cache_dir=str(out / "cache" / config))
    ds.to_parquet(str(out / f"{config}.parquet"))
print(f"write {time.perf_counter() - start:.3f}")
"""


def shard_bytes(build: Path) -> dict[str, str]:
    """Each data file's sha256, by path in the build."""
    import hashlib

    return {str(p.relative_to(build)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((build / "data").rglob("*.parquet"))}


def profile_breakdown(source: Path, out: Path) -> dict[str, float]:
    """In-process, one worker, under cProfile: where a build's time goes, by phase."""
    import cProfile
    import pstats

    from radcorpora.corpora.radimagenet_vqa.build import make_settings
    from radcorpora.registry import build

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    build("radimagenet-vqa", {"source": source}, make_settings(), out)
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)

    def cumulative(*names: str, where: str = "") -> float:
        """Cumulative seconds of the functions so named (in files ending with `where`); names must
        not nest, or their time is counted twice."""
        return round(sum(v[3] for k, v in stats.items() if k[2] in names and k[0].endswith(where)), 2)
    generate = cumulative("question_values", "caption_turns", "render_question", where="radimagenet_vqa.py")
    return {
        "total": round(total, 2),
        "scan_and_plan": cumulative("prepare", where="radimagenet_vqa.py"),
        "read_and_sha256_files": cumulative("read_file", where="source_index.py"),
        "image_check": cumulative("check_image"),
        "generate_rows": generate,
        "arrow_columns": round(cumulative("chunk_batches") - generate, 2),
        "row_checks": cumulative("check_chunk_table"),
        "parquet_write_and_shard_sha256": cumulative("write_table", where="shards.py"),
        "fsync": cumulative("fsync"),
        "validate_at_end": cumulative("validate_finished_build"),
        "manifest_card": cumulative("render_card", "write_card"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/radcorpora-bench"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-check", choices=("crc", "full"), default="crc")
    parser.add_argument("--profile", action="store_true", help="also run once in-process under cProfile (breakdown)")
    parser.add_argument("--before", metavar="REV", help="also build with radcorpora as it was at this git revision")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    work = args.work / str(args.images)
    shutil.rmtree(work, ignore_errors=True)
    source = work / "src"
    source_bytes = make_tree(source, args.images)
    subprocess.run(["sync"], check=False)
    # As an installed package is: byte-compiled. An editable install under PYTHONDONTWRITEBYTECODE
    # (this machine's default) would otherwise recompile every radcorpora module at each start
    # (~0.3 s), while `datasets` comes from site-packages already compiled.
    import radcorpora
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(radcorpora.__file__).parent)],
                   check=True, stdout=subprocess.DEVNULL)

    def copy() -> float:
        target = work / "copy"
        wall, _ = timed(["sh", "-c", f"cp -r '{source}' '{target}' && sync"], source)
        shutil.rmtree(target)
        return wall

    before_env = None
    if args.before:
        code = code_at(args.before, work / "before-code")
        before_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}

    # Builds run in the work folder: `python -c` puts its working folder first on sys.path, so a
    # run from the repository would import the checkout's radcorpora whatever PYTHONPATH says.
    def console(env: dict[str, str] | None) -> list[str]:
        """The command line as the `radcorpora` script runs it: radcorpora.console where the tree
        has it (`python -m radcorpora`), else (revisions before it) cli.run."""
        probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(bool(u.find_spec('radcorpora.console')))"],
                               env=env, cwd=work, capture_output=True, text=True, check=True)
        return [sys.executable, "-m", "radcorpora"] if probe.stdout.strip() == "True" else \
            [sys.executable, "-c", "from radcorpora.cli import run; run()"]

    def build(out: Path, env: dict[str, str] | None = None) -> tuple[float, int]:
        return timed([*console(env), "build", "radimagenet-vqa",
                      "--source", str(source), "--out", str(out), "--workers", str(args.workers),
                      "--image-check", args.image_check], source, env, cwd=work)

    def datasets_way(build_out: Path) -> tuple[float, float]:
        """(the write alone, the write plus interpreter start and `import datasets`): the
        timed section leaves those out, while the build's time includes its own start-up."""
        target = work / "naive"
        warm(source)
        started = time.perf_counter()
        naive = subprocess.run([sys.executable, "-c", DATASETS_WAY, str(build_out), str(source), str(target)],
                               check=True, capture_output=True, text=True)
        process_wall = time.perf_counter() - started
        shutil.rmtree(target)
        said = dict(line.split() for line in naive.stdout.strip().splitlines() if line.startswith(("read ", "write ")))
        return float(said["write"]), process_wall - float(said["read"])

    def start_up(env: dict[str, str] | None = None) -> float:
        """The build command's fixed start: `build radimagenet-vqa --help` (interpreter, imports,
        the generated command), best of three."""
        command = console(env)
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([*command, "build", "radimagenet-vqa", "--help"], check=True, stdout=subprocess.DEVNULL,
                           env=env, cwd=work)
            walls.append(time.perf_counter() - started)
        return min(walls)

    # A B B A: the disk slows down as a run writes more (dirty pages still flushing, throttling),
    # so whichever goes second is penalised; two builds and two `datasets` runs in mirrored
    # order, and the copy before and after, cancel that drift to first order.
    copies = [copy()]
    floor_wall, _ = timed([sys.executable, "-c", FLOOR, str(source), str(work / "floor")], source)
    shutil.rmtree(work / "floor")
    subprocess.run(["sync"], check=False)
    out = work / "out"
    first_build, peak_kib = build(out)
    old_builds: list[tuple[float, int]] = []
    if before_env:
        old_builds.append(build(work / "out-before", before_env))
    naive = [datasets_way(out), datasets_way(out)]
    if before_env:
        old_builds.append(build(work / "out-before-again", before_env))
    second_build, second_peak_kib = build(work / "out-again")
    peak_kib = max(peak_kib, second_peak_kib)
    copies.append(copy())
    builds = [first_build, second_build]
    build_wall = sum(builds) / 2
    copy_wall = sum(copies) / 2
    datasets_wall = sum(w for w, _ in naive) / 2
    datasets_with_start = sum(s for _, s in naive) / 2
    manifest = json.loads((out / "build/manifest.json").read_text())
    rows = sum(n for splits in manifest["splits"].values() for n in splits.values())
    images_built = sum(manifest["source"]["images_per_split"][s] for s in ("train", "validation"))
    storage = manifest["storage"]["output_bytes"]
    result = {
        "images": args.images,
        "source_bytes": source_bytes,
        "runs_in_order": {"durable_copy": round(copies[0], 2), "floor": round(floor_wall, 2),
                          "build": round(builds[0], 2), "datasets_way": [round(w, 2) for w, _ in naive],
                          "build_again": round(builds[1], 2), "durable_copy_again": round(copies[1], 2)},
        "durable_copy_seconds": round(copy_wall, 2),
        "floor_seconds": round(floor_wall, 2),
        "build_seconds": round(build_wall, 2),
        "build_start_up_seconds": round(start_up(), 3),
        "build_over_durable_copy": round(build_wall / copy_wall, 2),
        "datasets_way_seconds": round(datasets_wall, 2),
        "datasets_way_over_build": round(datasets_wall / build_wall, 2),
        "datasets_way_with_start_and_imports_seconds": round(datasets_with_start, 2),
        "datasets_way_with_start_over_build": round(datasets_with_start / build_wall, 2),
        "images_per_second": round(args.images / build_wall, 1),
        "rows_per_second": round(rows / build_wall, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "storage_per_config_over_its_source": {
            c: round(storage[c] / (source_bytes * (images_built if c != "benchmark" else 1) / args.images), 3)
            for c in ("alignment", "instruct")
        },
        "whole_build_over_source": round(sum(storage.values()) / source_bytes, 3),
        "valid": manifest["validation"]["valid"],
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "workers": args.workers,
        "image_check": args.image_check,
    }
    if before_env:
        old_wall = sum(w for w, _ in old_builds) / 2
        same = all((work / d / "build/manifest.json").exists() for d in ("out-before", "out-before-again"))
        result["before"] = {
            "revision": args.before,
            "package": subprocess.run([sys.executable, "-c", "import radcorpora; print(radcorpora.__file__)"],
                                      check=True, env=before_env, cwd=work, capture_output=True, text=True).stdout.strip(),
            "builds_in_order": [round(w, 2) for w, _ in old_builds],
            "build_seconds": round(old_wall, 2),
            "build_start_up_seconds": round(start_up(before_env), 3),
            "datasets_way_over_build": round(datasets_wall / old_wall, 2),
            "datasets_way_with_start_over_build": round(datasets_with_start / old_wall, 2),
            "peak_rss_mib": round(max(k for _, k in old_builds) / 1024, 1),
            "shards_identical_to_now": same and shard_bytes(work / "out-before") == shard_bytes(out),
        }
    result["load_average"] = [round(load_at_start, 2), round(os.getloadavg()[0], 2)]
    if args.profile:
        result["breakdown_one_worker_profiled"] = profile_breakdown(source, work / "profiled")
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
