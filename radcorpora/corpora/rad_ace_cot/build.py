"""rad-ace-cot: PubMedVision CT/MR samples -> `<think>...</think><answer>...</answer>` chains of thought.

Stages: select (CT/MR, optional seeded subset, image check) -> generate (one reasoning-model call
per sample, description + question in, tagged reasoning out) -> check (tags, length, no
source-text leak) -> verify (optional: one or more models judge answer consistency; disagreements
go to the adjudication queue) -> records. The LLM answers live in the cache, so a killed or
repeated build pays only for what was never answered.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from radcorpora.corpora.rad_ace_cot.records import CotEvalRecord, CotRecord
from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.runner import CallResult
from radcorpora.llm.session import LLMSession
from radcorpora.llm.stage import LLMStage, offline_responders
from radcorpora.llm.structured import JsonParser, TagParser
from radcorpora.llm.verify import (
    DECISIONS_FILE,
    FAILURES_FILE,
    QUEUE_FILE,
    QueueEntry,
    Verdict,
    agreement,
    settle,
)
from radcorpora.ops.cot import CotBounds, cot_problems, leaked_phrases
from radcorpora.ops.image_check import ImageCheckError, check_image
from radcorpora.ops.sampling import rank_key, row_rng
from radcorpora.prompts.llm import Prompt, load_prompt
from radcorpora.schemas.common import ImageData, Lineage, Reject, Turn
from radcorpora.sources.pubmedvision import PubMedVisionSample, PubMedVisionScan, scan_pubmedvision
from radcorpora.sources.vqa_rad import VqaRadTest, read_vqa_rad_test
from radcorpora.spec.corpus import Cli
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.store import atomic
from radcorpora.store.shards import write_split
from radcorpora.store.state import ChunkResult, ShardInfo

CORPUS = "rad-ace-cot"
LICENCE_CLASS = "public"  # PubMedVision: apache-2.0; VQA-RAD: cc0-1.0
GENERATE_FIELDS = frozenset({"description", "question"})
VERIFY_FIELDS = frozenset({"description", "question", "cot"})
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif"}


class RadAceCotConfig(BaseModel):
    """Everything that decides a build's content (part of its fingerprint)."""

    seed: int = Field(0, description="Seed of every random choice")
    subset: Literal["alignment", "instruction"] = Field(
        "alignment", description="alignment | instruction (which PubMedVision file)")
    max_samples: int | None = Field(None, ge=1, description="Seeded subset size (the paper used 12,000)")
    validation_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="Share of samples in the validation split")
    llm: Annotated[str, Cli(required=True, metavar="PROVIDER:MODEL")] = Field(
        "offline", description="Model writing the chains of thought: openai:MODEL (OPENAI_BASE_URL for compatible "
                               "servers), anthropic:MODEL, azure:DEPLOYMENT, offline")
    verifiers: Annotated[list[str], Cli(flag="--verify", repeat=True, metavar="PROVIDER:MODEL")] = Field(
        default_factory=list, description="Verifier model (repeat for several)")
    sampling: Annotated[Sampling, Cli(hidden=True)] = Sampling(temperature=0.6, max_tokens=4096)
    bounds: Annotated[CotBounds, Cli(hidden=True)] = Field(default_factory=CotBounds)
    prompt_path: Annotated[str | None, Cli(flag="--prompt", metavar="FILE")] = Field(
        None, description="Your own generation prompt file")
    verify_prompt_path: Annotated[str | None, Cli(flag="--verify-prompt", metavar="FILE")] = Field(
        None, description="Your own verification prompt file")
    images_per_shard: int = Field(1000, ge=1, description="Images per Parquet shard")
    decisions: Annotated[dict[str, Literal["accept", "reject"]], Cli(hidden=True)] = Field(
        default_factory=dict)  # a person's adjudication (build/adjudication_decisions.jsonl)


def load_prompts(config: RadAceCotConfig) -> tuple[Prompt, Prompt]:
    generate = load_prompt("rad_ace_cot", Path(config.prompt_path) if config.prompt_path else None, GENERATE_FIELDS,
                           __package__)
    verify = load_prompt("rad_ace_cot_verify", Path(config.verify_prompt_path) if config.verify_prompt_path else None,
                         VERIFY_FIELDS, __package__)
    return generate, verify


# --------------------------------------------------------------------------- select


@dataclass
class Selected:
    sample: PubMedVisionSample
    split: str
    image_hashes: tuple[str, ...]
    image_sizes: tuple[tuple[int, int], ...]


def select_samples(scan: PubMedVisionScan, config: RadAceCotConfig) -> tuple[list[Selected], list[Reject]]:
    """The seeded subset (if any) of readable samples, in id order, each with its split."""
    ranked = sorted(scan.samples, key=lambda s: rank_key(config.seed, CORPUS, s.id, "subset"))
    selected: list[Selected] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for sample in ranked:
        if config.max_samples is not None and len(selected) >= config.max_samples:
            break
        if sample.id in seen:
            rejects.append(Reject(source=sample.file, row=str(sample.row), reason="duplicate_id", detail=sample.id))
            continue
        seen.add(sample.id)
        hashes, sizes = [], []
        try:
            for path in sample.images:
                data = path.read_bytes()
                sizes.append(check_image(data, "full"))
                hashes.append(hashlib.sha256(data).hexdigest())
        except (OSError, ImageCheckError) as exc:
            rejects.append(Reject(source=sample.file, row=str(sample.row), reason="image_does_not_decode",
                                  detail=f"{sample.id}: {path.name}: {exc}"))
            continue
        split = "validation" if row_rng(config.seed, CORPUS, sample.id, "split").random() < config.validation_fraction else "train"
        selected.append(Selected(sample, split, tuple(hashes), tuple(sizes)))
    selected.sort(key=lambda s: s.sample.id)
    return selected, rejects


# --------------------------------------------------------------------------- generate and check


def generation_request(item: Selected, prompt: Prompt, config: RadAceCotConfig) -> LLMRequest:
    """Text only: the reasoning model reads the findings, as in the method (no image is sent)."""
    sample = item.sample
    return LLMRequest(
        id=sample.id, stage="cot", system=prompt.system,
        messages=(Message.user(prompt.render(description=sample.description, question=sample.question)),),
        sampling=config.sampling, output=OutputFormat(kind="tags", tags=("think", "answer")),
        licence_class=LICENCE_CLASS, prompt_id=prompt.id,
        hints={"description": sample.description, "question": sample.question, "modality": sample.modality})


def verification_request(item: Selected, cot: str, prompt: Prompt) -> LLMRequest:
    sample = item.sample
    return LLMRequest(
        id=sample.id, stage="verify", system=prompt.system,
        messages=(Message.user(prompt.render(description=sample.description, question=sample.question, cot=cot)),),
        sampling=Sampling(temperature=0.0, max_tokens=512),
        output=OutputFormat(kind="json", schema_name="verdict", json_schema=Verdict.model_json_schema()),
        licence_class=LICENCE_CLASS, prompt_id=prompt.id,
        hints={"description": sample.description, "cot": cot})


@dataclass
class Candidate:
    item: Selected
    cot_output: str
    think: str
    answer: str
    model: str


@dataclass
class StageOutcome:
    kept: list[tuple[Candidate, str]] = field(default_factory=list)  # (candidate, verification)
    queued: list[QueueEntry] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    agreement: dict[str, Any] = field(default_factory=dict)


def _reject(item: Selected, reason: str, detail: str) -> Reject:
    return Reject(source=item.sample.file, row=str(item.sample.row), reason=reason, detail=f"{item.sample.id}: {detail}")


class CotStage(LLMStage[Selected]):
    """One reasoning-model call per sample: findings + question in, tagged reasoning out."""

    name = "cot"
    description = "chain of thought written as a reading of the image, from the findings"
    expected_output_tokens = 2500  # reasoning models bill their thinking as output

    def __init__(self, prompt: Prompt, config: RadAceCotConfig, model: str):
        self.prompt_file, self.config, self.model = prompt, config, model

    def prompt(self, row: Selected) -> LLMRequest:
        return generation_request(row, self.prompt_file, self.config)

    def parser(self) -> TagParser:
        return TagParser()

    def parse(self, row: Selected, result: CallResult) -> list[Candidate] | Reject:
        checked = check_generation(row, result, self.config, self.model)
        return checked if isinstance(checked, Reject) else [checked]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_cot(request)


class VerifyStage(LLMStage[Candidate]):
    """A verifier model judges whether the answer is supported by the findings."""

    name = "verify"
    description = "answer consistency with the findings"
    output = Verdict
    expected_output_tokens = 80

    def __init__(self, prompt: Prompt):
        self.prompt_file = prompt

    def prompt(self, row: Candidate) -> LLMRequest:
        return verification_request(row.item, row.cot_output, self.prompt_file)

    def parser(self) -> JsonParser:
        return JsonParser(Verdict)

    def parse(self, row: Candidate, result: CallResult) -> list[Verdict] | Reject:
        if not result.ok:
            return _reject(row.item, f"llm_{result.error.kind if result.error else 'failed'}", str(result.error))
        return [result.parsed]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_verify(request)


STAGES = (CotStage, VerifyStage)


def check_generation(item: Selected, result: CallResult, config: RadAceCotConfig, model: str) -> Candidate | Reject:
    if not result.ok:
        assert result.error is not None
        return _reject(item, f"llm_{result.error.kind}", str(result.error))
    assert result.response is not None
    think, answer = result.parsed["think"], result.parsed["answer"]
    problems = cot_problems(think, answer, config.bounds)
    if problems:
        return _reject(item, "cot_check_" + problems[0].split(":")[0], "; ".join(problems))
    return Candidate(item, result.response.content.strip(), think, answer, model)


def run_stages(selected: list[Selected], config: RadAceCotConfig, session: LLMSession,
               decisions: dict[str, str]) -> StageOutcome:
    generate_prompt, verify_prompt = load_prompts(config)
    outcome = StageOutcome()
    candidates: list[Candidate] = []
    for _item, made in CotStage(generate_prompt, config, session.model_id(config.llm)).run(session, config.llm, selected):
        if isinstance(made, Reject):
            outcome.rejects.append(made)
            outcome.counts[made.reason] += 1
        else:
            candidates.extend(made)
    outcome.counts["generated"] = len(candidates)
    if not config.verifiers:
        outcome.kept = [(c, "not_run") for c in candidates]
        return outcome

    verdicts: dict[str, dict[str, Verdict]] = {c.item.sample.id: {} for c in candidates}
    for spec in config.verifiers:
        for candidate, made in VerifyStage(verify_prompt).run(session, spec, candidates):
            if not isinstance(made, Reject):
                verdicts[candidate.item.sample.id][session.model_id(spec)] = made[0]
    outcome.agreement = agreement(verdicts)
    expected = {session.model_id(s) for s in config.verifiers}
    for candidate in candidates:
        sample_id = candidate.item.sample.id
        given = verdicts[sample_id]
        settled, verdict_route = settle(given, expected, decisions.get(sample_id))
        if settled in ("passed", "adjudicated"):
            outcome.kept.append((candidate, settled))
        elif settled == "verifier_inconsistent":
            reasons = "; ".join(f"{m}: {v.reason}" for m, v in sorted(given.items()))
            outcome.rejects.append(_reject(candidate.item, "verifier_inconsistent", reasons))
        elif settled == "adjudicator_rejected":
            outcome.rejects.append(_reject(candidate.item, "adjudicator_rejected", "rejected by a person"))
        else:
            outcome.queued.append(QueueEntry(
                id=sample_id, verdicts=given,
                item={"question": candidate.item.sample.question, "description": candidate.item.sample.description,
                      "cot_output": candidate.cot_output, "images": list(candidate.item.sample.image_names),
                      "missing_verdicts": sorted(expected - set(given))}))
        outcome.counts[f"verification_{verdict_route}"] += 1
    return outcome


# --------------------------------------------------------------------------- estimate


def estimate_requests(selected: list[Selected], config: RadAceCotConfig) -> list[tuple[type[LLMStage], str, list[LLMRequest]]]:
    """(stage, model, requests) a build would send; verification is sized with the findings
    standing in for the not-yet-written reasoning (about the same length)."""
    generate_prompt, verify_prompt = load_prompts(config)
    plan: list[tuple[type[LLMStage], str, list[LLMRequest]]] = [
        (CotStage, config.llm, [generation_request(i, generate_prompt, config) for i in selected])]
    for spec in config.verifiers:
        plan.append((VerifyStage, spec, [verification_request(i, i.sample.description, verify_prompt) for i in selected]))
    return plan


# --------------------------------------------------------------------------- records


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def make_record(candidate: Candidate, verification: str, prompts: list[Prompt], models: list[str]) -> CotRecord:
    item = candidate.item
    sample = item.sample
    images = [ImageData(bytes=p.read_bytes(), path=name) for p, name in zip(sample.images, sample.image_names)]
    human = "<image>\n" * len(images) + sample.question
    return CotRecord(
        id=sample.id, images=images, question=sample.question, cot_output=candidate.cot_output,
        think=candidate.think, answer=candidate.answer,
        conversations=[Turn(**{"from": "human", "value": human}), Turn(**{"from": "gpt", "value": candidate.cot_output})],
        modality=sample.modality, body_part=sample.body_part, source_modality=sample.modality_text,
        verification=verification,
        lineage=Lineage(source_dataset="PubMedVision", source_id=sample.id, source_split="train",
                        licence_class=LICENCE_CLASS, image_sha256=",".join(item.image_hashes),
                        prompt_ids=[p.id for p in prompts], prompt_hashes=[p.content_hash for p in prompts],
                        models=models))


def eval_records(test: VqaRadTest) -> list[CotEvalRecord]:
    records = []
    for q in sorted(test.questions, key=lambda q: q.id):
        records.append(CotEvalRecord(
            id=f"vqa-rad-{q.id}", image=ImageData(bytes=q.image, path=q.image_name), question=q.question,
            answer=q.answer, answer_type="CLOSED" if q.answer_type == "CLOSED" else "OPEN", organ=q.organ,
            question_type=q.question_type,
            lineage=Lineage(source_dataset="VQA-RAD", source_id=q.id, source_split="test", licence_class="public",
                            image_sha256=hashlib.sha256(q.image).hexdigest())))
    return records


# --------------------------------------------------------------------------- the offline stand-in

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def offline_cot(request: LLMRequest) -> str:
    """Demo/test stand-in for the reasoning model (NOT a model): restates the findings as a
    first-person reading, step by step, and answers with the first finding."""
    description = request.hints.get("description", "")
    sentences = [s.strip() for s in _SENTENCE.split(description) if s.strip() and not leaked_phrases(s)]
    if not sentences:
        sentences = ["The image shows no assessable structures"]
    modality = {"CT": "CT", "MR": "MR"}.get(request.hints.get("modality", ""), "cross-sectional")
    openers = ("First, looking at the overall image:", "Next,", "Then,", "Looking more closely,", "Finally,")
    steps = [f"I am looking at a {modality} image and will go through it systematically to answer: "
             f"{request.hints.get('question', '').strip()}"]
    steps += [f"{openers[min(i, len(openers) - 1)]} {s[0].lower() + s[1:]}" for i, s in enumerate(sentences)]
    steps.append("Putting these observations together, the appearance is consistent with what is visible, and "
                 "nothing beyond it can be stated with confidence from this single image.")
    return f"<think>\n{' '.join(steps)}\n</think>\n<answer>\n{sentences[0]}\n</answer>"


def offline_verify(request: LLMRequest) -> str:
    """Demo/test stand-in verifier: consistent when most answer words occur in the findings."""
    findings = set(re.findall(r"[a-z]+", request.hints.get("description", "").lower()))
    answer = request.hints.get("cot", "").rsplit("<answer>", 1)[-1]
    terms = [w for w in re.findall(r"[a-z]+", answer.lower()) if len(w) > 3]
    share = sum(w in findings for w in terms) / len(terms) if terms else 0.0
    return json.dumps({"consistent": share >= 0.5, "reason": f"{share:.0%} of the answer's terms are in the findings"})


OFFLINE_RESPONDERS = offline_responders(STAGES)


# --------------------------------------------------------------------------- the corpus' stages



@dataclass
class RadAcePlan:
    scan: PubMedVisionScan
    selected: list[Selected]
    select_rejects: list[Reject]
    vqa_rad: VqaRadTest | None


def prepare(sources: dict[str, Path], config: RadAceCotConfig, log) -> Prepared:
    generate_prompt, verify_prompt = load_prompts(config)
    scan = scan_pubmedvision(sources["source"], config.subset)
    log(f"{scan.file.name}: {scan.counts['records']} records, {len(scan.samples)} CT/MR samples")
    selected, select_rejects = select_samples(scan, config)
    vqa_rad = read_vqa_rad_test(sources["vqa_rad"]) if sources.get("vqa_rad") else None
    content = hashlib.sha256()
    for item in selected:
        content.update(f"{item.sample.id}\t{','.join(item.image_hashes)}\t{item.sample.description}\t"
                       f"{item.sample.question}\n".encode())
    if vqa_rad is not None:
        for q in sorted(vqa_rad.questions, key=lambda q: q.id):
            content.update(f"{q.id}\t{hashlib.sha256(q.image).hexdigest()}\t{q.question}\t{q.answer}\n".encode())
    fingerprint = {
        "prompts": {generate_prompt.id: generate_prompt.content_hash, verify_prompt.id: verify_prompt.content_hash},
        "sources": {"file": scan.file.name, "samples": len(scan.samples), "selected": len(selected),
                    "content": content.hexdigest()[:16], "vqa_rad": bool(vqa_rad)},
    }
    return Prepared(fingerprint=fingerprint, plan=RadAcePlan(scan, selected, select_rejects, vqa_rad))


def run(prepared: Prepared, config: RadAceCotConfig, ctx: BuildContext) -> StageOutput:
    plan: RadAcePlan = prepared.plan
    out = ctx.out
    generate_prompt, verify_prompt = load_prompts(config)
    decisions = dict(sorted(config.decisions.items()))
    if decisions:
        atomic.write_jsonl(out / DECISIONS_FILE, [{"id": k, "decision": v} for k, v in decisions.items()])
    session = ctx.llm_session(OFFLINE_RESPONDERS)
    try:
        outcome = run_stages(plan.selected, config, session, decisions)
    finally:
        session.close()
    prompts = [generate_prompt] + ([verify_prompt] if config.verifiers else [])
    models = [session.model_id(config.llm), *(session.model_id(v) for v in config.verifiers)]
    chunks: list[ChunkResult] = []
    for split in ("train", "validation"):
        kept = [(c, v) for c, v in outcome.kept if c.item.split == split]
        records = (make_record(c, v, prompts, models) for c, v in kept)
        written = write_split(out, "default", split, records, len(kept), CotRecord, config.images_per_shard)
        chunks.append(ChunkResult(chunk_id=f"default-{split}", shards={
            rel: ShardInfo(rows=rows, sha256=digest) for rel, (rows, digest) in written.items()}))
    eval_rejects: list[Reject] = []
    if plan.vqa_rad is not None:
        eval_rejects = plan.vqa_rad.rejects
        records = eval_records(plan.vqa_rad)
        written = write_split(out, "eval", "test", records, len(records), CotEvalRecord, 5000)
        chunks.append(ChunkResult(chunk_id="eval-test", shards={
            rel: ShardInfo(rows=rows, sha256=digest) for rel, (rows, digest) in written.items()}))
    atomic.write_jsonl(out / FAILURES_FILE, session.ledger.entries)
    atomic.write_jsonl(out / QUEUE_FILE, [q.model_dump(mode="json") for q in outcome.queued])
    counts = Counter(plan.scan.counts) + outcome.counts
    counts["selected"] = len(plan.selected)
    eval_rows = sum(r.shards[k].rows for r in chunks if r.chunk_id == "eval-test" for k in r.shards)
    return StageOutput(
        chunks=chunks,
        rejects=[*plan.scan.rejects, *plan.select_rejects, *outcome.rejects, *eval_rejects],
        counts=counts,
        warnings=([f"{len(outcome.queued)} sample(s) await adjudication in {QUEUE_FILE}"] if outcome.queued else [])
        + ([f"{len(session.ledger.entries)} LLM request(s) failed; rerun to retry them"] if session.ledger.entries else []),
        files=[FAILURES_FILE, QUEUE_FILE, *([DECISIONS_FILE] if decisions else [])],
        manifest={
            "source": {"dataset": "PubMedVision", "file": plan.scan.file.name,
                       "modality_values": dict(plan.scan.modality_values.most_common()),
                       "vqa_rad": None if plan.vqa_rad is None else {"questions": eval_rows}},
            "prompts": {p.id: p.content_hash for p in prompts},
            "llm": {"generator": session.model_id(config.llm),
                    "verifiers": [session.model_id(v) for v in config.verifiers],
                    "stages": {s.name: s.description for s in STAGES if s is CotStage or config.verifiers},
                    **session.summary(), "verification": outcome.agreement,
                    "adjudication_pending": len(outcome.queued), "adjudication_decisions": len(decisions),
                    "cache_path": str(session.cache.path)},
            "rebuild": {"sources": {k: str(Path(v).resolve()) for k, v in ctx_sources(prepared).items()}},
        })


def estimate(sources: dict[str, Path], config: RadAceCotConfig, log) -> tuple[list[Any], dict[str, Any]]:
    """(stage, model, requests) per stage a build would send, and the samples it covers; nothing is sent."""
    scan = scan_pubmedvision(sources["source"], config.subset)
    selected, rejects = select_samples(scan, config)
    info: dict[str, Any] = {"samples": len(selected), "rejected_rows": len(scan.rejects) + len(rejects)}
    if config.max_samples and len(selected) < config.max_samples:
        info["note"] = f"only {len(selected)} usable samples exist; --max-samples asked for {config.max_samples}"
    return estimate_requests(selected, config), info


def ctx_sources(prepared: Prepared) -> dict[str, Path]:
    plan: RadAcePlan = prepared.plan
    found = {"source": plan.scan.root}
    if plan.vqa_rad is not None:
        found["vqa_rad"] = plan.vqa_rad.root
    return found
