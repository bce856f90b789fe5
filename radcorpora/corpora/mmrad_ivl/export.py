"""The public MMRad-IVL example layout: `<out>/<split>.jsonl` lines `{prompt, response, images}` and the
image files `<out>/IVLImage/<id>/problem_image_1.<ext>` (the full image) and `reasoning_image_<k>.png`
(the crops, in the order of the `<image>` tags of `response`); paths in `images` are relative to the
folder. `radcorpora export` hands the writer one file name (`<format>.csv`): it becomes the index of
the export, one line per split (split, file, rows)."""

from __future__ import annotations

import json
from pathlib import Path

from radcorpora.store import atomic
from radcorpora.store.folder import config_shards, iter_rows, read_manifest

SPLITS = ("train", "benchmark", "validation", "test")


def _ext(data: bytes) -> str:
    return ".png" if data.startswith(b"\x89PNG") else ".jpg" if data.startswith(b"\xff\xd8") else ".bin"


def export_mmrad_ivl_jsonl(build: Path, index: Path, splits: tuple[str, ...] = SPLITS) -> int:
    """Rows written over all splits into `index`'s folder; a split the build lacks is skipped."""
    manifest = read_manifest(build)
    if manifest.get("corpus") != "mmrad-ivl":
        raise ValueError(f"{build}: not an mmrad-ivl build (corpus {manifest.get('corpus')!r})")
    shards = config_shards(build, "default")
    out = index.parent
    out.mkdir(parents=True, exist_ok=True)
    rows, listed = 0, ["split,file,rows"]
    for split in splits:
        lines = []
        for path in shards.get(split, []):
            for _, row in iter_rows(path):
                folder = Path("IVLImage") / row["id"]
                names = []
                for k, image in enumerate(row["images"]):
                    data = image["bytes"]
                    name = folder / (f"problem_image_1{_ext(data)}" if k == 0 else f"reasoning_image_{k}{_ext(data)}")
                    atomic.write_bytes(out / name, data)
                    names.append(name.as_posix())
                lines.append({"prompt": row["prompt"], "response": row["response"], "images": names})
                rows += 1
        if split in shards:
            atomic.write_text(out / f"{split}.jsonl", "".join(json.dumps(line, ensure_ascii=False) + "\n"
                                                              for line in lines))
            listed.append(f"{split},{split}.jsonl,{len(lines)}")
    atomic.write_text(index, "\n".join(listed) + "\n")
    return rows
