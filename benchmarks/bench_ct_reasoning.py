"""ct-reasoning's volume work (hash, read, window and store N axial slices per volume) on a generated
CT-RATE-format source, next to a plain loop a user would write for the same slices (nibabel, numpy
windows, Pillow PNGs, `datasets` Parquet), side by side in one run.

The build runs with `--llm offline` (the LLM roles' stand-in, so the figure is the engine's and the
volumes', not a provider's) in a subprocess; the plain loop runs in a subprocess of its own, so both
pay their interpreter start and imports and peak RSS is measured per process.

    python benchmarks/bench_ct_reasoning.py --scans 200 --side 192 --depth 96 --work /tmp/bench-ct
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WINDOWS = ((1500, -600), (400, 40), (1800, 400))  # lung, soft tissue, bone: width, level
INTERCEPT = -1024.0


def make_source(root: Path, scans: int, side: int, depth: int) -> int:
    """`scans` CT-RATE train scans (one reconstruction each) of side x side x depth int16 voxels: a
    body ellipse with lungs and a nodule at a seeded place, stored as HU + 1024 (no header scaling,
    the intercept in the metadata CSV, as the release has it), and a report naming the nodule."""
    import nibabel as nib

    from radcorpora.demo.ct import METADATA_HEADER, REPORT_HEADER
    from radcorpora.demo.mimic_cxr import csv_bytes
    from radcorpora.sources.ct_rate import LABELS

    dataset = root / "dataset"
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    body = ((i - side / 2) / (side * 0.42)) ** 2 + ((j - side / 2) / (side * 0.32)) ** 2 <= 1
    lungs = [((i - c) / (side * 0.14)) ** 2 + ((j - side / 2) / (side * 0.2)) ** 2 <= 1 for c in (side * 0.3, side * 0.7)]
    reports, metadata, labels = [], [], []
    for n in range(scans):
        hu = np.full((side, side, depth), -1000, dtype=np.int16)
        plane = np.where(body, 40, -1000).astype(np.int16)
        for lung in lungs:
            plane[lung] = -850
        hu[:, :, depth // 8:depth - depth // 8] = plane[:, :, None]
        ci, cj, ck = int(rng.integers(side // 4, side // 3)), int(rng.integers(side // 3, 2 * side // 3)), depth // 2
        hu[ci - 3:ci + 3, cj - 3:cj + 3, ck - 2:ck + 2] = 60
        hu += rng.integers(-20, 20, size=hu.shape, dtype=np.int16)  # noise, so files compress like scans
        name = f"train_{n}_a_1.nii.gz"
        path = dataset / "train" / f"train_{n}" / f"train_{n}_a" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = nib.Nifti1Image((hu.astype(np.int32) + 1024).astype(np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))
        image.header.set_data_dtype(np.int16)
        nib.save(image, str(path))
        side_word = "right" if ci >= side // 2 else "left"
        reports.append((name, "Cough.", "Non-contrast chest CT.",
                        f"A 4 mm solid nodule is seen in the {side_word} upper lobe. The heart is normal in size.",
                        f"Solitary pulmonary nodule in the {side_word} upper lobe; follow-up CT advised."))
        metadata.append((name, "BenchVendor", "CHEST", 1, int(INTERCEPT), "HU", "[0.75, 0.75]", 1.5, side, side, depth,
                         "M", "061Y"))
        labels.append((name, *(int(label == "Lung nodule") for label in LABELS)))
    for folder, file, header, rows in (("radiology_text_reports", "train_reports.csv", REPORT_HEADER, reports),
                                       ("metadata", "train_metadata.csv", METADATA_HEADER, metadata),
                                       ("multi_abnormality_labels", "train_predicted_labels.csv", ("VolumeName", *LABELS),
                                        labels)):
        (dataset / folder).mkdir(parents=True, exist_ok=True)
        (dataset / folder / file).write_bytes(csv_bytes(header, rows))
    return scans


def plain_loop(source: Path, out: Path, slices: int) -> dict[str, float]:
    """What a user's script does for the same images: per volume, sha256 of the file, HU from the
    metadata intercept, `slices` evenly spaced axial slices inside the body, the three windows as
    RGB, a PNG each; then one `datasets` Parquet of the rows."""
    import hashlib

    import datasets
    import nibabel as nib
    from PIL import Image

    started = time.perf_counter()
    intercepts = {}
    with open(source / "dataset" / "metadata" / "train_metadata.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            intercepts[row["VolumeName"]] = float(row["RescaleIntercept"])
    rows = []
    for path in sorted((source / "dataset" / "train").rglob("*.nii.gz")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        hu = np.asanyarray(nib.load(str(path)).dataobj.get_unscaled()).astype(np.float32) + intercepts[path.name]
        inside = np.flatnonzero((hu > -500).mean(axis=(0, 1)) >= 0.05)
        first, last = (int(inside[0]), int(inside[-1])) if len(inside) else (0, hu.shape[2] - 1)
        picks = sorted({first + int((k + 0.5) * (last - first + 1) / slices) for k in range(slices)})
        images = []
        for k in picks:
            plane = hu[:, :, k]
            rgb = np.stack([np.clip(np.floor((plane - (level - width / 2)) / width * 255 + 0.5), 0, 255)
                            for width, level in WINDOWS], axis=-1).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(rgb).save(buffer, format="PNG", compress_level=6)
            images.append({"bytes": buffer.getvalue(), "path": f"{path.name}_{k}.png"})
        rows.append({"volume": path.name, "sha256": digest, "images": images})
    features = datasets.Features({"volume": datasets.Value("string"), "sha256": datasets.Value("string"),
                                  "images": datasets.Sequence(datasets.Image())})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(out / "plain.parquet"))
    return {"seconds": time.perf_counter() - started, "volumes": len(rows)}


# Runs a command and prints the peak RSS (KiB) of the largest process in its tree, so each run is
# measured on its own (RUSAGE_CHILDREN of this script would be the maximum over every run so far).
_WRAP = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the largest process) of one command run on its own."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _WRAP, *command], capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--side", type=int, default=192)
    parser.add_argument("--depth", type=int, default=96)
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-ct"))
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)  # internal: run the plain loop on this source
    args = parser.parse_args()
    if args.plain:
        out = args.work / "plain"
        out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(plain_loop(args.plain, out, args.slices)))
        return
    shutil.rmtree(args.work, ignore_errors=True)
    source = args.work / "ct-rate"
    t0 = time.perf_counter()
    make_source(source, args.scans, args.side, args.depth)
    made = time.perf_counter() - t0
    build = [sys.executable, "-m", "radcorpora", "build", "ct-reasoning", "--ct-rate", str(source), "--llm", "offline",
             "--slices", str(args.slices), "--questions-per-report", "2", "--workers", str(args.workers),
             "--cache", str(args.work / "cache.sqlite")]
    plain = [sys.executable, __file__, "--plain", str(source), "--work", str(args.work), "--slices", str(args.slices)]
    runs = []
    for which in ("build", "plain", "plain", "build"):  # A B B A
        out = args.work / f"out-{len(runs)}"
        command = [*build, "--out", str(out)] if which == "build" else plain
        seconds, rss = timed(command)
        runs.append({"which": which, "seconds": round(seconds, 2), "peak_rss_mib": round(rss, 1)})
        if which == "build":
            shutil.rmtree(out, ignore_errors=True)  # the second build must not find the first
    builds = [r["seconds"] for r in runs if r["which"] == "build"]
    plains = [r["seconds"] for r in runs if r["which"] == "plain"]
    size = sum(p.stat().st_size for p in (source / "dataset" / "train").rglob("*.nii.gz"))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": os.getloadavg(), "scans": args.scans, "voxels": [args.side, args.side, args.depth],
        "source_mib": round(size / 2**20, 1), "source_seconds": round(made, 1), "slices": args.slices,
        "workers": args.workers, "runs_in_order": runs,
        "build_seconds": round(sum(builds) / len(builds), 2), "plain_loop_seconds": round(sum(plains) / len(plains), 2),
        "build_volumes_per_second": round(args.scans / (sum(builds) / len(builds)), 1),
        "plain_volumes_per_second": round(args.scans / (sum(plains) / len(plains)), 1),
        "build_speed_over_plain": round((sum(plains) / len(plains)) / (sum(builds) / len(builds)), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
