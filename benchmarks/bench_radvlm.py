"""Build rate of radvlm per task (issue 11 item 9): generate the project's demo chest X-ray sources
at a larger size, then build each task on its own, all tasks together, and report_generation plus
conversations with the offline LLM stand-in, one build at a time, in this process, through
`radcorpora.corpora.build` (workers=2 by default). A durable copy of the source tree (`cp -r` then
`sync`) runs in the same script as a reference for this machine's I/O at that moment.

    .venv/bin/python benchmarks/bench_radvlm.py --work /tmp/bench-radvlm
    .venv/bin/python benchmarks/bench_radvlm.py --profile abnormality_detection   # + cProfile, 1 worker
    .venv/bin/python benchmarks/bench_radvlm.py --keep ...; then --reuse-sources --own-sources --profile llm

`--own-sources` also builds each task from only the folders it reads (the main runs pass all eight,
and every build scans every source it is given). `--profile llm` profiles the LLM build.

Per build: rows (the manifest's splits), instances (the manifest's `instances_<task>` counts),
wall seconds of `build(...)` (validation included) and the manifest's `build.phases`, rows/s, and
the unique source image bytes behind the config against the bytes written for it. Source bytes per
config: each distinct image (lineage.image_sha256) counted once, as its stored bytes when it was
kept as read (JPEG/PNG) and as its DICOM file's size when it was converted.

Sizes: `write_demo_mimic_cxr`, `write_demo_vindr_cxr` and `write_demo_padchest_gr` take a size;
CheXpert and CheXpert-Plus have a fixed plan of 14 patients, so this script widens the plan's
patient groups (`radcorpora.demo.chexpert.PATIENT_GROUPS`) in its own process. Chest ImaGenome and
MS-CXR are written for the generated MIMIC images. The demo images are small (about 176x208 JPEG,
PNG and DICOM up to 208x240), so `--max-side` (default 1024, as a user converting VinDr would
pass) does not shrink them: the DICOM cost measured is decoding, windowing and PNG encoding.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

TASKS = ("report_generation", "abnormality_classification", "anatomical_grounding", "abnormality_grounding",
         "abnormality_detection", "phrase_grounding")

# The sources each task reads (what a user building only that task would pass).
OWN_SOURCES = {
    "report_generation": ("mimic_cxr", "mimic_cxr_reports", "chexpert_plus"),
    "abnormality_classification": ("mimic_cxr", "mimic_cxr_reports", "chexpert"),
    "anatomical_grounding": ("mimic_cxr", "mimic_cxr_reports", "chest_imagenome"),
    "abnormality_grounding": ("vindr_cxr",),
    "abnormality_detection": ("vindr_cxr",),
    "phrase_grounding": ("mimic_cxr", "mimic_cxr_reports", "ms_cxr", "padchest_gr"),
}


def make_sources(root: Path, args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Any]]:
    import radcorpora.demo.chexpert as chexpert_demo
    from radcorpora.demo.chest_imagenome import write_demo_chest_imagenome
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr
    from radcorpora.demo.ms_cxr import write_demo_ms_cxr
    from radcorpora.demo.padchest_gr import write_demo_padchest_gr
    from radcorpora.demo.vindr_cxr import write_demo_vindr_cxr
    from radcorpora.sources.mimic_cxr import scan_mimic_cxr

    n = args.chexpert_patients
    chexpert_demo.PATIENT_GROUPS = (("train", 1, n), ("valid", 64541, max(1, n // 10)),
                                    ("test", 64741, max(1, n // 20)))
    sources = {"mimic_cxr": root / "mimic-cxr", "mimic_cxr_reports": root / "mimic-cxr-reports",
               "chexpert": root / "chexpert", "chexpert_plus": root / "chexpert-plus",
               "chest_imagenome": root / "chest-imagenome", "vindr_cxr": root / "vindr-cxr",
               "ms_cxr": root / "ms-cxr", "padchest_gr": root / "padchest-gr"}
    seconds: dict[str, float] = {}
    written: dict[str, Any] = {}

    def step(name: str, fn: Any, *a: Any, **k: Any) -> None:
        start = time.perf_counter()
        written[name] = fn(*a, **k)
        seconds[name] = round(time.perf_counter() - start, 2)

    step("mimic_cxr", write_demo_mimic_cxr, sources["mimic_cxr"], sources["mimic_cxr_reports"],
         n_subjects=args.mimic_subjects)
    step("chexpert", chexpert_demo.write_demo_chexpert, sources["chexpert"])
    step("chexpert_plus", chexpert_demo.write_demo_chexpert_plus, sources["chexpert_plus"])
    mimic = scan_mimic_cxr(sources["mimic_cxr"], sources["mimic_cxr_reports"]).images
    step("chest_imagenome", write_demo_chest_imagenome, sources["chest_imagenome"], mimic)
    step("ms_cxr", write_demo_ms_cxr, sources["ms_cxr"], mimic)
    step("vindr_cxr", write_demo_vindr_cxr, sources["vindr_cxr"], n_train=args.vindr_train, n_test=args.vindr_test)
    step("padchest_gr", write_demo_padchest_gr, sources["padchest_gr"], n_studies=args.padchest_studies)
    return sources, {"seconds": seconds, "written": written}


def tree_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def image_tree_bytes(sources: dict[str, Path]) -> dict[str, int]:
    """Bytes of the image files of each source (PadChest-GR: its split zip, which holds the PNGs)."""
    patterns = {"mimic_cxr": "*.jpg", "chexpert": "*.jpg", "chexpert_plus": "*.png", "vindr_cxr": "*.dicom",
                "padchest_gr": "PadChest_GR.zip.*"}
    return {name: sum(p.stat().st_size for p in sources[name].rglob(pattern)) for name, pattern in patterns.items()}


def config_bytes(out: Path, dicom_sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per config: distinct images, their source bytes, the image bytes stored, from the shards."""
    result = {}
    for folder in sorted(p for p in (out / "data").iterdir() if p.is_dir()):
        seen: dict[str, tuple[int, int]] = {}
        for shard in sorted(folder.glob("*.parquet")):
            table = pq.read_table(shard, columns=["image", "lineage"])
            images = table.column("image").to_pylist()
            lineages = table.column("lineage").to_pylist()
            for image, lineage in zip(images, lineages):
                digest = lineage["image_sha256"]
                if digest in seen or image is None or image.get("bytes") is None:
                    continue
                stored = len(image["bytes"])
                source = dicom_sizes[lineage["source_id"]] if lineage.get("image_converted") else stored
                seen[digest] = (source, stored)
        result[folder.name] = {"images": len(seen), "source_image_bytes": sum(s for s, _ in seen.values()),
                               "stored_image_bytes": sum(b for _, b in seen.values())}
    return result


def one_build(label: str, sources: dict[str, Path], settings: Any, out: Path, workers: int,
              dicom_sizes: dict[str, int], llm_settings: Any = None) -> dict[str, Any]:
    from radcorpora.registry import build

    shutil.rmtree(out, ignore_errors=True)
    gc.collect()
    start = time.perf_counter()
    build("radvlm", sources, settings, out, workers=workers, llm_settings=llm_settings)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "build" / "manifest.json").read_text())
    counts = manifest.get("counts", {})
    per_config = config_bytes(out, dicom_sizes)
    output = manifest["storage"]["output_bytes"]
    configs = {}
    for config, splits in sorted(manifest["splits"].items()):
        rows = sum(splits.values())
        b = per_config.get(config, {})
        configs[config] = {
            "rows": rows, "instances": counts.get(f"instances_{config}"),
            "distinct_images": b.get("images"), "source_image_bytes": b.get("source_image_bytes"),
            "output_bytes": output.get(config),
            "output_over_source": round(output[config] / b["source_image_bytes"], 3) if b.get("source_image_bytes") else None,
        }
    rows = sum(c["rows"] for c in configs.values())
    print(f"[{label}] {rows} rows in {wall:.1f} s ({rows / wall:.0f} rows/s), phases {manifest['build']['phases']}",
          file=sys.stderr, flush=True)
    return {"rows": rows, "seconds": round(wall, 2), "rows_per_second": round(rows / wall, 1),
            "manifest_seconds": manifest["build"]["seconds"], "phases": manifest["build"]["phases"],
            "valid": manifest["validation"]["valid"], "configs": configs,
            "llm": manifest.get("llm"),
            "llm_counts": {k: v for k, v in counts.items() if k.startswith(("prior_", "conversation", "llm"))}}


def profile_build(label: str, sources: dict[str, Path], settings: Any, out: Path, llm_settings: Any = None) -> dict[str, Any]:
    """In-process, one worker, under cProfile: the top functions by cumulative and own time."""
    from radcorpora.registry import build

    shutil.rmtree(out, ignore_errors=True)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    build("radvlm", sources, settings, out, workers=1, llm_settings=llm_settings)
    profiler.disable()
    total = time.perf_counter() - start
    result: dict[str, Any] = {"build": label, "seconds_profiled_1_worker": round(total, 2)}
    for key in ("cumulative", "tottime"):
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats(key).print_stats(40)
        result[f"top_{key}"] = buffer.getvalue().splitlines()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/radcorpora-bench-radvlm"))
    parser.add_argument("--mimic-subjects", type=int, default=2000)
    parser.add_argument("--chexpert-patients", type=int, default=1000)
    parser.add_argument("--vindr-train", type=int, default=1200)
    parser.add_argument("--vindr-test", type=int, default=300)
    parser.add_argument("--padchest-studies", type=int, default=1000)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--skip-all", action="store_true", help="no build of every task together")
    parser.add_argument("--skip-llm", action="store_true", help="no report_generation + conversations build")
    parser.add_argument("--own-sources", action="store_true",
                        help="also build each task from only the sources it reads (the main runs pass all of them)")
    parser.add_argument("--profile", default="",
                        help="TASK, or 'llm' (report_generation + conversations): also build it once under cProfile")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--reuse-sources", action="store_true",
                        help="reuse the sources a --keep run left in --work when written at the same sizes")
    args = parser.parse_args()
    args.sizes_key = [args.mimic_subjects, args.chexpert_patients, args.vindr_train, args.vindr_test,
                      args.padchest_studies]

    from radcorpora.corpora.radvlm.build import RadVLMConfig
    from radcorpora.llm.session import LLMSettings

    work = args.work
    src, record = work / "src", work / "sources.json"
    reuse = args.reuse_sources and record.exists() and json.loads(record.read_text())["sizes"] == args.sizes_key
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    if reuse:
        generated = json.loads(record.read_text())["generated"]
        sources = {k: src / v for k, v in generated["folders"].items()}
    else:
        sources, generated = make_sources(src, args)
        generated["folders"] = {k: v.name for k, v in sources.items()}
        record.write_text(json.dumps({"sizes": args.sizes_key, "generated": generated}))
    source_files, source_bytes = tree_bytes(src)
    images_bytes = image_tree_bytes(sources)
    dicom_sizes = {p.stem: p.stat().st_size for p in sources["vindr_cxr"].rglob("*.dicom")}
    subprocess.run(["sync"], check=False)
    start = time.perf_counter()
    subprocess.run(["sh", "-c", f"cp -r '{src}' '{work / 'copy'}' && sync"], check=True)
    copy_wall = time.perf_counter() - start
    shutil.rmtree(work / "copy", ignore_errors=True)
    print(f"sources: {source_files} files, {source_bytes / 1e6:.1f} MB in {sum(generated['seconds'].values()):.1f} s; "
          f"durable copy {copy_wall:.2f} s", file=sys.stderr, flush=True)

    common = {"max_side": args.max_side, "prior_removal": "rules"}
    builds: dict[str, Any] = {}
    for task in [t for t in args.tasks.split(",") if t]:
        builds[task] = one_build(task, sources, RadVLMConfig(tasks=[task], **common), work / "out" / task,
                                 args.workers, dicom_sizes)
        shutil.rmtree(work / "out" / task, ignore_errors=True)
    if args.own_sources:
        for task in [t for t in args.tasks.split(",") if t]:
            own = {k: v for k, v in sources.items() if k in OWN_SOURCES[task]}
            builds[f"{task} (own sources)"] = one_build(f"{task} (own sources)", own, RadVLMConfig(tasks=[task], **common),
                                                        work / "out" / task, args.workers, dicom_sizes)
            shutil.rmtree(work / "out" / task, ignore_errors=True)
    if not args.skip_all:
        builds["all_tasks"] = one_build("all_tasks", sources, RadVLMConfig(**common), work / "out" / "all",
                                        args.workers, dicom_sizes)
        shutil.rmtree(work / "out" / "all", ignore_errors=True)
    llm_kw = {"max_side": args.max_side, "llm": "offline", "prior_removal": "llm", "conversations": args.conversations}
    if not args.skip_llm:
        cache = work / "llm-cache.sqlite"
        settings = RadVLMConfig(tasks=["report_generation"], **llm_kw)
        builds["report_generation+llm"] = one_build(
            "report_generation+llm (empty cache)", sources, settings, work / "out" / "llm", args.workers,
            dicom_sizes, LLMSettings(cache_path=str(cache)))
        builds["report_generation+llm_cached"] = one_build(
            "report_generation+llm (warm cache)", sources, settings, work / "out" / "llm2", args.workers,
            dicom_sizes, LLMSettings(cache_path=str(cache)))
    profile = None
    if args.profile == "llm":
        profile = profile_build("report_generation + conversations, offline LLM, empty cache", sources,
                                RadVLMConfig(tasks=["report_generation"], **llm_kw), work / "profiled",
                                LLMSettings(cache_path=str(work / "llm-cache-profiled.sqlite")))
    elif args.profile:
        profile = profile_build(args.profile, sources, RadVLMConfig(tasks=[args.profile], **common), work / "profiled")

    result = {
        "sizes": {k: getattr(args, k) for k in ("mimic_subjects", "chexpert_patients", "vindr_train", "vindr_test",
                                                "padchest_studies", "max_side", "conversations", "workers")},
        "sources_written": generated["written"],
        "source_generation_seconds": generated["seconds"],
        "sources_reused": reuse,
        "source_tree": {"files": source_files, "bytes": source_bytes, "image_bytes_by_source": images_bytes},
        "durable_copy_seconds": round(copy_wall, 2),
        "durable_copy_mb_per_s": round(source_bytes / 1e6 / copy_wall, 1),
        "builds": builds,
        "profile": profile,
        "script_seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_at_end": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
