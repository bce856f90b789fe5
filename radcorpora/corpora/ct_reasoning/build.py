"""ct-reasoning: CT-RATE / AMOS-MM / AbdomenAtlas 3.0 reports -> examiner questions with thinking,
and one report-thinking narrative per scan.

prepare: read the given sources (readers in radcorpora/sources), one report per scan with its
official split; a patient in two splits is a counted reject; `--max-reports` keeps a seeded choice.
run: each scan's first volume as a VolumeRef (hashed; with --slices N its N representative axial
slices, made once per volume through derived_once); an unreadable volume is a counted reject before
any request is sent. Then the per-report pipeline (llm.py), the anatomical ordering of each scan's
kept items, the narrative pipeline, and the records of each config in the source's split.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
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
from radcorpora.store.state import LLM_STORE, ChunkResult, ShardInfo, derived_once

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


def _slices_blob(path: Path, n: int, slope: float | None, intercept: float | None, name: str) -> bytes:
    """The N slices of one volume as one derived file (JSON: index, axis, PNG in base64)."""
    made = []
    for s in axial_slices(path, n, slope, intercept):
        png = volume_slice(s.axis, s.index, s.hu, path=f"{name}_axial_{s.index:04d}.png")
        made.append({"axis": s.axis, "index": s.index, "png": base64.b64encode(png.image.bytes).decode("ascii"),
                     "path": png.image.path, "derivation": png.derivation})
    return json.dumps(made, sort_keys=True).encode()


def _blob_usable(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), list)
    except ValueError:
        return False


def scan_volume(scan: Scan, settings: CtReasoningSettings, out: Path) -> VolumeRef:
    """The VolumeRef of the scan's first volume, with --slices N axial slices (made once per volume)."""
    volume = scan.report.volumes[0]
    path = scan.root / volume.path
    ref = volume_ref(path, scan.root, TITLES.get(scan.report.source, scan.report.source), volume.spacing)
    if settings.slices == 0:
        return ref
    variant = f"axial-slices n={settings.slices} slope={volume.rescale_slope} intercept={volume.rescale_intercept}"
    blob = derived_once(out, path, variant, lambda: _slices_blob(path, settings.slices, volume.rescale_slope,
                                                                  volume.rescale_intercept, volume.volume_id),
                        _blob_usable)
    slices = [{"axis": s["axis"], "index": s["index"], "derivation": s["derivation"],
               "image": {"bytes": base64.b64decode(s["png"]), "path": s["path"]}} for s in json.loads(blob)]
    return VolumeRef.model_validate({**ref.model_dump(), "slices": slices})


# --------------------------------------------------------------------------- run


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

    volumes: dict[str, VolumeRef] = {}
    for scan in plan.scans:  # before any request: an unreadable volume costs nothing
        try:
            volumes[scan.id] = scan_volume(scan, settings, out)
        except VolumeError as exc:
            rejects.append(_source_reject(scan, exc.reason, f"{scan.id}: {exc}"))
            counts[f"rejected_{exc.reason}"] += 1
    scans = {s.id: s for s in plan.scans if s.id in volumes}
    reports = [Report(id=i, text=s.report.text or "") for i, s in scans.items()]

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
    for name, node in nodes.items():
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

    def base(scan: Scan, row_id: str) -> dict[str, Any]:
        return {"id": row_id, "source": scan.report.source, "scan_id": scan.report.scan_id,
                "patient_id": scan.report.patient_id, "volume": volumes[scan.id],
                "lineage": lineage(scan, volumes[scan.id])}

    rows: dict[str, dict[str, list[Any]]] = {c: {s: [] for s in SPLITS} for c in CONFIGS}
    for group in grouped:
        scan = scans[group.report.id]
        for item in group.items:
            t = item.thought
            rows["vqa_thinking"][scan.report.split].append(VqaThinkingRecord(
                **base(scan, f"{scan.id}/q{t.question.index}"), question=t.question.question, focus=t.question.focus,
                thinking=item.thinking, answer=t.answer, raw_thinking=t.thinking, thinking_from=t.thinking_from))
        narrative: Narrative | None = told["narrative"].outputs.get(group.report.id)
        if narrative is not None:
            rows["report_thinking"][scan.report.split].append(ReportThinkingRecord(
                **base(scan, scan.id), report=group.report.text, **narrative.model_dump(),
                questions=[i.thought.question.question for i in group.items]))
    if settings.rewrite:
        for item_id, item in result["rewrite_judge"].outputs.items():
            scan = scans[item_id]
            verdicts = result["rewrite_judge"].verdicts.get(item_id, {})
            rows["report_rewrite"][scan.report.split].append(ReportRewriteRecord(
                **base(scan, scan.id), report=item.report.text, rewrite=item.text,
                judge_reason="; ".join(v.reason for _, v in sorted(verdicts.items()))))
    if settings.translate:
        for item_id, item in result["translate"].outputs.items():
            scan = scans[item_id]
            rows["translation"][scan.report.split].append(TranslationRecord(
                **base(scan, scan.id), report=item.report.text, language=item.language, translation=item.text))

    asked = ["vqa_thinking", "report_thinking", *(["report_rewrite"] if settings.rewrite else []),
             *(["translation"] if settings.translate else [])]
    records = {"vqa_thinking": VqaThinkingRecord, "report_thinking": ReportThinkingRecord,
               "report_rewrite": ReportRewriteRecord, "translation": TranslationRecord}
    chunks: list[ChunkResult] = []
    for config in asked:
        for split in SPLITS:
            kept = sorted(rows[config][split], key=lambda r: r.id)
            written = write_split(out, config, split, kept, len(kept), records[config], settings.rows_per_shard)
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
    reports = [Report(id=s.id, text=s.report.text or "") for s in plan.scans]
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
