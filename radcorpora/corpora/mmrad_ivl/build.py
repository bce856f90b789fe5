"""mmrad-ivl: GEMeX-ThinkVG traces + MIMIC-CXR-JPG images and reports -> interleaved reasoning rows.

prepare: read GEMeX-ThinkVG (one trace per image, questions in merge order) and MIMIC-CXR-JPG
with its reports; join by dicom_id / study_id (an image or report missing is a counted reject);
the split is MIMIC's official one, one per patient.
run: the LLM pipeline (llm.py: summarise -> reflect -> cross_audit) -> the anatomical aggregation
(ops.regions.group_steps; a region outside the mapping is a counted reject of its step) -> one crop
per group from the original image (ops.crop through derived_once: byte-stable, once per build)
-> records; a seeded 5 % `benchmark` of train, stratified by number of steps; figures as the paper
reports them; the fidelity judge on a seeded sample, with a sheet for a human expert.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from PIL import Image

from radcorpora.corpora.avoid import avoided_patients
from radcorpora.corpora.mmrad_ivl.llm import (
    STAGES,
    Reflected,
    Trace,
    TraceQuestion,
    TraceRegion,
    fidelity_pipeline,
    load_prompts,
    pipeline,
)
from radcorpora.corpora.mmrad_ivl.records import (
    GroupStepRecord,
    LlmProvenance,
    MmradIvlRecord,
    ReflectionChange,
)
from radcorpora.corpora.mmrad_ivl.settings import CORPUS, LICENCE_CLASS, MmradIvlSettings
from radcorpora.llm.audit import DECISIONS_FILE, FAILURES_FILE, QUEUE_FILE
from radcorpora.llm.estimate import total
from radcorpora.llm.pipeline import model_id
from radcorpora.ops.crop import CropError, crop_decoded, crop_rectangle, crop_variant, decode
from radcorpora.ops.image_check import image_intact
from radcorpora.ops.regions import RegionStep, group_steps
from radcorpora.ops.sampling import rank_key
from radcorpora.prompts.loader import packaged_text
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import ImageData, Lineage, Reject
from radcorpora.schemas.cxr import CxrImage, StudyReport
from radcorpora.schemas.gemex import GemexImage
from radcorpora.schemas.identity import patient_key
from radcorpora.schemas.interleaved import ImageProvenance
from radcorpora.sources.gemex import scan_gemex_thinkvg
from radcorpora.sources.mimic_cxr import scan_mimic_cxr
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.store import atomic
from radcorpora.store.shards import write_split
from radcorpora.store.spill import RecordSpill
from radcorpora.store.source_index import read_file
from radcorpora.store.state import LLM_STORE, STATE_DIR, ChunkResult, ShardInfo, derived_once

SPLITS = ("train", "benchmark", "validation", "test")
FIDELITY_FILE = "build/fidelity_audit.jsonl"
SHEET_FILE = "build/fidelity_sheet.csv"
SHEET_COLUMNS = ("id", "report", "steps", "ai_score", "ai_reason", "expert_score", "expert_note")


# --------------------------------------------------------------------------- wording of a row


@dataclass(frozen=True)
class RecordWording:
    id: str
    content_hash: str
    prompt: str
    ordinals: tuple[str, ...]
    areas: dict[str, str]
    step: str
    closing: str


def load_wording() -> RecordWording:
    """The row wording file (prompts/mmrad_ivl_record.yaml); its id and hash go to the fingerprint."""
    _, text = packaged_text(__package__, "mmrad_ivl_record")
    raw = yaml.safe_load(text)
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    return RecordWording(raw["id"], digest, raw["prompt"], tuple(raw["ordinals"]), dict(raw["areas"]), raw["step"],
                         raw["closing"])


# --------------------------------------------------------------------------- prepare


@dataclass
class Source:
    """Where a trace comes from (kept out of the pipeline's items)."""

    gemex: GemexImage
    image: CxrImage
    report: StudyReport
    split: str


@dataclass
class MmradPlan:
    traces: list[Trace]
    where: dict[str, Source]
    rejects: list[Reject]
    counts: Counter
    roots: dict[str, Path]


def report_text(report: StudyReport) -> str | None:
    parts = [f"FINDINGS: {report.findings}" if report.findings else "",
             f"IMPRESSION: {report.impression}" if report.impression else ""]
    text = " ".join(p for p in parts if p)
    return text or None


def _reject_of(gemex: GemexImage, reason: str, detail: str) -> Reject:
    """A trace's reject, pointed at the source row of its first question."""
    first = gemex.questions[0]
    return Reject(source=first.source, row=first.row, reason=reason, detail=f"{gemex.image_id}: {detail}")


def read_sources(sources: dict[str, Path], settings: MmradIvlSettings, log: Callable[[str], None]) -> MmradPlan:
    gemex = scan_gemex_thinkvg(sources["gemex_thinkvg"], settings.box_frame)
    mimic = scan_mimic_cxr(sources["mimic_cxr"], sources["mimic_cxr_reports"])
    log(f"GEMeX-ThinkVG: {len(gemex.images)} images, {gemex.counts['questions']} questions; "
        f"MIMIC-CXR-JPG: {len(mimic.images)} images, {len(mimic.reports)} reports")
    by_id = {image.image_id: image for image in mimic.images}
    counts: Counter = Counter({f"gemex_{k}": v for k, v in gemex.counts.items()})
    counts.update({f"mimic_{k}": v for k, v in mimic.counts.items()})
    rejects = [*gemex.rejects, *mimic.rejects]
    joined: list[tuple[GemexImage, CxrImage, StudyReport, str]] = []
    for item in gemex.images:
        image = by_id.get(item.image_id)
        if image is None:
            rejects.append(_reject_of(item, "image_not_in_mimic_cxr", f"{item.image_path} is not a MIMIC-CXR-JPG "
                                                                        "image with a split row"))
            continue
        if image.subject_id != item.subject_id or image.study_id != item.study_id:
            rejects.append(_reject_of(item, "image_path_conflict", f"{item.image_path}: MIMIC-CXR-JPG has it under "
                                                                     f"p{image.subject_id}/s{image.study_id}"))
            continue
        report = mimic.reports.get(item.study_id)
        text = report_text(report) if report is not None else None
        if report is None or text is None:
            rejects.append(_reject_of(item, "no_report", f"study {item.study_id} has no report with findings or "
                                                          "impression"))
            continue
        joined.append((item, image, report, text))
    # one split per patient: the official split of the patient's first image; others are rejects
    split_of: dict[str, str] = {}
    traces, where = [], {}
    for item, image, report, text in sorted(joined, key=lambda j: (j[1].subject_id, j[1].study_id or "", j[1].image_id)):
        split = split_of.setdefault(image.subject_id, image.split)
        if image.split != split:
            rejects.append(_reject_of(item, "patient_in_several_splits", f"patient {image.subject_id} is in {split}; "
                                                                           f"this image is in {image.split}"))
            continue
        traces.append(Trace(id=item.image_id, report=text, questions=[
            TraceQuestion(kind=q.question_type, question=q.question, answer=q.answer, reasoning=q.reasoning,
                          regions=[TraceRegion(region=r.region, box=r.box.xyxy) for r in q.regions])
            for q in item.questions]))
        where[item.image_id] = Source(item, image, report, split)
    counts["traces_joined"] = len(traces)
    return MmradPlan(traces, where, rejects, counts,
                     {"gemex_thinkvg": gemex.root, "mimic_cxr": Path(sources["mimic_cxr"]),
                      "mimic_cxr_reports": Path(sources["mimic_cxr_reports"])})


def prepare(sources: dict[str, Path], settings: MmradIvlSettings, log: Callable[[str], None]) -> Prepared:
    plan = read_sources(sources, settings, log)
    prompts, wording = load_prompts(), load_wording()
    content = hashlib.sha256()
    for trace in plan.traces:
        content.update(trace.model_dump_json().encode() + b"\n" + plan.where[trace.id].split.encode() + b"\n")
    fingerprint = {"prompts": {**{p.id: p.content_hash for p in prompts.values()}, wording.id: wording.content_hash},
                   "sources": {"traces": len(plan.traces), "content": content.hexdigest()[:16]}}
    return Prepared(fingerprint=fingerprint, plan=plan)


# --------------------------------------------------------------------------- aggregation, crops, records


def _box(xyxy: tuple[float, float, float, float]) -> Box:
    return Box.from_normalised(*xyxy)


def aggregate(item: Reflected, source: Source) -> tuple[list, list[Reject]]:
    """Group steps (mediastinal, lung, bone, other) of a reflected trace; a region outside the
    mapping is a reject of its step (the trace keeps its other steps)."""
    steps = [RegionStep(region=s.region, text=s.text, boxes=tuple(_box(b) for b in s.boxes)) for s in item.steps]
    groups, outside = group_steps(steps)
    rejects = [_reject_of(source.gemex, r.reason, f"region {r.region!r} is not one of the 35 regions of the mapping; "
                                                  f"its step ({r.text[:60]!r}) is left out") for r in outside]
    kept = []
    for group in groups:
        if group.box is None:
            rejects.append(_reject_of(source.gemex, "step_without_box", f"group {group.group} has no box"))
        else:
            kept.append(group)
    return kept, rejects


def make_record(item: Reflected, groups: list, source: Source, verification: str, settings: MmradIvlSettings,
                out: Path, wording: RecordWording, lineage_ids: tuple[list[str], list[str], list[str]]) -> MmradIvlRecord:
    """One row: the full image as read, then each group's crop (made once per build), the
    interleaved response and the structured steps. Raises CropError for an unusable image."""
    path = Path(source.image.path)
    data, (_, _, digest) = read_file(path)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CropError(f"image does not decode: {exc}") from exc
    rel = source.gemex.image_path
    images = [ImageData(bytes=data, path=rel)]
    provenance = [ImageProvenance(source_sha256=digest, source_path=rel)]
    steps, lines = [], []
    decoded: list[Image.Image] = []  # decoded once, and only when a crop is not kept from before

    def cut_png(box: Box) -> bytes:
        if not decoded:
            decoded.append(decode(data))
        return crop_decoded(decoded[0], box, settings.crop_margin)[0]

    for index, group in enumerate(groups):
        box = Box.from_normalised(*group.box.xyxy, width=width, height=height)
        cut = crop_rectangle(box, width, height, settings.crop_margin)
        covered = crop_rectangle(box, width, height, 0.0)
        png = derived_once(out, path, crop_variant(box, settings.crop_margin),
                           lambda box=box: cut_png(box), image_intact)
        images.append(ImageData(bytes=png, path=f"{rel[:-4]}_{group.group}.png"))
        provenance.append(ImageProvenance(source_sha256=digest, source_path=rel, parent=0, box=box, crop=cut,
                                          derivation=crop_variant(box, settings.crop_margin)))
        pixels = [covered.left, covered.top, covered.right, covered.bottom]
        steps.append(GroupStepRecord(group=group.group, regions=list(group.regions), text=group.text, box=box,
                                     box_pixels=pixels, crop_pixels=[cut.left, cut.top, cut.right, cut.bottom],
                                     image=index + 1))
        lines.append(wording.step.format(ordinal=wording.ordinals[index], area=wording.areas[group.group],
                                         box=f"[{', '.join(str(v) for v in pixels)}]", text=group.text))
    lines.append(wording.closing.format(report=item.trace.report))
    prompt_ids, prompt_hashes, models = lineage_ids
    changes = [ReflectionChange(step=c.step, region=item.steps[c.step].region, before=c.before, after=c.after,
                                reason=c.reason) for c in item.changes]
    return MmradIvlRecord(
        id=item.trace.id, images=images, image_provenance=provenance, prompt=wording.prompt,
        response="\n\n".join(lines), steps=steps, report=item.trace.report, subject_id=source.image.subject_id,
        study_id=source.image.study_id or "", questions=len(item.trace.questions),
        llm=LlmProvenance(summariser=model_id(settings.llm), auditors=[model_id(a) for a in settings.auditors],
                          verification=verification, reflection_changes=changes, region_steps=len(item.steps)),
        lineage=Lineage(source_dataset="GEMeX-ThinkVG + MIMIC-CXR-JPG", source_id=item.trace.id,
                        source_split=source.image.split, licence_class=LICENCE_CLASS,
                        image_sha256=",".join([digest, *(hashlib.sha256(i.bytes).hexdigest() for i in images[1:])]),
                        prompt_ids=prompt_ids, prompt_hashes=prompt_hashes, models=models))


def benchmark_ids(train: dict[str, tuple[str, int]], fraction: float, seed: int,
                  avoid: frozenset[str] = frozenset()) -> tuple[set[str], dict[str, dict[str, int]]]:
    """A seeded `fraction` of the train traces (id -> (patient, steps)), stratified by number of
    steps and patient-disjoint from train. Quotas: round(fraction x n) in all, shared out over the
    strata by largest remainder (ties: fewer steps first). Patients are taken whole, in a seeded
    order, while every stratum they touch has quota left; a patient in `avoid` (namespaced,
    `--avoid`) is never taken. Returns the ids and per-stratum counts."""
    strata: Counter = Counter(n for _, n in train.values())
    wanted = round(fraction * len(train))
    exact = {n: fraction * c for n, c in strata.items()}
    left = {n: int(v) for n, v in exact.items()}
    for n in sorted(exact, key=lambda n: (-(exact[n] - left[n]), n))[:max(0, wanted - sum(left.values()))]:
        left[n] += 1
    patients: dict[str, list[str]] = defaultdict(list)
    for trace_id, (patient, _) in train.items():
        patients[patient].append(trace_id)
    chosen: set[str] = set()
    order = sorted((p for p in patients if patient_key("mimic-cxr", p) not in avoid),
                   key=lambda p: rank_key(seed, CORPUS, p, "benchmark"))
    for ties in (False, True):  # first patients that fill more quota than they overshoot, then ties
        for patient in order:
            if patient in chosen or sum(max(v, 0) for v in left.values()) == 0 or (ties and len(chosen) >= wanted):
                continue
            need = Counter(train[i][1] for i in patients[patient])
            useful = sum(min(k, max(left[n], 0)) for n, k in need.items())
            if useful > sum(need.values()) - useful or (ties and useful and useful == sum(need.values()) - useful):
                chosen.update(patients[patient])
                for n, k in need.items():
                    left[n] -= k
    taken = Counter(train[i][1] for i in chosen)
    return chosen, {str(n): {"train": c - taken[n], "benchmark": taken[n]} for n, c in sorted(strata.items())}


class TraceFigures(NamedTuple):
    """What `figures` needs of one record (kept for every record; the record itself is spilled)."""

    groups: tuple[str, ...]  # each step's group
    grounded: int  # steps with a crop
    words: int  # rationale words over the steps
    changes: int  # reflection changes


def trace_figures(record: MmradIvlRecord) -> TraceFigures:
    return TraceFigures(groups=tuple(s.group for s in record.steps), grounded=sum(1 for s in record.steps if s.image >= 1),
                        words=sum(len(s.text.split()) for s in record.steps), changes=len(record.llm.reflection_changes))


def figures(by_split: dict[str, list[TraceFigures]]) -> dict[str, Any]:
    """The paper's figures: traces, mean steps per trace, mean rationale words, share of steps
    grounded (a box and a crop), steps per group; overall and per split."""
    def of(traces: list[TraceFigures]) -> dict[str, Any]:
        steps = sum(len(t.groups) for t in traces)
        return {"traces": len(traces),
                "mean_steps_per_trace": round(steps / len(traces), 3) if traces else None,
                "mean_rationale_words": round(sum(t.words for t in traces) / len(traces), 1) if traces else None,
                "steps_grounded_share": round(sum(t.grounded for t in traces) / steps, 4) if steps else None,
                "steps_per_group": dict(sorted(Counter(g for t in traces for g in t.groups).items())),
                "traces_by_steps": {str(k): v for k, v in sorted(Counter(len(t.groups) for t in traces).items())},
                "reflection_changes": sum(t.changes for t in traces)}
    every = [t for split in SPLITS for t in by_split.get(split, [])]
    return {**of(every), "splits": {split: of(by_split.get(split, [])) for split in SPLITS}}


# --------------------------------------------------------------------------- the fidelity audit (d)


def fidelity_sample(ids: list[str], size: int, seed: int) -> list[str]:
    return sorted(sorted(ids, key=lambda i: rank_key(seed, CORPUS, i, "fidelity"))[:size])


def fidelity_figures(ai: dict[str, int], expert: dict[str, int] | None = None) -> dict[str, Any]:
    """Mean and share >= 4 of the AI scores; with expert scores, agreement on the traces both scored:
    exact and within-one shares, quadratic-weighted Cohen's kappa (statsmodels) and the experts' own mean."""
    values = list(ai.values())
    out: dict[str, Any] = {"scored": len(values),
                           "mean": round(sum(values) / len(values), 3) if values else None,
                           "share_ge_4": round(sum(v >= 4 for v in values) / len(values), 4) if values else None}
    both = sorted(set(ai) & set(expert or {}))
    if expert is not None:
        pairs = [(ai[i], expert[i]) for i in both]
        agreement: dict[str, Any] = {"traces": len(pairs)}
        if pairs:
            import numpy as np
            from statsmodels.stats.inter_rater import cohens_kappa

            a, h = [p[0] for p in pairs], [p[1] for p in pairs]
            table = np.zeros((5, 5))
            for x, y in pairs:
                table[x - 1, y - 1] += 1
            kappa = cohens_kappa(table, wt="quadratic", return_results=False) if len(set(a + h)) > 1 else None
            agreement.update({"exact": round(sum(x == y for x, y in pairs) / len(pairs), 4),
                              "within_one": round(sum(abs(x - y) <= 1 for x, y in pairs) / len(pairs), 4),
                              "weighted_kappa": None if kappa is None or math.isnan(kappa) else round(float(kappa), 4),
                              "expert_mean": round(sum(h) / len(h), 3),
                              "expert_share_ge_4": round(sum(v >= 4 for v in h) / len(h), 4)})
        out["human_agreement"] = agreement
    return out


def write_sheet(path: Path, items: list[Reflected], scores: dict[str, Any], kept: dict[str, int] | None = None) -> None:
    """The expert's sheet: the trace, the AI score and reason, empty expert columns (a filled sheet's
    expert scores are kept when it is written again)."""
    rows = [SHEET_COLUMNS]
    for item in items:
        score = scores.get(item.trace.id)
        rows.append((item.trace.id, item.trace.report, "\n".join(f"{s.region}: {s.text}" for s in item.steps),
                     "" if score is None else str(score.score), "" if score is None else score.reason,
                     str((kept or {}).get(item.trace.id, "")), ""))
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    atomic.write_bytes(path, text.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------- run


def run(prepared: Prepared, settings: MmradIvlSettings, ctx: BuildContext) -> StageOutput:
    plan: MmradPlan = prepared.plan
    out = ctx.out
    prompts, wording = load_prompts(), load_wording()
    decisions = dict(sorted(settings.decisions.items()))
    if decisions:
        atomic.write_jsonl(out / DECISIONS_FILE, [{"id": k, "decision": v} for k, v in decisions.items()])
    graph, judge = pipeline(settings), fidelity_pipeline(settings)
    responders = {**graph.offline_responders(), **(judge.offline_responders() if judge else {})}
    session = ctx.llm_session(responders)
    spill = RecordSpill(out / STATE_DIR, "mmrad-ivl-records")  # deleted when the shards are written
    counts: Counter = Counter(plan.counts)
    rejects: list[Reject] = list(plan.rejects)
    with spill:
        try:
            result = graph.run(plan.traces, session, ctx.llm_store, decisions)
            for node in ("summarise", "reflect", *(("cross_audit",) if settings.auditors else ())):
                for item_id, reject in sorted(result[node].rejects.items()):
                    rejects.append(_reject_of(plan.where[item_id].gemex, reject.reason, reject.detail))
                    counts[f"rejected_{reject.reason}"] += 1
            reflected: dict[str, Reflected] = result["reflect"].outputs
            audit = result["cross_audit"] if settings.auditors else None
            kept = {i: (item, audit.settled[i] if audit else "not_run") for i, item in reflected.items()
                    if audit is None or i in audit.outputs}

            used = ["mmrad_ivl_summarise", "mmrad_ivl_reflect", *(["mmrad_ivl_audit"] if settings.auditors else [])]
            lineage_ids = ([prompts[n].id for n in used] + [wording.id], [prompts[n].content_hash for n in used]
                           + [wording.content_hash], [model_id(settings.llm), *(model_id(a) for a in settings.auditors)])
            made: dict[str, TraceFigures] = {}  # the records made, in plan order (each one is in the spill)
            patients: dict[str, str] = {}
            for trace in plan.traces:
                if trace.id not in kept:
                    continue
                item, verification = kept[trace.id]
                source = plan.where[trace.id]
                groups, step_rejects = aggregate(item, source)
                rejects.extend(step_rejects)
                counts.update(f"rejected_{r.reason}" for r in step_rejects)
                if not groups:
                    rejects.append(_reject_of(source.gemex, "no_grounded_step", "no step is left after the aggregation"))
                    counts["rejected_no_grounded_step"] += 1
                    continue
                try:
                    record = make_record(item, groups, source, verification, settings, out, wording, lineage_ids)
                except (OSError, CropError) as exc:
                    rejects.append(_reject_of(source.gemex, "image_unusable", f"{source.image.path}: {exc}"))
                    counts["rejected_image_unusable"] += 1
                    continue
                spill.put(trace.id, record)
                made[trace.id], patients[trace.id] = trace_figures(record), record.subject_id
                del record  # its images live in the spill only

            train = {i: (patients[i], len(f.groups)) for i, f in made.items() if plan.where[i].split == "train"}
            bench, strata = benchmark_ids(train, settings.benchmark_fraction, settings.seed,
                                          avoided_patients(settings.avoid))
            by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
            for trace_id in made:
                split = plan.where[trace_id].split
                by_split["benchmark" if trace_id in bench else split].append(trace_id)

            fidelity: dict[str, Any] = {"sample": 0}
            files = [FAILURES_FILE, QUEUE_FILE, *([DECISIONS_FILE] if decisions else [])]
            if judge is not None and made:
                sample = fidelity_sample(sorted(made), settings.audit_sample, settings.seed)
                judged = judge.run([reflected[i] for i in sample], session, ctx.llm_store)
                scores = judged["fidelity"].outputs
                for item_id, reject in sorted(judged["fidelity"].rejects.items()):
                    counts[f"fidelity_{reject.reason}"] += 1
                expert = dict(settings.expert_scores) or None
                write_sheet(out / SHEET_FILE, [reflected[i] for i in sample], scores, expert)
                atomic.write_jsonl(out / FIDELITY_FILE, [{"id": i, "score": scores[i].score, "reason": scores[i].reason}
                                                         for i in sample if i in scores])
                fidelity = {"sample": len(sample), "judge": model_id(judge.nodes[0].models[0]),
                            **fidelity_figures({i: s.score for i, s in scores.items()}, expert)}
                files += [SHEET_FILE, FIDELITY_FILE]
        finally:
            session.close()
        chunks: list[ChunkResult] = []
        for split in SPLITS:
            ids = sorted(by_split[split])  # a record's id is its trace's
            written = write_split(out, "default", split, spill.take(ids), len(ids), MmradIvlRecord,
                                  settings.images_per_shard)
            chunks.append(ChunkResult(chunk_id=f"default-{split}", shards={
                rel: ShardInfo(rows=n, sha256=digest) for rel, (n, digest) in written.items()}))
    queue = result.queue
    atomic.write_jsonl(out / FAILURES_FILE, session.ledger.entries)
    atomic.write_jsonl(out / QUEUE_FILE, [q.model_dump(mode="json") for q in queue])
    counts["traces"] = len(made)
    agreement = {k: v for k, v in audit.agreement.items() if k != "settled"} if audit else {}
    return StageOutput(
        chunks=chunks, rejects=rejects, counts=counts, configs_asked=["default"], files=files,
        warnings=([f"{len(queue)} trace(s) await adjudication in {QUEUE_FILE}"] if queue else [])
        + ([f"{len(session.ledger.entries)} LLM request(s) failed; rerun to retry them"] if session.ledger.entries else []),
        manifest={
            "source": {"datasets": ["GEMeX-ThinkVG", "MIMIC-CXR-JPG", "MIMIC-CXR reports"],
                       "box_frame": settings.box_frame, "traces_joined": len(plan.traces)},
            "figures": figures({split: [made[i] for i in ids] for split, ids in by_split.items()}),
            "benchmark": {"fraction": settings.benchmark_fraction, "stratified_by": "steps", "strata": strata},
            "fidelity": fidelity,
            "prompts": {**{prompts[n].id: prompts[n].content_hash for n in used}, wording.id: wording.content_hash},
            "llm": {"summariser": model_id(settings.llm), "auditors": [model_id(a) for a in settings.auditors],
                    "stages": {s.name: s.description for s in STAGES}, **session.summary(),
                    "verification": agreement, "adjudication_pending": len(queue),
                    "adjudication_decisions": len(decisions), "pipeline": result.figures(),
                    "cache_path": str(session.cache.path)},
            "rebuild": {"sources": {k: str(Path(v).resolve()) for k, v in plan.roots.items()}},
        })


def estimate(sources: dict[str, Path], settings: MmradIvlSettings, log) -> tuple[Callable[..., dict[str, Any]],
                                                                                 dict[str, Any]]:
    """The pipeline's estimate (and the fidelity judge's on its sample, sized from stand-ins), to be
    called with the LLM settings and the build folder whose stored outputs count as done."""
    plan = read_sources(sources, settings, log)
    graph, judge = pipeline(settings), fidelity_pipeline(settings)
    info = {"samples": len(plan.traces), "rejected_rows": len(plan.rejects)}

    def sized(llm_settings: Any, out: Path | None = None) -> dict[str, Any]:
        store = None if out is None else Path(out) / LLM_STORE
        main = graph.estimate(plan.traces, llm_settings, store, corpus=CORPUS)
        if judge is None:
            return main
        from radcorpora.corpora.mmrad_ivl.llm import _reflected_stand_in, _summary_stand_in

        sample = fidelity_sample([t.id for t in plan.traces], settings.audit_sample, settings.seed)
        by_id = {t.id: t for t in plan.traces}
        extra = judge.estimate([_reflected_stand_in(_summary_stand_in(by_id[i])) for i in sample], llm_settings, store,
                               corpus=CORPUS)
        main["stages"] = main["stages"] + extra["stages"]
        main["total"] = total(main["stages"])
        return main

    return sized, info
