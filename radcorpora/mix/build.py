"""Writing a mix: `prepare` reads the inputs' light columns (ids, turns: never an image) and plans
every shard; each chunk then reads the rows of its shard from the input shards (only the row
groups holding them: an input is read in its own order, so each row group is read about once) and
writes them as examples. The examples of one source row share its image: they are written side by
side, row groups end only between source rows, and the image column is dictionary-encoded, so each
image is stored once per row group, as read (never re-encoded)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from radcorpora.mix.plan import (
    MIX_SPLITS,
    MixError,
    Unit,
    interleave,
    read_units,
    renderer,
    select,
    shards_of,
)
from radcorpora.mix.records import MixRecord, turn_problem
from radcorpora.mix.settings import MixInput, MixSettings
from radcorpora.publish.views import question_example
from radcorpora.schemas.common import Reject
from radcorpora.schemas.interleaved import IMAGE_PLACEHOLDER, placeholder_problem
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.store.folder import BuildFolderError, open_shard, read_card_yaml, read_manifest
from radcorpora.store.shards import ROW_GROUP_ROWS, ShardWriter, shard_relpath
from radcorpora.store.state import ChunkResult, ChunkSpec, ShardInfo

CONFIG = "default"
LICENCE_ORDER = ("public", "restricted", "credentialed")  # least to most restrictive


def label_of(item: MixInput, inputs: list[MixInput]) -> str:
    """How ids name an input's corpus: its corpus, or its build folder where two builds of one
    corpus are mixed."""
    builds = {i.source for i in inputs if i.corpus == item.corpus}
    return item.corpus if len(builds) == 1 else f"{item.corpus}@{item.build}"


def input_fingerprint(build: Path, configs: list[str]) -> dict[str, Any]:
    """What a mix depends on in one input: its corpus and the checksum, size and modification
    time of each shard of the configs taken, so an input rebuilt, or a shard changed in place, is
    never answered with the mix made from it before."""
    manifest = read_manifest(build)
    listed = manifest.get("shards") or {}
    shards = {}
    for config in configs:
        for path in sorted((build / "data" / config).glob("*.parquet")):
            rel = str(path.relative_to(build))
            stat = path.stat()
            shards[rel] = [(listed.get(rel) or {}).get("sha256"), stat.st_size, stat.st_mtime_ns]
    return {"corpus": manifest.get("corpus"), "shards": shards}


_SECTION = r"^## {title}\n(?P<body>.*?)(?=^## |\Z)"


def card_parts(build: Path) -> dict[str, Any]:
    """An input card's licence metadata, licence text and citations (BibTeX blocks)."""
    try:
        data = read_card_yaml(build)
        text = (build / "README.md").read_text(encoding="utf-8")
    except (BuildFolderError, OSError):
        return {"licence": {}, "licence_text": "", "citations": []}
    def section(title: str) -> str:
        match = re.search(_SECTION.format(title=re.escape(title)), text, flags=re.MULTILINE | re.DOTALL)
        return match["body"].strip() if match else ""
    citations = re.findall(r"```bibtex\n(.*?)```", section("Citation"), flags=re.DOTALL)
    return {"licence": {k: data[k] for k in ("license", "license_name", "license_link") if data.get(k)},
            "licence_text": section("Licence"), "citations": [c.strip() for c in citations]}


def mix_licence(settings: MixSettings, _sources: dict[str, Path]) -> str:
    """The most restrictive licence class of the inputs: credentialed data stays credentialed."""
    return max((i.licence_class for i in settings.inputs), key=LICENCE_ORDER.index)


def _configs(settings: MixSettings) -> dict[str, list[str]]:
    configs: dict[str, list[str]] = defaultdict(list)
    for item in settings.inputs:
        configs[item.source].append(item.config)
    return {key: sorted(cs) for key, cs in sorted(configs.items())}


def mix_fingerprint(sources: dict[str, Path], settings: MixSettings) -> dict[str, Any]:
    """The inputs' part of a mix's fingerprint (the settings are the rest)."""
    return {"inputs": {key: input_fingerprint(sources[key], cs) for key, cs in _configs(settings).items()}}


def prepare(sources: dict[str, Path], settings: MixSettings, log: Callable[[str], None]) -> Prepared:
    inputs = settings.inputs
    configs = _configs(settings)
    fingerprint = mix_fingerprint(sources, settings)
    per_split: dict[str, list[list[Unit]]] = {split: [[] for _ in inputs] for split in MIX_SPLITS}
    dropped: dict[int, int] = {}
    for number, item in enumerate(inputs):
        units = read_units(sources[item.source], number, item)
        drop = set(settings.drop.get(f"{item.source}/{item.config}", ()))
        for split, found in units.items():
            kept = [u for u in found if not (split == "train" and u.split_row in drop)]
            if split == "train":
                dropped[number] = sum(u.examples for u in found) - sum(u.examples for u in kept)
            per_split[split][number] = kept
        if not units.get("train"):
            raise MixError(f"{item.build}:{item.config}: no training rows to mix")
    ordered: dict[str, list[Unit]] = {}
    for split, units in per_split.items():
        taken = select(units, settings) if split == "train" else units
        # each input in its own row order (so chunks read its shards front to back), spread through the split
        taken = [sorted(us, key=lambda u: (u.shard, u.row)) for us in taken]
        if any(taken):
            ordered[split] = interleave(taken, settings)
    if not ordered.get("train"):
        raise MixError("the mix holds no training rows (all dropped or none selected)")
    log(", ".join(f"{split}: {sum(u.examples for u in us)} examples" for split, us in ordered.items()))
    cards = {key: card_parts(sources[key]) for key in sorted(configs)}
    plan = {"ordered": ordered, "paths": {key: str(Path(path).resolve()) for key, path in sources.items()}, "dropped": dropped, "cards": cards,
            "available": {split: [sum(u.examples for u in us) for us in units] for split, units in per_split.items()}}
    return Prepared(fingerprint=fingerprint, plan=plan)


def run(prepared: Prepared, settings: MixSettings, ctx: BuildContext) -> StageOutput:
    plan = prepared.plan
    sources = plan["paths"]
    specs = []
    for split, units in plan["ordered"].items():
        pieces = shards_of(units, settings.rows_per_shard)
        for index, piece in enumerate(pieces):
            payload = {"split": split, "index": index, "total": len(pieces), "units": [tuple(u) for u in piece],
                       "inputs": [i.model_dump() for i in settings.inputs], "paths": sources}
            specs.append(ChunkSpec(f"{split}-{index:05d}", sum(u.examples for u in piece), payload))
    results = ctx.run_chunks(specs, write_chunk, "mixing")
    rows: dict[str, dict[str, int]] = {}
    for result in results:
        for key, n in result.counts.items():
            if key.startswith("examples/"):
                _, split, number = key.split("/")
                rows.setdefault(split, {}).setdefault(number, 0)
                rows[split][number] += n
    entries = []
    for number, item in enumerate(settings.inputs):
        entries.append({**item.model_dump(include={"source", "build", "corpus", "config", "weight", "expand", "loss",
                                                   "licence_class"}),
                        "label": label_of(item, settings.inputs),
                        "rows": {split: rows.get(split, {}).get(str(number), 0) for split in sorted(rows)},
                        "available_train": plan["available"]["train"][number],
                        "dropped_train": plan["dropped"].get(number, 0)})
    train_total = sum(e["rows"].get("train", 0) for e in entries) or 1
    for entry in entries:
        entry["share_train"] = round(entry["rows"].get("train", 0) / train_total, 4)
    mix = {"inputs": entries, "seed": settings.seed, "by": settings.by, "resolve": settings.resolve,
           "allow_leakage": settings.allow_leakage, "phash_distance": settings.phash_distance,
           "leakage": settings.leakage, "dropped_train_rows": sum(plan["dropped"].values()),
           "sources": plan["cards"]}
    return StageOutput(chunks=results, manifest={"mix": mix}, configs_asked=[CONFIG])


def _row_groups(path: Path) -> list[int]:
    """First row of each row group of a shard."""
    meta = open_shard(path).metadata
    starts, at = [], 0
    for i in range(meta.num_row_groups):
        starts.append(at)
        at += meta.row_group(i).num_rows
    return starts


def _read_rows(path: Path, rows: set[int]) -> dict[int, dict[str, Any]]:
    """The given rows of one shard, reading only the row groups that hold them."""
    import bisect

    starts = _row_groups(path)
    groups = sorted({bisect.bisect_right(starts, r) - 1 for r in rows})
    parquet = open_shard(path)
    out: dict[int, dict[str, Any]] = {}
    for group in groups:
        table = parquet.read_row_group(group)
        base = starts[group]
        wanted = [r - base for r in sorted(rows) if base <= r < base + table.num_rows]
        for local, row in zip(wanted, table.take(pa.array(wanted, type=pa.int64())).to_pylist()):
            out[base + local] = row
    return out


def examples_of(row: dict[str, Any], item: MixInput,
                render: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The training examples of one source row: {id, images, conversations} (`render`: the
    input's conversation of a row stored in its own shape, for expand "render")."""
    if item.expand == "render" and render is not None:
        made = render(row)
        return [{"id": str(made["id"]), "images": [i for i in made["images"] if i],
                 "conversations": made["conversations"]}]
    images = row.get("images") if row.get("images") is not None else [row.get("image")]
    images = [i for i in images if i]
    if item.expand == "question":
        made = [question_example(row, q) for q in range(len(row.get("questions") or []))]
        return [{"id": e["id"], "images": images, "conversations": e["conversations"]} for e in made]
    if item.expand == "instance":
        return [{"id": i["id"], "images": images, "conversations": i["conversations"]} for i in row["instances"]]
    return [{"id": str(row["id"]), "images": images, "conversations": row["conversations"]}]


def _with_placeholder(conversations: list[dict[str, str]], images: int) -> list[dict[str, str]]:
    """A one-image example whose turns name no `<image>` (a caption row) gets it at the head of
    its first question, where LLaVA puts it."""
    turns = [{"from": t["from"], "value": t["value"]} for t in conversations]
    if images == 1 and turns and not any(IMAGE_PLACEHOLDER in t["value"] for t in turns):
        turns[0]["value"] = f"{IMAGE_PLACEHOLDER}\n{turns[0]['value']}"
    return turns


def write_chunk(spec: ChunkSpec, out: Path) -> ChunkResult:
    """One shard of the mix: its units' examples, in plan order."""
    payload = spec.payload
    inputs = [MixInput.model_validate(i) for i in payload["inputs"]]
    units = [Unit(*u) for u in payload["units"]]
    wanted: dict[tuple[int, str], set[int]] = defaultdict(set)
    for unit in units:
        wanted[(unit.input, unit.shard)].add(unit.row)
    rows: dict[tuple[int, str, int], dict[str, Any]] = {}
    for (number, shard), needed in wanted.items():
        path = Path(payload["paths"][inputs[number].source]) / shard
        for r, row in _read_rows(path, needed).items():
            rows[(number, shard, r)] = row
    renders = {n: renderer(item, read_manifest(Path(payload["paths"][item.source])))
               for n, item in enumerate(inputs) if item.expand == "render"}
    rel = shard_relpath(CONFIG, payload["split"], payload["index"], payload["total"])
    writer = ShardWriter(out / rel, MixRecord, shared_images=True)
    result = ChunkResult(chunk_id=spec.chunk_id)
    counts: Counter = Counter()
    batch: list[dict[str, Any]] = []
    try:
        for unit in units:
            item = inputs[unit.input]
            made = _unit_rows(rows[(unit.input, unit.shard, unit.row)], item, label_of(item, inputs), unit,
                              result, renders.get(unit.input))
            if batch and len(batch) + len(made) > ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=writer.schema))
                batch = []
            batch += made
            counts[f"examples/{unit.split}/{unit.input}"] += len(made)
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=writer.schema))
        sha = writer.close()
    except BaseException:
        writer.abort()
        raise
    result.shards[rel] = ShardInfo(rows=writer.rows, sha256=sha, bytes=writer.size)
    result.counts = dict(counts)
    return result


def _unit_rows(row: dict[str, Any], item: MixInput, label: str, unit: Unit, result: ChunkResult,
               render: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    lineage = row.get("lineage") or {}
    made = []
    hashes: dict[int, str] = {}
    for example in examples_of(row, item, render):
        images = example["images"]
        turns = _with_placeholder(example["conversations"], len(images))
        roles = [t["from"] for t in turns]
        problem = placeholder_problem([t["value"] for t in turns], roles, len(images)) or turn_problem(roles)
        if problem or not images:
            result.rejects.append(Reject(source=f"{item.build}/{unit.shard}", row=str(unit.row), reason="not_an_example",
                                         detail=f"{example['id']}: {problem or 'no image'}"))
            continue
        digest = ",".join(hashes.setdefault(id(i), hashlib.sha256(i["bytes"]).hexdigest()) for i in images)
        made.append({
            "id": f"{label}/{item.config}/{example['id']}", "corpus": item.corpus, "config": item.config,
            "source_row": str(row.get("id")),
            "images": [{"bytes": i["bytes"], "path": i.get("path")} for i in images],
            "conversations": turns,
            "lineage": {"source_dataset": str(lineage.get("source_dataset") or item.corpus),
                        "source_id": str(lineage.get("source_id") or row.get("id")),
                        "source_split": str(lineage.get("source_split") or unit.split),
                        "licence_class": lineage.get("licence_class") or item.licence_class,
                        "image_sha256": digest,
                        "patient_id": _text(lineage.get("patient_id") or row.get("subject_id")),
                        "study_id": _text(lineage.get("study_id") or row.get("study_id")),
                        "prompt_ids": list(lineage.get("prompt_ids") or []),
                        "prompt_hashes": list(lineage.get("prompt_hashes") or []),
                        "models": list(lineage.get("models") or [])}})
    return made


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
