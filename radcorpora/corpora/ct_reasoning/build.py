"""ct-reasoning: CT-RATE / AMOS-MM / AbdomenAtlas 3.0 reports -> examiner questions with thinking,
and one report-thinking narrative per scan.

prepare: read the given sources (readers in radcorpora/sources), one report per scan with its
official split; a patient in two splits is a counted reject; `--max-reports` keeps a seeded choice.
run: every volume of each scan as a VolumeRef (hashed on the engine's executor, in chunks; the
first readable volume with --slices N also gets its N representative axial slices, made once per
volume through derived_once, so any worker count gives the same bytes); an unreadable volume is a
counted reject before any request is sent, and a scan with no readable volume is dropped. Then the per-report pipeline (llm.py), the anatomical ordering of each scan's
kept items, the narrative pipeline, and the records of each config in the source's split.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from radcorpora.corpora.ct_reasoning.checks import GATE_RULES
from radcorpora.corpora.ct_reasoning.llm import (
    ROLES,
    STAGES,
    Narrative,
    Refined,
    Report,
    ScanItems,
    SourceQuestion,
    _question_stand_in,
    _refined_stand_in,
    _thought_stand_in,
    anatomical_order,
    load_prompts,
    narrative_pipeline,
    pipeline,
)
from radcorpora.corpora.ct_reasoning.records import (
    ReportRewriteRecord,
    ReportThinkingRecord,
    TranslationRecord,
    VqaThinkingRecord,
)
from radcorpora.corpora.ct_reasoning.settings import CORPUS, LICENCE_CLASS, CtReasoningSettings
from radcorpora.llm.audit import DECISIONS_FILE, FAILURES_FILE, QUEUE_FILE
from radcorpora.llm.estimate import total
from radcorpora.llm.pipeline import model_id
from radcorpora.ops.sampling import rank_key
from radcorpora.ops.windowing import volume_slice
from radcorpora.schemas.common import Lineage, Reject
from radcorpora.schemas.ct import CtReport
from radcorpora.schemas.volume import VolumeRef
from radcorpora.sources.errors import SourceError
from radcorpora.sources.nifti import VolumeError, axial_slices, volume_ref
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.store import atomic
from radcorpora.store.shards import write_split
from radcorpora.store.state import (
    LLM_STORE,
    BuildStateError,
    ChunkResult,
    ChunkSpec,
    ShardInfo,
    derived_once,
)

SPLITS = ("train", "validation", "test")
CONFIGS = ("vqa_thinking", "report_thinking", "report_rewrite", "translation")
TITLES = {"ct-rate": "CT-RATE", "amos-mm": "AMOS-MM", "abdomen-atlas-3": "AbdomenAtlas 3.0"}


@dataclass
class Scan:
    report: CtReport
    root: Path  # the source root its volume paths are relative to

    @property
    def id(self) -> str:
        return f"{self.report.source}/{self.report.scan_id}"


@dataclass
class Plan:
    scans: list[Scan]
    rejects: list[Reject]
    counts: Counter
    excluded: dict[str, int]
    roots: dict[str, str]
    warnings: list[str]


def read_sources(sources: dict[str, Path], settings: CtReasoningSettings, log: Callable[[str], None]) -> Plan:
    from radcorpora.sources.abdomen_atlas import scan_abdomen_atlas
    from radcorpora.sources.amos_mm import scan_amos_mm
    from radcorpora.sources.ct_rate import scan_ct_rate

    readers = {"ct_rate": scan_ct_rate, "amos_mm": scan_amos_mm, "abdomen_atlas": scan_abdomen_atlas}
    given = {k: Path(v) for k, v in sources.items() if v is not None and k in readers}
    if not given:
        raise SourceError("give at least one source: --ct-rate DIR, --amos-mm DIR or --abdomen-atlas DIR")
    scans: list[Scan] = []
    rejects: list[Reject] = []
    counts: Counter = Counter()
    warnings: list[str] = []
    for key, root in sorted(given.items()):
        found = readers[key](root)
        log(f"{found.info.title}: {len(found.records)} reports, {len(found.rejects)} rejected rows")
        rejects.extend(found.rejects)
        counts.update({f"{key}_{k}": v for k, v in found.counts.items()})
        warnings.extend(found.warnings)
        scans.extend(Scan(r, Path(found.root)) for r in found.records)
    # one split per patient: the first (by split order, scan id) wins; others are counted rejects
    order = {s: i for i, s in enumerate(SPLITS)}
    split_of: dict[tuple[str, str], str] = {}
    kept: list[Scan] = []
    for scan in sorted(scans, key=lambda s: (s.report.source, order[s.report.split], s.report.scan_id)):
        patient = (scan.report.source, scan.report.patient_id)
        first = split_of.setdefault(patient, scan.report.split)
        if first != scan.report.split:
            rejects.append(Reject(source=scan.report.file, row=scan.report.row, reason="patient_in_several_splits",
                                  detail=f"{scan.id}: patient {scan.report.patient_id} is in {first}, this scan in "
                                         f"{scan.report.split}"))
            counts["rejected_patient_in_several_splits"] += 1
            continue
        kept.append(scan)
    excluded: dict[str, int] = {}
    if settings.max_reports is not None and len(kept) > settings.max_reports:
        ranked = sorted(kept, key=lambda s: rank_key(settings.seed, CORPUS, s.id, "select"))
        for scan in ranked[settings.max_reports:]:
            name = f"{scan.report.source}/beyond_max_reports"
            excluded[name] = excluded.get(name, 0) + 1
        kept = ranked[:settings.max_reports]
    kept.sort(key=lambda s: s.id)
    counts["reports"] = len(kept)
    return Plan(kept, rejects, counts, dict(sorted(excluded.items())),
                {k: str(Path(v).resolve()) for k, v in given.items()}, warnings)


def prepare(sources: dict[str, Path], settings: CtReasoningSettings, log: Callable[[str], None]) -> Prepared:
    plan = read_sources(sources, settings, log)
    content = hashlib.sha256()
    for scan in plan.scans:
        r = scan.report
        content.update(json.dumps([scan.id, r.text, r.split, [v.model_dump(mode="json") for v in r.volumes]],
                                  sort_keys=True).encode() + b"\n")
    prompts = load_prompts()
    return Prepared(fingerprint={"prompts": {p.id: p.content_hash for p in prompts.values()},
                                 "sources": {"reports": len(plan.scans), "content": content.hexdigest()[:16]}},
                    plan=plan, log_lines=plan.warnings)


# --------------------------------------------------------------------------- volumes

VOLUMES_PER_CHUNK = 4


@dataclass(frozen=True)
class VolumeJob:
    """One volume file to hash (and, for a scan's first volume with --slices N, to slice): the
    payload of the volume chunks, plain values so it pickles to any executor."""

    path: str
    root: str
    dataset: str
    volume_id: str
    spacing: tuple[float, float, float] | None
    slope: float | None
    intercept: float | None
    slices: int

    @property
    def variant(self) -> str:
        return (f"volume-ref v2 root={self.root} dataset={self.dataset} spacing={self.spacing} "
                f"axial-slices n={self.slices} slope={self.slope} intercept={self.intercept}")


def _volume_blob(job: VolumeJob) -> bytes:
    """A volume's reference and slices as one derived file (JSON; PNGs in base64), or the reason
    it cannot be read (a reject, decided once like the rest)."""
    path = Path(job.path)
    try:
        ref = volume_ref(path, Path(job.root), job.dataset, job.spacing)
        made = []
        for s in axial_slices(path, job.slices, job.slope, job.intercept) if job.slices else ():
            png = volume_slice(s.axis, s.index, s.hu, path=f"{job.volume_id}_axial_{s.index:04d}.png")
            made.append({"axis": s.axis, "index": s.index, "png": base64.b64encode(png.image.bytes).decode("ascii"),
                         "path": png.image.path, "derivation": png.derivation})
        return json.dumps({"ref": ref.model_dump(mode="json"), "slices": made}, sort_keys=True).encode()
    except VolumeError as exc:
        return json.dumps({"error": {"reason": exc.reason, "detail": exc.detail}}, sort_keys=True).encode()


def _blob_usable(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


def read_volume(job: VolumeJob, out: Path) -> VolumeRef | VolumeError:
    """The job's VolumeRef (with its slices), made once per build through derived_once: the chunk
    workers make it, the driver reads what they kept."""
    path = Path(job.path)
    found = json.loads(derived_once(out, path, job.variant, lambda: _volume_blob(job), _blob_usable))
    if "error" in found:
        return VolumeError(path, found["error"]["reason"], found["error"]["detail"])
    slices = [{"axis": s["axis"], "index": s["index"], "derivation": s["derivation"],
               "image": {"bytes": base64.b64decode(s["png"]), "path": s["path"]}} for s in found["slices"]]
    return VolumeRef.model_validate({**found["ref"], "slices": slices})


def volume_chunk(spec: ChunkSpec, out: Path) -> ChunkResult:
    """A chunk worker: hash and slice its volumes (kept as derived files); no rows of its own."""
    for job in spec.payload:
        read_volume(job, out)
    return ChunkResult(chunk_id=spec.chunk_id, counts={"volumes_read": len(spec.payload)})


def volume_jobs(scan: Scan, settings: CtReasoningSettings, slices_on: int = 0) -> list[VolumeJob]:
    """One job per volume of the scan; the volume at `slices_on` gets the --slices N slices."""
    title = TITLES.get(scan.report.source, scan.report.source)
    return [VolumeJob(str(scan.root / v.path), str(scan.root), title, v.volume_id, v.spacing, v.rescale_slope,
                      v.rescale_intercept, settings.slices if k == slices_on else 0)
            for k, v in enumerate(scan.report.volumes)]


@dataclass(frozen=True)
class ScanVolumes:
    """A scan's readable volumes, without slices (small: kept for every scan), and the job whose
    kept derived file holds its first readable volume with its --slices N slices (None without
    slices). Slices are read back when a row is written, so the driver never holds every scan's
    slices at once (8 slices of 50k CT-RATE scans are ~20 GB)."""

    refs: list[VolumeRef]
    sliced: VolumeJob | None

    def volume(self, out: Path) -> VolumeRef:
        """The row's `volume`: the first readable one, with its slices."""
        if self.sliced is None:
            return self.refs[0]
        found = read_volume(self.sliced, out)
        if isinstance(found, VolumeError):  # read once already: only a changed state folder gets here
            raise BuildStateError(f"{self.sliced.path}: its kept slices no longer read back ({found})")
        return found


def scan_volumes(scans: list[Scan], settings: CtReasoningSettings, ctx: BuildContext
                 ) -> tuple[dict[str, ScanVolumes], list[tuple[Scan, VolumeError]]]:
    """Every volume of every scan hashed (and the first one sliced) on the engine's executor, in
    chunks of VOLUMES_PER_CHUNK; then per scan its readable volumes, and each unreadable volume
    with its error. A scan whose first volume fails has its first readable one sliced here, on the
    driver."""
    jobs = [job for scan in scans for job in volume_jobs(scan, settings)]
    specs = [ChunkSpec(f"volumes-{k // VOLUMES_PER_CHUNK:05d}", len(jobs[k:k + VOLUMES_PER_CHUNK]),
                       tuple(jobs[k:k + VOLUMES_PER_CHUNK])) for k in range(0, len(jobs), VOLUMES_PER_CHUNK)]
    if specs:
        ctx.run_chunks(specs, volume_chunk, "hashing and slicing volumes")
    found: dict[str, ScanVolumes] = {}
    failed: list[tuple[Scan, VolumeError]] = []
    for scan in scans:
        refs: list[tuple[int, VolumeRef]] = []
        for k, job in enumerate(volume_jobs(scan, settings)):
            got = read_volume(job, ctx.out)
            if isinstance(got, VolumeError):
                failed.append((scan, got))
            else:
                refs.append((k, got.model_copy(update={"slices": []})))
        if not refs:
            continue
        first = refs[0][0]
        sliced = volume_jobs(scan, settings, slices_on=first)[first] if settings.slices else None
        if sliced is not None and first != 0:
            read_volume(sliced, ctx.out)  # sliced here, kept for the rows
        found[scan.id] = ScanVolumes([r for _, r in refs], sliced)
    return found, failed


# --------------------------------------------------------------------------- run


def report_item(scan: Scan) -> Report:
    """The pipeline's input for a scan: its report and the source's own multiple-choice questions."""
    return Report(id=scan.id, text=scan.report.text or "", source_questions=[
        SourceQuestion(question=q.question, options=[q.options[k] for k in "ABCD"], correct=q.answer)
        for q in scan.report.questions])


def _source_reject(scan: Scan, reason: str, detail: str) -> Reject:
    return Reject(source=scan.report.file, row=scan.report.row, reason=reason, detail=detail)


def role_figures(result_nodes: dict[str, Any]) -> dict[str, Any]:
    """Per role: items in, items out, rejects by reason; the gate also per named rule (zeros kept)."""
    roles: dict[str, Any] = {}
    for name, node in result_nodes.items():
        reasons = Counter(r.reason for r in node.rejects.values())
        roles[name] = {"in": node.figures.get("items", 0), "out": len(node.outputs),
                       "rejected": dict(sorted(reasons.items()))}
    if "thinking" in roles:
        thinking = roles["thinking"]["rejected"]
        gate = roles.setdefault("gate", {"in": 0, "out": 0, "rejected": {}})
        gate["rules"] = {rule: thinking.get(f"gate_{rule}", 0) for rule in GATE_RULES}
        gate["llm_rejected"] = sum(gate["rejected"].values())
    return {name: roles[name] for name in ROLES if name in roles}


def run(prepared: Prepared, settings: CtReasoningSettings, ctx: BuildContext) -> StageOutput:
    plan: Plan = prepared.plan
    out = ctx.out
    prompts = load_prompts()
    decisions = dict(sorted(settings.decisions.items()))
    if decisions:
        atomic.write_jsonl(out / DECISIONS_FILE, [{"id": k, "decision": v} for k, v in decisions.items()])
    counts: Counter = Counter(plan.counts)
    rejects: list[Reject] = list(plan.rejects)

    # before any request: an unreadable volume costs nothing; a scan keeps its readable volumes
    every, unreadable = scan_volumes(plan.scans, settings, ctx)
    for scan, exc in unreadable:
        rejects.append(_source_reject(scan, exc.reason, f"{scan.id}: {exc}"))
        counts[f"rejected_{exc.reason}"] += 1
    counts["volumes_referenced"] = sum(len(v.refs) for v in every.values())
    scans = {s.id: s for s in plan.scans if s.id in every}
    reports = [report_item(s) for s in scans.values()]

    graph, narrator = pipeline(settings), narrative_pipeline(settings)
    session = ctx.llm_session({**graph.offline_responders(), **narrator.offline_responders()})
    try:
        result = graph.run(reports, session, ctx.llm_store, decisions)
        refined: dict[str, list[Refined]] = defaultdict(list)
        for item in result["refine"].outputs.values():
            refined[item.thought.question.report.id].append(item)
        grouped = [ScanItems(report=r, items=anatomical_order(refined[r.id])) for r in reports if refined.get(r.id)]
        told = narrator.run(grouped, session, ctx.llm_store)
    finally:
        session.close()
    nodes = {**result.nodes, **told.nodes}
    for node in nodes.values():
        for item_id, reject in sorted(node.rejects.items()):
            scan = scans[item_id.split("/q")[0]]
            rejects.append(_source_reject(scan, reject.reason, reject.detail or item_id))
            counts[f"rejected_{reject.reason}"] += 1
    for r in reports:
        if not refined.get(r.id):
            rejects.append(_source_reject(scans[r.id], "no_item_kept", f"{r.id}: no question survived the roles"))
            counts["rejected_no_item_kept"] += 1

    used = ["ct_reasoning_questions", "ct_reasoning_thinking", "ct_reasoning_gate", "ct_reasoning_refine",
            "ct_reasoning_narrative"] + (["ct_reasoning_rewrite", "ct_reasoning_rewrite_judge"] if settings.rewrite
                                         else []) + (["ct_reasoning_translate"] if settings.translate else [])
    models = sorted({model_id(settings.llm), model_id(settings.thinker)})

    def lineage(scan: Scan, volume: VolumeRef) -> Lineage:
        return Lineage(source_dataset=TITLES.get(scan.report.source, scan.report.source), source_id=scan.report.scan_id,
                       source_split=scan.report.split, licence_class=LICENCE_CLASS, image_sha256=volume.sha256,
                       prompt_ids=[prompts[n].id for n in used], prompt_hashes=[prompts[n].content_hash for n in used],
                       models=models)

    loaded: list[Any] = [None, None]  # (scan id, its volume): rows of one scan are written one after another

    def base(scan: Scan, row_id: str) -> dict[str, Any]:
        if loaded[0] != scan.id:
            loaded[:] = [scan.id, every[scan.id].volume(out)]
        volume = loaded[1]
        return {"id": row_id, "source": scan.report.source, "scan_id": scan.report.scan_id,
                "patient_id": scan.report.patient_id, "volume": volume, "volumes": every[scan.id].refs,
                "lineage": lineage(scan, volume)}

    # Each row as (id, scan, maker of the record given its base fields): a record is made when its
    # shard is written (in id order, so one scan's rows come together), its slices read back then.
    rows: dict[str, dict[str, list[tuple[str, Scan, Callable[..., Any]]]]] = {
        c: {s: [] for s in SPLITS} for c in CONFIGS}
    for group in grouped:
        scan = scans[group.report.id]
        for item in group.items:
            t = item.thought
            rows["vqa_thinking"][scan.report.split].append((f"{scan.id}/q{t.question.index}", scan, partial(
                VqaThinkingRecord, question=t.question.question, focus=t.question.focus,
                origin=t.question.origin, options=t.question.options, correct_option=t.question.correct,
                report=group.report.text, thinking=item.thinking, answer=t.answer, raw_thinking=t.thinking,
                thinking_from=t.thinking_from)))
        narrative: Narrative | None = told["narrative"].outputs.get(group.report.id)
        if narrative is not None:
            rows["report_thinking"][scan.report.split].append((scan.id, scan, partial(
                ReportThinkingRecord, report=group.report.text, **narrative.model_dump(),
                questions=[i.thought.question.question for i in group.items])))
    if settings.rewrite:
        for item_id, item in result["rewrite_judge"].outputs.items():
            scan = scans[item_id]
            verdicts = result["rewrite_judge"].verdicts.get(item_id, {})
            rows["report_rewrite"][scan.report.split].append((scan.id, scan, partial(
                ReportRewriteRecord, report=item.report.text, rewrite=item.text,
                judge_reason="; ".join(v.reason for _, v in sorted(verdicts.items())))))
    if settings.translate:
        for item_id, item in result["translate"].outputs.items():
            scan = scans[item_id]
            rows["translation"][scan.report.split].append((scan.id, scan, partial(
                TranslationRecord, report=item.report.text, language=item.language, translation=item.text)))

    asked = ["vqa_thinking", "report_thinking", *(["report_rewrite"] if settings.rewrite else []),
             *(["translation"] if settings.translate else [])]
    records = {"vqa_thinking": VqaThinkingRecord, "report_thinking": ReportThinkingRecord,
               "report_rewrite": ReportRewriteRecord, "translation": TranslationRecord}
    chunks: list[ChunkResult] = []
    for config in asked:
        for split in SPLITS:
            kept = sorted(rows[config][split], key=lambda r: r[0])
            made = (make(**base(scan, row_id)) for row_id, scan, make in kept)
            written = write_split(out, config, split, made, len(kept), records[config], settings.rows_per_shard)
            chunks.append(ChunkResult(chunk_id=f"{config}-{split}", shards={
                rel: ShardInfo(rows=n, sha256=digest) for rel, (n, digest) in written.items()}))
    queue = [*result.queue]
    atomic.write_jsonl(out / FAILURES_FILE, session.ledger.entries)
    atomic.write_jsonl(out / QUEUE_FILE, [q.model_dump(mode="json") for q in queue])
    roles = role_figures(nodes)
    counts["scans_with_volume"] = len(scans)
    figures = {**result.figures(), "stages": {**result.figures()["stages"], **told.figures()["stages"]}}
    return StageOutput(
        chunks=chunks, rejects=rejects, counts=counts, configs_asked=asked, excluded=plan.excluded,
        files=[FAILURES_FILE, QUEUE_FILE, *([DECISIONS_FILE] if decisions else [])],
        warnings=([f"{len(queue)} item(s) await adjudication in {QUEUE_FILE}"] if queue else [])
        + ([f"{len(session.ledger.entries)} LLM request(s) failed; rerun to retry them"]
           if session.ledger.entries else []),
        manifest={
            "source": {"datasets": sorted({TITLES.get(s.report.source, s.report.source) for s in plan.scans}),
                       "reports": len(plan.scans), "slices_per_volume": settings.slices},
            "roles": roles,
            "prompts": {prompts[n].id: prompts[n].content_hash for n in used},
            "llm": {"generator": model_id(settings.llm), "thinking": model_id(settings.thinker),
                    "stages": {s.name: s.description for s in STAGES}, **session.summary(),
                    "adjudication_pending": len(queue), "adjudication_decisions": len(decisions),
                    "pipeline": figures, "cache_path": str(session.cache.path)},
            "rebuild": {"sources": plan.roots},
        })


def estimate(sources: dict[str, Path], settings: CtReasoningSettings, log) -> tuple[Callable[..., dict[str, Any]],
                                                                                     dict[str, Any]]:
    """Every role together: the per-report graph (questions fan out into thinking, gate and refine
    per question) and the narrative per scan, sized from stand-ins until items exist; outputs
    stored in --out count as done."""
    plan = read_sources(sources, settings, log)
    reports = [report_item(s) for s in plan.scans]
    graph, narrator = pipeline(settings), narrative_pipeline(settings)
    info = {"samples": len(reports), "rejected_rows": len(plan.rejects)}

    def sized(llm_settings: Any, out: Path | None = None) -> dict[str, Any]:
        store = None if out is None else Path(out) / LLM_STORE
        main = graph.estimate(reports, llm_settings, store, corpus=CORPUS)
        kept = max(1, round(settings.questions_per_report * graph.node("gate").fan_out))
        scans = [ScanItems(report=r, items=[_refined_stand_in(_thought_stand_in(_question_stand_in(r)))] * kept)
                 for r in reports]
        extra = narrator.estimate(scans, llm_settings, store, corpus=CORPUS)
        main["stages"] = main["stages"] + extra["stages"]
        main["total"] = total(main["stages"])
        return main

    return sized, info
