"""Build mmrad-ivl from generated GEMeX-ThinkVG + MIMIC-CXR-JPG sources of N traces and compare, side
by side in one run, with the way a user would write the same rows without us: for each trace open
the JPEG with Pillow, crop each group's rectangle, encode it as PNG, and write rows {images (full +
crops), prompt, response} with `datasets.Dataset.from_generator` (an `Image` sequence feature),
then `to_parquet`. Reports crops/s, rows/s, peak RSS and the ratio (the `datasets` way's seconds
over the build's: above 1 means the build is faster).

    python benchmarks/bench_mmrad_ivl.py --traces 1000 --work /tmp/bench-mmrad

The build is the CLI in a subprocess: `radcorpora build mmrad-ivl ... --llm offline --auditor
offline --audit-sample 0` with an empty answer cache of its own, so its time includes the offline
LLM stand-in (summarise, reflect, cross_audit: three requests per trace through the runner), the
aggregation, the crops (through `derived_once`), the records, the shards and the validation at
the end. The `datasets` way reads the rectangles (`steps[].crop_pixels`), prompt and response from
our build's shards (timed apart, a stand-in for the user's own generation), decodes each image
once and crops it; it does no LLM work, writes three columns and validates nothing.

Sources: a pool of demo MIMIC-CXR-JPG studies (radcorpora/demo/mimic_cxr.py) and their demo
GEMeX-ThinkVG questions (radcorpora/demo/gemex.plan_questions, the deliberately bad rows left out),
copied N times under new subject / study / dicom ids; each JPEG gets a COM segment with its name,
so every file is byte-distinct (pixels unchanged) and hashing sees N images, and the crop cache
(keyed by path) N x groups crops. Each question's reasoning and the report's last section end with
"Read as case <n>.", so every trace's LLM requests are distinct: otherwise the copies of a pool trace send identical requests and
all but the first are answered from the answer cache the build writes as it goes.

A B B A: build, `datasets` way, `datasets` way, build; the figures are means, each run is listed
under `runs_in_order`. Peak RSS of the build is the first build's, via
resource.getrusage(RUSAGE_CHILDREN) before any `datasets` run (a maximum over every child waited
for); the `datasets` way reports its own (RUSAGE_SELF at its end). `--breakdown` adds a third
build with timers wrapped around the build module's functions (same CLI, no profiler): read
sources, the LLM pipeline, the crops, the records, the shards; with the manifest's phases.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

POOL_SUBJECTS = 12  # the demo writer's own size: ~19 frontal images with reports


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI (and after a JFIF APP0, which should come first):
    pixels unchanged, bytes (and hash) unique."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    at = 2
    if jpeg[2:4] == b"\xff\xe0":
        at = 4 + struct.unpack(">H", jpeg[4:6])[0]
    body = text.encode()
    return jpeg[:at] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[at:]


def _gz_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(text.getvalue().encode())


def _read_gz_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def make_sources(root: Path, traces: int) -> dict[str, Path | int]:
    """N traces: the demo pool's frontal studies copied under new ids (two studies per patient,
    the official split per patient 4 train : 1 validate : 1 test)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from radcorpora.demo.gemex import QUESTION_TYPES, plan_questions
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr
    from radcorpora.sources.mimic_cxr import scan_mimic_cxr

    pool_root = root / "pool"
    write_demo_mimic_cxr(pool_root / "mimic-cxr", pool_root / "reports", n_subjects=POOL_SUBJECTS)
    scan = scan_mimic_cxr(pool_root / "mimic-cxr", pool_root / "reports")
    plans: dict[str, list[dict]] = defaultdict(list)
    for plan in plan_questions(scan.images):
        if not plan.get("bad"):
            plans[plan["image_path"].rsplit("/", 1)[1][:-4]].append(plan)
    meta_header, meta_rows = _read_gz_csv(pool_root / "mimic-cxr" / "mimic-cxr-2.0.0-metadata.csv.gz")
    label_header, label_rows = _read_gz_csv(pool_root / "mimic-cxr" / "mimic-cxr-2.0.0-chexpert.csv.gz")
    meta_of = {row[0]: row for row in meta_rows}
    labels_of = {row[1]: row for row in label_rows}
    pool = []  # (image, its questions, report text, metadata row, label row or None)
    for image in scan.images:
        report = pool_root / "reports" / "files" / f"p{image.subject_id[:2]}" / f"p{image.subject_id}" / f"s{image.study_id}.txt"
        if image.image_id in plans and report.is_file() and image.image_id in meta_of:
            pool.append((Path(image.path).read_bytes(), plans[image.image_id], report.read_text(),
                         meta_of[image.image_id], labels_of.get(image.study_id)))
    shutil.rmtree(pool_root)

    mimic, reports, gemex = root / "mimic-cxr", root / "mimic-cxr-reports", root / "gemex-thinkvg"
    metadata, splits, labels, patients = [], [], [], []
    columns: dict[str, list[str]] = {k: [] for k in ("question_type", "image_path", "question", "response", "thinkVG")}
    image_bytes = 0
    for n in range(traces):
        jpeg, questions, report, meta, label = pool[n % len(pool)]
        patient = n // 2
        subject, study = str(10_000_000 + patient * 2003), str(50_000_000 + n)
        dicom = hashlib.sha1(f"bench-{n}".encode()).hexdigest()
        dicom = "-".join(dicom[i:i + 8] for i in range(0, 40, 8))
        split = ("train", "train", "train", "train", "validate", "test")[patient % 6]
        rel = f"p{subject[:2]}/p{subject}/s{study}"
        (mimic / "files" / rel).mkdir(parents=True, exist_ok=True)
        data = with_comment(jpeg, f"radcorpora-bench {dicom}")
        (mimic / "files" / rel / f"{dicom}.jpg").write_bytes(data)
        image_bytes += len(data)
        (reports / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
        (reports / "files" / f"{rel}.txt").write_text(report.rstrip("\n") + f"\n Read as case {n}.\n")
        metadata.append([dicom, subject, study, *meta[3:]])
        splits.append([dicom, study, subject, split])
        if label is not None:
            labels.append([subject, study, *label[2:]])
        if n % 2 == 0:
            patients.append([subject, "F" if patient % 2 else "M", "60", "2150", "2014 - 2016", ""])
        for q in questions:
            answer = ", ".join(q["answer"]) if isinstance(q["answer"], list) else q["answer"]
            columns["question_type"].append(QUESTION_TYPES[q["kind"]])
            columns["image_path"].append(f"/{rel}/{dicom}.jpg")
            columns["question"].append(q["question"])
            columns["response"].append(f"<answer>{answer}</answer>")
            columns["thinkVG"].append(f"{q['reasoning']} Read as case {n}.")  # distinct LLM requests per trace
    _gz_csv(mimic / "mimic-cxr-2.0.0-metadata.csv.gz", meta_header, metadata)
    _gz_csv(mimic / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], splits)
    _gz_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz", label_header, labels)
    _gz_csv(mimic / "patients.csv.gz", ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group",
                                        "dod"], patients)
    (gemex / "data").mkdir(parents=True)
    pq.write_table(pa.table(columns), gemex / "data" / "train-00000-of-00001.parquet")
    return {"gemex_thinkvg": gemex, "mimic_cxr": mimic, "mimic_cxr_reports": reports,
            "image_bytes": image_bytes, "questions": len(columns["question"]), "pool_images": len(pool)}


def warm(root: Path) -> None:
    """Read every source file, so each timed run starts with the sources in the page cache (this
    VM pages out file cache left idle for a few seconds)."""
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                while handle.read(1 << 20):
                    pass


DATASETS_WAY = """
import sys, pathlib, resource, time, pyarrow.parquet as pq
build, files, out = (pathlib.Path(a) for a in sys.argv[1:4])
read_start = time.perf_counter()
import io
from PIL import Image as PILImage
from datasets import Dataset, Features, Image, List, Value
features = Features({"images": List(Image()), "prompt": Value("string"), "response": Value("string")})
import_end = time.perf_counter()
rows = []
for shard in sorted((build / "data" / "default").glob("*.parquet")):
    t = pq.read_table(shard, columns=["id", "subject_id", "study_id", "prompt", "response", "steps"])
    for i, sub, study, p, r, steps in zip(*(t.column(n).to_pylist() for n in t.column_names)):
        rows.append((files / f"p{sub[:2]}" / f"p{sub}" / f"s{study}" / f"{i}.jpg", p, r,
                     [s["crop_pixels"] for s in steps]))
start = time.perf_counter()
print(f"imports {import_end - read_start:.3f}")
print(f"read {start - import_end:.3f}")  # the texts and boxes, read from our build (the user's own generation)
def gen():
    for path, prompt, response, rectangles in rows:
        data = path.read_bytes()
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()
            crops = []
            for rectangle in rectangles:
                buffer = io.BytesIO()
                image.crop(tuple(rectangle)).save(buffer, format="PNG", compress_level=6)
                crops.append({"bytes": buffer.getvalue(), "path": None})
        yield {"images": [{"bytes": data, "path": None}, *crops], "prompt": prompt, "response": response}
ds = Dataset.from_generator(gen, features=features, cache_dir=str(out / "cache"))
ds.to_parquet(str(out / "default.parquet"))
print(f"write {time.perf_counter() - start:.3f}")
print(f"rows {len(ds)} crops {sum(len(r[3]) for r in rows)}")
print(f"peak_kib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
"""

BREAKDOWN = """
import atexit, json, os, sys, time
from radcorpora.corpora.mmrad_ivl import build as b
seconds, calls = {}, {}
def timed(name, fn):
    def wrapped(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            calls[name] = calls.get(name, 0) + 1
    return wrapped
os.fsync = timed("fsync_every_caller", os.fsync)
make_pipeline = b.pipeline
def pipeline(settings):
    graph = make_pipeline(settings)
    graph.run = timed("llm_pipeline", graph.run)
    return graph
b.pipeline = pipeline
b.read_sources = timed("read_sources", b.read_sources)
b.make_record = timed("make_record_with_crops", b.make_record)
b.derived_once = timed("derived_once", b.derived_once)
b.crop = timed("crop", b.crop)
b.write_split = timed("write_split", b.write_split)
b.aggregate = timed("aggregate", b.aggregate)
target = sys.argv.pop(1)
atexit.register(lambda: open(target, "w").write(json.dumps({"seconds": seconds, "calls": calls})))
from radcorpora.cli import run
run()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/radcorpora-bench-mmrad"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true", help="also one build with timers per function")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = args.work / str(args.traces)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    made = make_sources(work / "src", args.traces)
    make_seconds = time.perf_counter() - started
    subprocess.run(["sync"], check=False)
    import radcorpora  # byte-compiled, as an installed package is (see bench_radimagenet_vqa.py)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(radcorpora.__file__).parent)],
                   check=True, stdout=subprocess.DEVNULL)
    source_root = work / "src"

    def build_cmd(out: Path, prefix: list[str]) -> list[str]:
        return [*prefix, "build", "mmrad-ivl", "--gemex-thinkvg", str(made["gemex_thinkvg"]),
                "--mimic-cxr", str(made["mimic_cxr"]), "--mimic-cxr-reports", str(made["mimic_cxr_reports"]),
                "--llm", "offline", "--auditor", "offline", "--audit-sample", "0", "--workers", str(args.workers),
                "--cache", str(out.parent / f"{out.name}-cache.sqlite"), "--out", str(out)]

    def build(out: Path) -> tuple[float, int]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        warm(source_root)
        start = time.perf_counter()
        subprocess.run(build_cmd(out, [sys.executable, "-c", "from radcorpora.cli import run; run()"]), check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        return wall, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)

    def datasets_way(build_out: Path) -> dict[str, float]:
        target = work / "naive"
        warm(source_root)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", DATASETS_WAY, str(build_out), str(made["mimic_cxr"] / "files"),
                               str(target)], check=True, capture_output=True, text=True)
        process_wall = time.perf_counter() - start
        said = {}
        for line in done.stdout.splitlines():
            words = line.split()
            if words and words[0] in ("imports", "read", "write", "peak_kib"):
                said[words[0]] = float(words[1])
            if words and words[0] == "rows":
                said["rows"], said["crops"] = int(words[1]), int(words[3])
        said["parquet_bytes"] = (target / "default.parquet").stat().st_size
        shutil.rmtree(target)
        said["with_start_and_imports"] = process_wall - said["read"]
        return said

    out = work / "out"
    first_build, peak_kib = build(out)
    naive = [datasets_way(out), datasets_way(out)]
    second_build, _ = build(work / "out-again")
    shutil.rmtree(work / "out-again")
    builds = [first_build, second_build]
    build_wall = sum(builds) / 2
    write_wall = sum(n["write"] for n in naive) / 2
    with_start = sum(n["with_start_and_imports"] for n in naive) / 2

    manifest = json.loads((out / "build/manifest.json").read_text())
    rows = sum(n for splits in manifest["splits"].values() for n in splits.values())
    crops = naive[0]["crops"]
    assert naive[0]["rows"] == rows, (naive[0]["rows"], rows)
    stages = manifest["llm"]["pipeline"]["stages"]
    result = {
        "traces_generated": args.traces,
        "questions": made["questions"],
        "source_image_bytes": made["image_bytes"],
        "sources_made_seconds": round(make_seconds, 1),
        "rows": rows,
        "crops": crops,
        "splits": manifest["splits"]["default"],
        "rejected_rows": manifest.get("rejected_rows"),
        "runs_in_order": {"build": round(builds[0], 2), "datasets_way": [round(n["write"], 2) for n in naive],
                          "build_again": round(builds[1], 2)},
        "build_seconds": round(build_wall, 2),
        "build_phases_first": manifest["build"]["phases"],
        "llm_requests_sent": {name: s["sent"] for name, s in stages.items()},
        "rows_per_second": round(rows / build_wall, 1),
        "crops_per_second": round(crops / build_wall, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "datasets_way_read_seconds": round(sum(n["read"] for n in naive) / 2, 2),
        "datasets_way_imports_seconds": round(sum(n["imports"] for n in naive) / 2, 2),
        "datasets_way_seconds": round(write_wall, 2),
        "datasets_way_with_start_and_imports_seconds": round(with_start, 2),
        "datasets_way_rows_per_second": round(rows / write_wall, 1),
        "datasets_way_crops_per_second": round(crops / write_wall, 1),
        "datasets_way_peak_rss_mib": round(max(n["peak_kib"] for n in naive) / 1024, 1),
        "datasets_way_over_build": round(write_wall / build_wall, 2),
        "datasets_way_with_start_over_build": round(with_start / build_wall, 2),
        "output_bytes": {"build_shards": manifest["storage"], "datasets_way": naive[0]["parquet_bytes"]},
        "valid": manifest["validation"]["valid"],
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "workers": args.workers,
    }
    if args.breakdown:
        target = work / "breakdown.json"
        out3 = work / "out-breakdown"
        warm(source_root)
        start = time.perf_counter()
        subprocess.run(build_cmd(out3, [sys.executable, "-c", BREAKDOWN, str(target)]), check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        timers = json.loads(target.read_text())
        seconds = timers["seconds"]
        phases = json.loads((out3 / "build/manifest.json").read_text())["build"]["phases"]
        # nested: make_record_with_crops > derived_once > crop; the fsyncs include derived_once's
        result["breakdown_one_build"] = {
            "process_wall": round(wall, 2), "phases": phases,
            "seconds": {k: round(v, 2) for k, v in sorted(seconds.items())}, "calls": timers["calls"],
            "derived_once_less_crop": round(seconds["derived_once"] - seconds["crop"], 2),
            "build_less_llm_pipeline_seconds": round(build_wall - seconds["llm_pipeline"], 2)}
        result["datasets_way_over_build_less_llm"] = round(
            write_wall / result["breakdown_one_build"]["build_less_llm_pipeline_seconds"], 2)
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
