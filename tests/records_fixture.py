"""A build folder holding the records the next corpora write (no corpus writes them yet): an
`interleaved` config (an ordered `images` list: a whole film and crops of it, with provenance,
`<image>` placeholders across several human turns) and a `preference` config (prompt, chosen,
rejected, scores, image refs). Shards go through `ShardWriter` with the record models, the
manifest and card are laid out as `engine.lifecycle.finish` writes them, so the exports, the
preview and the validators read it as they read a real build.

`write_records_build(root, broken=...)` can also write rows a record model would refuse (a
placeholder too many, one in an answer), straight into the Arrow table, for the validators.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from radcorpora.ops.crop import crop, crop_variant
from radcorpora.publish.card import CardContent, render_card
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import ImageData, Lineage, Turn
from radcorpora.schemas.features import arrow_schema_for
from radcorpora.schemas.interleaved import ImageProvenance, InterleavedRecord
from radcorpora.schemas.preference import PreferencePair
from radcorpora.store.shards import ShardWriter, record_to_row, shard_relpath

CORPUS = "records-fixture"
RECORDS = {"interleaved": InterleavedRecord, "preference": PreferencePair}
LOSS = {"interleaved": "all_assistant", "preference": "preference"}
WIDTH, HEIGHT = 320, 256
REGIONS = (("right upper zone", (0.10, 0.12, 0.45, 0.50)), ("left lower zone", (0.55, 0.50, 0.92, 0.90)))
INTERLEAVED_ROWS = 4
PREFERENCE_ROWS = 4


def film(seed: int) -> bytes:
    """A grey 'radiograph' with a bright block inside each region, so a crop shows its block."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (WIDTH, HEIGHT), 30 + 7 * seed)
    draw = ImageDraw.Draw(img)
    draw.ellipse((20, 16, WIDTH - 20, HEIGHT - 10), fill=80)
    for n, (_, (x1, y1, x2, y2)) in enumerate(REGIONS):
        draw.rectangle((x1 * WIDTH + 6, y1 * HEIGHT + 6, x2 * WIDTH - 6, y2 * HEIGHT - 6), fill=160 + 40 * n)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def film_and_crops(seed: int, parent_shown: bool = True) -> tuple[list[ImageData], list[ImageProvenance]]:
    """[film, crop of region 1, crop of region 2] (or only the crops, their parent not shown)."""
    whole = film(seed)
    source = sha(whole)
    images = [ImageData(bytes=whole, path=f"cxr_{seed}.png")] if parent_shown else []
    provenance = [ImageProvenance(source_sha256=source, source_path=f"files/cxr_{seed}.png")] if parent_shown else []
    for name, xyxy in REGIONS:
        box = Box.from_normalised(*xyxy, width=WIDTH, height=HEIGHT)
        png, cut = crop(whole, box, margin=0.1)
        images.append(ImageData(bytes=png, path=f"cxr_{seed}_{name.replace(' ', '_')}.png"))
        provenance.append(ImageProvenance(source_sha256=source, source_path=f"files/cxr_{seed}.png",
                                          parent=0 if parent_shown else None, box=box, crop=cut,
                                          derivation=crop_variant(box, 0.1)))
    return images, provenance


def lineage(seed: int, images: list[ImageData]) -> Lineage:
    """image_sha256 lists the stored images' hashes, comma-joined, as the image check reads it."""
    return Lineage(source_dataset="fixture", source_id=f"study-{seed}", source_split="train", licence_class="public",
                   image_sha256=",".join(sha(i.bytes) for i in images))


def turn(who: str, text: str) -> Turn:
    return Turn(**{"from": who, "value": text})


def interleaved(seed: int) -> InterleavedRecord:
    """Even seeds: film + two crops over two human turns; odd: the two crops only (parent None)."""
    images, provenance = film_and_crops(seed, parent_shown=seed % 2 == 0)
    if seed % 2 == 0:
        turns = [turn("human", "<image>\nThe frontal film. Any abnormality?"), turn("gpt", f"Two dense areas (study {seed})."),
                 turn("human", f"The {REGIONS[0][0]}: <image>\nthe {REGIONS[1][0]}: <image>\nWhich is denser?"),
                 turn("gpt", f"The {REGIONS[1][0]}.")]
    else:
        turns = [turn("human", f"Crops of study {seed}: <image> and <image>. Compare them."),
                 turn("gpt", "The second crop is brighter.")]
    return InterleavedRecord(id=f"il-{seed:03d}", images=images, image_provenance=provenance, conversations=turns,
                             lineage=lineage(seed, images))


def preference(seed: int) -> PreferencePair:
    """Even seeds: film + crop in a one-turn prompt; odd: three prompt turns, crops only."""
    images, provenance = film_and_crops(10 + seed, parent_shown=seed % 2 == 0)
    images, provenance = images[:2], provenance[:2]
    if seed % 2 == 0:
        prompt = [turn("human", f"<image>\nThe {REGIONS[0][0]} is cut out here: <image>\nIs it abnormal?")]
    else:
        prompt = [turn("human", "<image>\nWhat does this crop show?"), turn("gpt", "A dense area."),
                  turn("human", f"And this one? <image>\nCompare (pair {seed}).")]
    return PreferencePair(id=f"pref-{seed:03d}", images=images, image_provenance=provenance, prompt=prompt,
                          chosen=turn("gpt", f"Yes: a well-defined opacity (pair {seed})."),
                          rejected=turn("gpt", "No abnormality."), chosen_score=0.9 - 0.1 * seed,
                          rejected_score=0.2 - 0.01 * seed, scorer="radiologist", lineage=lineage(10 + seed, images))


def _write(build: Path, config: str, rows: list[dict[str, Any]], shards: dict[str, Any]) -> None:
    rel = shard_relpath(config, "train", 0, 1)
    writer = ShardWriter(build / rel, RECORDS[config])
    writer.write_table(pa.Table.from_pylist(rows, schema=arrow_schema_for(RECORDS[config])))
    shards[rel] = {"rows": len(rows), "sha256": writer.close()}


def write_records_build(root: Path, broken: bool = False) -> Path:
    """The fixture build under `root/records-build`; `broken` adds rows the validators must find:
    interleaved `il-bad-many` (3 placeholders, 2 images) and `il-bad-gpt` (a placeholder in a gpt
    turn); preference `pref-bad-answer` (`<image>` in the chosen answer)."""
    build = root / ("records-broken" if broken else "records-build")
    il = [record_to_row(interleaved(i)) for i in range(INTERLEAVED_ROWS)]
    pref = [record_to_row(preference(i)) for i in range(PREFERENCE_ROWS)]
    if broken:
        many = record_to_row(interleaved(1))
        many["id"] = "il-bad-many"
        many["conversations"][0]["value"] += " <image>"
        gpt = record_to_row(interleaved(3))
        gpt["id"] = "il-bad-gpt"
        gpt["conversations"][0]["value"] = "Crops: <image>. Compare them."
        gpt["conversations"][1]["value"] = "Here: <image> the second is brighter."
        il[1:1] = [many, gpt]
        answer = record_to_row(preference(0))
        answer["id"] = "pref-bad-answer"
        answer["chosen"]["value"] = "Yes, see <image>."
        pref.append(answer)
    shards: dict[str, Any] = {}
    _write(build, "interleaved", il, shards)
    _write(build, "preference", pref, shards)
    manifest = {
        "corpus": CORPUS, "fingerprint": {"hash": "0" * 64, "config": {"seed": 0}}, "versions": {"radcorpora": "test"},
        "build": {"command": f"radcorpora build {CORPUS} --out {build.name}", "executor": "local", "workers": 1},
        "licence_class": "public", "splits": {"interleaved": {"train": len(il)}, "preference": {"train": len(pref)}},
        "shards": shards, "counts": {}, "rejects": {}, "rejected_rows": 0, "excluded": {},
        "configs_asked": sorted(RECORDS), "allow_empty": False, "warnings": [], "files": ["build/rejects.jsonl"],
    }
    (build / "build").mkdir(parents=True, exist_ok=True)
    (build / "build" / "rejects.jsonl").write_text("")
    (build / "build" / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    content = CardContent(pretty_name="Records fixture", summary="Interleaved samples and preference pairs.",
                          licence={"license": "cc-by-4.0"}, licence_text="CC BY 4.0", citations=[],
                          task_categories=["visual-question-answering"], tags=["radiology"], usage="Tests only.")
    (build / "README.md").write_text(render_card(build, RECORDS, content, manifest, default="interleaved"))
    return build
