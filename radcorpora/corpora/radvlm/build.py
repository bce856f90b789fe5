"""radvlm: chest X-ray instruction data from seven sources (Deperrois et al., RadVLM), the tasks
that need no LLM: report generation, abnormality classification, anatomical / abnormality /
phrase grounding and abnormality detection. The LLM stages (prior-study removal, conversations)
plug in after `plan_tasks` (part 2).

Stages: read sources -> task instances (seeded wording, fused VinDr boxes) -> patient split
integrity across every task and source -> chunks (read each image once, DICOM converted once,
rows checked column-wise, shards) -> finalize (engine).

Differences from the published generator, on purpose: template choices are seeded per row (the
same build twice gives the same bytes), ids are unique and stable (replicas are a count on the
instance, not copies), nothing is dropped silently (rejects with reasons), reader fusion does not
depend on annotation row order, and no patient is in both train and test of any task.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from radcorpora.corpora.radvlm import sources as radvlm_sources
from radcorpora.corpora.radvlm.llm import (
    LLM_TASKS,
    STAGES,
    estimate_from_graph,
    load_prompts,
    offline_responders,
    run_llm_stages,
)
from radcorpora.corpora.radvlm.records import (
    CONVERSATION_SOURCES,
    CONVERSATION_TASKS,
    ROW_RULES,
    TASK_SOURCES,
    TASKS,
    RadVLMRecord,
)
from radcorpora.corpora.radvlm.settings import (
    CORPUS,
    CREDENTIALED_SOURCES,
    SOURCE_FLAGS,
    RadVLMConfig,
    RadVLMConfigError,
    load_templates,
)
from radcorpora.corpora.radvlm.tasks import (
    FrontalFilter,
    PlannedRow,
    Words,
    asked_conversations,
    conversation_rows,
    enforce_patient_splits,
    rows_for,
)
from radcorpora.llm.verify import DECISIONS_FILE, FAILURES_FILE, QUEUE_FILE
from radcorpora.ops.image_check import ImageCheckError, check_image, image_intact
from radcorpora.prompts.loader import TemplateSet
from radcorpora.schemas.columnar import check_table
from radcorpora.schemas.common import Reject
from radcorpora.schemas.features import arrow_schema_for
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.spec.rules import record_row_findings
from radcorpora.store import source_index
from radcorpora.store.shards import ShardWriter, shard_relpath
from radcorpora.store.state import LLM_STORE, ChunkResult, ChunkSpec, ShardInfo, derived_once

# --------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class ChunkPayload:
    task: str
    rows: tuple[PlannedRow, ...]
    shard: str
    max_side: int | None
    templates: tuple[str, str]  # id, content hash


class ImageUnreadable(ValueError):
    pass


def read_row_image(row: PlannedRow, max_side: int | None, out: Path
                   ) -> tuple[bytes, str | None, source_index.Entry | None]:
    """The image's bytes as stored in the corpus (JPEG/PNG as read; DICOM converted to PNG once
    per build, even when two configs hold the image: kept under `out`'s build state), how it was
    converted, if it was, and the source file's index entry (None inside a zip). A plain file's
    entry comes from the same open as its bytes, its sha256 being that of the bytes stored."""
    path = Path(row.image.path)
    try:
        if row.read_image == "dicom" and path.suffix.lower() in (".dicom", ".dcm"):
            from radcorpora.sources.dicom import read_dicom_image

            how = f"dicom->png{'' if max_side is None else f' max_side={max_side}'}"
            png = derived_once(out, path, how, lambda: read_dicom_image(path, max_side=max_side).png, image_intact)
            return png, how, source_index.entry_for(path, None)
        entry = None
        if "::" in row.image.path:  # a member of PadChest-GR's split zip
            from radcorpora.sources.padchest_gr import read_image_bytes

            data = read_image_bytes(row.image)
        else:
            data, entry = source_index.read_file(path)
        check_image(data, "crc")
        return data, None, entry
    except (OSError, ImageCheckError, ValueError) as exc:
        raise ImageUnreadable(f"{row.image.path}: {exc}") from exc


def record_row(row: PlannedRow, data: bytes, converted: str | None, templates: tuple[str, str],
               sha256: str | None = None) -> dict[str, Any]:
    """`sha256`: of `data`, when the reader already has it."""
    image = row.image
    name = Path(image.path.split("::")[-1]).name
    return {
        "image": {"bytes": data, "path": str(Path(name).with_suffix(".png")) if converted else name},
        "id": row.key, "task": row.task, "source": row.source, "view": image.view, "sex": image.sex,
        "instances": list(row.instances), "report": row.report, "report_section": row.report_section,
        "positive_labels": list(row.positive_labels),
        "lineage": {"source_dataset": row.source, "source_id": image.image_id, "patient_id": row.patient,
                    "study_id": image.study_id, "source_split": image.split, "licence_class": image.licence_class,
                    "image_sha256": sha256 or hashlib.sha256(data).hexdigest(), "image_converted": converted,
                    "prompt_ids": [templates[0], *(p[0] for p in row.prompts)],
                    "prompt_hashes": [templates[1], *(p[1] for p in row.prompts)], "models": list(row.models)},
    }


def _file_size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def build_chunk(spec: ChunkSpec, out: Path) -> ChunkResult:
    """Read each image of the chunk once, make its row, check the batch column-wise, write the shard."""
    payload: ChunkPayload = spec.payload
    result = ChunkResult(chunk_id=spec.chunk_id)
    rows: list[dict[str, Any]] = []
    counts: Counter = Counter()
    for row in payload.rows:
        try:
            data, converted, entry = read_row_image(row, payload.max_side, out)
        except ImageUnreadable as exc:
            result.rejects.append(Reject(source=row.source, row=row.image.path, reason="image_does_not_decode",
                                         detail=str(exc)))
            continue
        if entry is not None:
            result.sources[row.image.path] = entry
        rows.append(record_row(row, data, converted, payload.templates, None if converted else entry and entry[2]))
        counts["source_image_bytes"] += len(data) if not converted else _file_size(row.image.path)
        counts[f"rows_{row.task}"] += 1
        counts[f"instances_{row.task}"] += len(row.instances)
    table = pa.Table.from_pylist(rows, schema=arrow_schema_for(RadVLMRecord))
    violations, total = check_table(table, RadVLMRecord)
    result.checked["record_schema"] = table.num_rows
    if total:
        result.violations["record_schema"] = [f"{payload.shard} row {v.row}: {v.field}: {v.message}" for v in violations]
        result.violation_counts["record_schema"] = total
    record_row_findings(result, ROW_RULES, payload.task, table, payload.shard)
    result.checked["images_decode"] = table.num_rows  # each passed check_image when it was read
    writer = ShardWriter(out / payload.shard, RadVLMRecord)
    try:
        writer.write_table(table)
        result.shards[payload.shard] = ShardInfo(rows=table.num_rows, sha256=writer.close(), bytes=writer.size)
    except BaseException:
        writer.abort()
        raise
    result.counts = dict(counts)
    return result


def _content_digest(rows: Sequence[PlannedRow]) -> str:
    """What LLM stages wrote into a chunk's rows: part of its id, so a rerun whose answers changed
    (a failed request answered now, a person's decision) never reuses the chunk written before."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row.key, row.instances, row.report], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def plan_chunks(rows: list[PlannedRow], config: RadVLMConfig, templates: TemplateSet) -> list[ChunkSpec]:
    chunks = []
    by_config: dict[tuple[str, str], list[PlannedRow]] = defaultdict(list)
    for row in rows:
        by_config[(row.task, row.split)].append(row)
    for (task, split), group in sorted(by_config.items()):
        group.sort(key=lambda r: r.key)
        pieces = [group[i:i + config.images_per_shard] for i in range(0, len(group), config.images_per_shard)]
        for index, piece in enumerate(pieces):
            shard = shard_relpath(task, split, index, len(pieces))
            payload = ChunkPayload(task, tuple(piece), shard, config.max_side, (templates.id, templates.content_hash))
            chunk_id = f"{task}-{split}-{index:05d}"
            if task in LLM_TASKS and config.prior_removal != "off" or task in CONVERSATION_TASKS:
                chunk_id += f"-{_content_digest(piece)}"
            chunks.append(ChunkSpec(chunk_id, len(piece), payload))
    return chunks


# --------------------------------------------------------------------------- the corpus' stages


@dataclass
class RadVLMPlan:
    rows: list[PlannedRow]
    chunks: list[ChunkSpec]
    rejects: list[Reject]
    counts: Counter
    warnings: list[str]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    given: dict[str, str] = field(default_factory=dict)  # source option -> folder, for a rebuild (adjudication)
    excluded: dict[str, int] = field(default_factory=dict)  # "<source>/view_<view>" -> images left out
    configs_asked: list[str] = field(default_factory=list)  # each must end with rows (unless --allow-empty)


def tasks_for(config: RadVLMConfig, present: set[str]) -> list[str]:
    """The tasks to build: the ones asked for (each needs one of its sources), else every task
    the given sources allow."""
    if config.tasks:
        unknown = [t for t in config.tasks if t not in TASKS]
        if unknown:
            raise RadVLMConfigError(f"unknown task(s) {', '.join(unknown)} (tasks: {', '.join(TASKS)})")
        for task in config.tasks:
            if not present & set(TASK_SOURCES[task]):
                needed = " or ".join(SOURCE_FLAGS[s] for s in TASK_SOURCES[task])
                raise RadVLMConfigError(f"task {task} needs {needed}")
        return [t for t in TASKS if t in config.tasks]
    chosen = [t for t in TASKS if present & set(TASK_SOURCES[t])]
    if not chosen:
        raise RadVLMConfigError("give at least one source: " + ", ".join(SOURCE_FLAGS.values()))
    return chosen


def licence_class(config: RadVLMConfig, sources: dict[str, Path]) -> str:
    keys = {k.replace("_", "-") for k in sources}
    if keys & CREDENTIALED_SOURCES or "mimic-cxr-reports" in keys:
        return "credentialed"
    return "restricted"


def fingerprint_rows(rows: list[PlannedRow]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.key):
        digest.update(json.dumps([row.key, row.image.path, row.image.split, row.instances, row.report,
                                  row.positive_labels], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]




def prepare(sources: dict[str, Path], config: RadVLMConfig, log) -> Prepared:
    templates = load_templates(config)
    words = Words(templates, config.seed)
    read = radvlm_sources.read_sources(sources, config, log)  # by module: tests stand in for the readers
    tasks = tasks_for(config, set(read.present))
    rejects: list[Reject] = list(read.rejects)
    rows: list[PlannedRow] = []
    frontal = FrontalFilter()
    for task in tasks:
        before = len(rows)
        rows += rows_for(read, task, words, config, set(tasks), rejects, frontal)
        log(f"{task}: {len(rows) - before} rows")
    conversations = conversation_rows(read.scans, config, frontal)
    if conversations:
        log(f"conversations: {len(conversations)} images to write conversations for")
    rows = enforce_patient_splits(rows + conversations, rejects)
    fingerprint: dict[str, Any] = {"templates": f"{templates.id}@{templates.content_hash}",
                                   "sources": {"present": sorted(read.present), "rows": fingerprint_rows(rows)}}
    if config.uses_llm or config.verifiers:
        fingerprint["prompts"] = {p.id: p.content_hash for p in load_prompts().values()}
    plan = RadVLMPlan(rows, [], rejects, Counter(read.counts), list(read.warnings), read.summary,
                      given={k: str(Path(v).resolve()) for k, v in sources.items() if v}, excluded=frontal.counts(),
                      configs_asked=tasks + asked_conversations(config, set(read.present)))
    return Prepared(fingerprint=fingerprint, plan=plan)


def run(prepared: Prepared, config: RadVLMConfig, ctx: BuildContext) -> StageOutput:
    from radcorpora.store import atomic

    plan: RadVLMPlan = prepared.plan
    decisions = dict(sorted(config.decisions.items()))
    if decisions:
        atomic.write_jsonl(ctx.out / DECISIONS_FILE, [{"id": k, "decision": v} for k, v in decisions.items()])
    session = ctx.llm_session(offline_responders()) if config.uses_llm else None
    try:
        outcome = run_llm_stages(plan.rows, config, session, decisions, ctx.llm_store)
    finally:
        if session is not None:
            session.close()
    templates = load_templates(config)
    results = ctx.run_chunks(plan_chunks(outcome.rows, config, templates), build_chunk, CORPUS)
    warnings = list(plan.warnings)
    built = {r.task for r in outcome.rows}
    if "report_generation" in built and config.prior_removal == "off":
        warnings.append("report_generation holds the extracted report text: references to prior studies are "
                        "still in it (--prior-removal off)")
    files: list[str] = []
    llm: dict[str, Any] = {"prior_removal": config.prior_removal}
    if session is not None:
        atomic.write_jsonl(ctx.out / FAILURES_FILE, session.ledger.entries)
        files.append(FAILURES_FILE)
        if session.ledger.entries:
            warnings.append(f"{len(session.ledger.entries)} LLM request(s) failed; rerun the same command to retry them")
        llm.update({"generator": session.model_id(config.llm), "verifiers": [session.model_id(v) for v in config.verifiers],
                    "stages": {s.name: s.description for s in STAGES
                               if (s.name != "prior_removal" or config.prior_removal == "llm")
                               and (s.name == "prior_removal" or config.conversations)
                               and (s.name != "conversation_verify" or config.verifiers)},
                    **session.summary(), "verification": outcome.agreement,
                    "adjudication_pending": len(outcome.queued), "adjudication_decisions": len(decisions),
                    "cache_path": str(session.cache.path)})
    if outcome.result is not None:  # per-stage figures (card and preview render them for every corpus)
        llm["pipeline"] = outcome.result.figures()
    if config.verifiers:
        atomic.write_jsonl(ctx.out / QUEUE_FILE, [q.model_dump(mode="json") for q in outcome.queued])
        files.append(QUEUE_FILE)
        if outcome.queued:
            warnings.append(f"{len(outcome.queued)} conversation(s) await adjudication in {QUEUE_FILE}")
    if decisions:
        files.append(DECISIONS_FILE)
    prompts = {templates.id: templates.content_hash}
    if config.uses_llm or config.prior_removal == "llm":
        prompts.update({p.id: p.content_hash for p in load_prompts().values()})
    return StageOutput(
        chunks=results, rejects=plan.rejects + outcome.rejects, counts=plan.counts + outcome.counts, warnings=warnings,
        files=files, excluded=plan.excluded, configs_asked=plan.configs_asked,
        manifest={"source": plan.sources, "prompts": prompts, "llm": llm, "rebuild": {"sources": plan.given},
                  "replication": {f"{t}/{s}": config.replication_for(t, s, "train")
                                  for t, sources in (*TASK_SOURCES.items(), *CONVERSATION_SOURCES.items()) for s in sources},
                  "tasks": sorted(built)})


def estimate(sources: dict[str, Path], config: RadVLMConfig, log) -> tuple[Any, dict[str, Any]]:
    """The pipeline's estimate, to be called with the LLM settings (and the build folder, whose
    stored outputs count as done), and the rows it covers; nothing is sent."""
    prepared = prepare(sources, config, log)
    rows = prepared.plan.rows
    info: dict[str, Any] = {"samples": len(rows)}
    if not config.uses_llm:
        info["note"] = "no LLM stage would run: give --conversations N with --llm, or --prior-removal llm"
        return [], info

    def sized(llm_settings: Any, out: Path | None = None) -> dict[str, Any]:
        return estimate_from_graph(rows, config, llm_settings, None if out is None else Path(out) / LLM_STORE)

    return sized, info
