"""The whole radimagenet-vqa build: scan -> plan -> chunks -> rejects -> manifest -> card -> validation."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from radcorpora.builders import radimagenet_vqa as rvqa
from radcorpora.builders.engine import clear_state, make_progress, prepare_out_dir
from radcorpora.ops.image_check import ImageCheck
from radcorpora.pipelines.common import BuildOutcome, library_versions, storage_report
from radcorpora.publish import atomic
from radcorpora.publish.card import render_card, write_card
from radcorpora.publish.radimagenet_vqa_card import radimagenet_vqa_card
from radcorpora.schemas.radimagenet_vqa import CONFIG_RECORDS
from radcorpora.schemas.taxonomy import radimagenet_vqa_taxonomy
from radcorpora.sources.radimagenet import load_label_map, scan_radimagenet
from radcorpora.validators import validate_build


def build_radimagenet_vqa(
    source: Path,
    out: Path,
    *,
    seed: int = 0,
    benchmark_images: int = 1000,
    label_map: Path | None = None,
    templates: Path | None = None,
    image_check: ImageCheck = "crc",
    images_per_shard: int = 2000,
    workers: int = 1,
    overwrite: bool = False,
    command: str = "",
    console: Any = None,
    show_progress: bool = True,
) -> BuildOutcome:
    started = time.time()
    labels = load_label_map(label_map)
    config = rvqa.RadImageNetVQAConfig(seed=seed, benchmark_images=benchmark_images,
                                       images_per_shard=images_per_shard, label_map=labels.to_json(),
                                       templates_path=str(templates) if templates else None,
                                       image_check=image_check)
    template_set = rvqa.load_templates(config)
    scan = scan_radimagenet(source, labels)  # raises on unknown folder names, before any work
    fingerprint = rvqa.fingerprint(scan, config, template_set)
    state = prepare_out_dir(out, fingerprint, overwrite)
    if state == "complete":
        manifest = json.loads((out / "build" / "manifest.json").read_text())
        return BuildOutcome(out, state, manifest, None)

    plan = rvqa.plan_build(scan, config)
    with make_progress(console, disable=not show_progress) as progress:
        results = rvqa.run_plan(plan, out, workers, progress)

    rejects = [*scan.rejects, *plan.benchmark_rejects, *(r for res in results for r in res.rejects)]
    atomic.write_jsonl(out / "build" / "rejects.jsonl", [r.model_dump() for r in rejects])
    counts: Counter = Counter(scan.counts) + plan.counts
    for res in results:
        counts.update(res.counts)
    splits: dict[str, dict[str, int]] = {}
    for res in results:
        for relpath, info in res.shards.items():
            _, cfg, name = relpath.split("/")
            split = name.split("-")[0]
            splits.setdefault(cfg, {})[split] = splits.get(cfg, {}).get(split, 0) + info.rows
    if not plan.benchmark_quotas:
        scan.warnings.append("no test images: the benchmark config was not built")
    manifest: dict[str, Any] = {
        "corpus": rvqa.CORPUS,
        "fingerprint": fingerprint,
        "versions": library_versions(),
        "build": {"command": command or f"radcorpora build radimagenet-vqa --source {source} --out {out} --seed {seed}",
                  "workers": workers, "started_unix": round(started, 3)},
        "source": {"dataset": "RadImageNet", "root_name": scan.root.name, "split_csvs": scan.split_csvs,
                   "images_per_split": {k: len(v) for k, v in scan.images.items()}},
        "licence_class": rvqa.LICENCE_CLASS,
        "image_check": config.image_check,
        "prompts": {template_set.id: template_set.content_hash},
        "splits": splits,
        "counts": dict(sorted(counts.items())),
        "rejects": dict(sorted(Counter(r.reason for r in rejects).items())),
        "rejected_rows": len(rejects),
        "benchmark": {"population": plan.benchmark_population, "quotas": plan.benchmark_quotas,
                      "requested_images": benchmark_images},
        "warnings": scan.warnings,
    }
    manifest["storage"] = storage_report(out, counts.get("source_image_bytes", 0))
    card_content = radimagenet_vqa_card(radimagenet_vqa_taxonomy().no_pathology_answer)
    atomic.write_json(out / "build" / "manifest.json", manifest)
    write_card(out, render_card(out, CONFIG_RECORDS, card_content, manifest, default="instruct"))
    report = validate_build(out, image_check=config.image_check)
    atomic.write_json(out / "build" / "validation.json", json.loads(report.model_dump_json()))
    manifest["validation"] = report.summary()
    manifest["build"]["seconds"] = round(time.time() - started, 2)
    atomic.write_json(out / "build" / "manifest.json", manifest)
    write_card(out, render_card(out, CONFIG_RECORDS, card_content, manifest, default="instruct"))
    clear_state(out)
    return BuildOutcome(out, state, manifest, report)
