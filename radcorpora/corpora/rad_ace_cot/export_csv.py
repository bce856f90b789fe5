"""Export of a rad-ace-cot build to the public RAD-ACE CSV columns: filename (list), modality,
cot_output, question."""

from __future__ import annotations

import csv
from pathlib import Path

from radcorpora.store import atomic
from radcorpora.store.folder import config_shards, iter_rows, read_manifest

COLUMNS = ("filename", "modality", "cot_output", "question")


def export_rad_ace_csv(build: Path, out: Path, splits: tuple[str, ...] = ("train", "validation")) -> int:
    """Rows written. `filename` is the Python-list text of the sample's image paths, as in the
    published CSV; `modality` is the normalised class the build computed (CT or MR) — the source's
    free text stays in the build rows (`source_modality`) for provenance. A missing parent folder
    of `out` is created."""
    manifest = read_manifest(build)
    if manifest.get("corpus") != "rad-ace-cot":
        raise ValueError(f"{build}: not a rad-ace-cot build (corpus {manifest.get('corpus')!r})")
    shards = config_shards(build, "default")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.tmp_path_for(out)
    rows = 0
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for split in splits:
            for path in shards.get(split, []):
                for _, row in iter_rows(path):
                    names = [image["path"] for image in row["images"]]
                    writer.writerow([repr(names), row["modality"], row["cot_output"], row["question"]])
                    rows += 1
    atomic.commit(tmp, out)
    return rows
