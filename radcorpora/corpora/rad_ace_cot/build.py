"""rad-ace-cot: PubMedVision CT/MR samples -> `<think>...</think><answer>...</answer>` chains of thought.

Stages: select (CT/MR, optional seeded subset, image check) -> the LLM pipeline of `pipeline(config)`:
node "cot" (one reasoning-model call per sample, description + question in, tagged reasoning out,
checked for tags, length and source-text leaks; a malformed reply is repaired once, then rejected)
-> node "verify" (only with --verify: an audit by those models; disagreements go to the adjudication
queue) -> records. Each node's parsed outputs are stored under `build/llm/`, so a killed build
resumes mid-pipeline; the answers live in the cache too, so a rebuild pays only for what was never
answered.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from radcorpora.corpora.rad_ace_cot.records import CotEvalRecord, CotRecord
from radcorpora.llm.audit import DECISIONS_FILE, FAILURES_FILE, QUEUE_FILE, Verdict, settle
from radcorpora.llm.pipeline import Node, Pipeline, PipelineResult, distinct_models, model_id
from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.runner import CallResult
from radcorpora.llm.stage import LLMStage
from radcorpora.llm.structured import JsonParser, TagParser, json_schema_of
from radcorpora.ops.cot import CotBounds, cot_problems, leaked_phrases
from radcorpora.ops.image_check import ImageCheckError, check_image
from radcorpora.ops.sampling import rank_key, row_rng
from radcorpora.prompts.llm import Prompt, load_prompt
from radcorpora.schemas.common import ImageData, Lineage, Reject, Turn
from radcorpora.sources.pubmedvision import PubMedVisionSample, PubMedVisionScan, scan_pubmedvision
from radcorpora.sources.vqa_rad import VqaRadTest, read_vqa_rad_test
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.spec.corpus import Cli
from radcorpora.store import atomic
from radcorpora.store.shards import write_split
from radcorpora.store.state import LLM_STORE, ChunkResult, ShardInfo

CORPUS = "rad-ace-cot"
LICENCE_CLASS = "public"  # PubMedVision: apache-2.0; VQA-RAD: cc0-1.0
GENERATE_FIELDS = frozenset({"description", "question"})
VERIFY_FIELDS = frozenset({"description", "question", "cot"})
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif"}
# Progress marker in the engine's state folder: a build killed mid-pipeline (no shard written yet)
# then counts as started and resumes with its stored outputs instead of being refused as a stray folder.


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

    @field_validator("verifiers")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return distinct_models(value, "verifier")


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


# --------------------------------------------------------------------------- the pipeline's items


class CotSample(BaseModel):
    """A sample as the pipeline keys and stores it: what the prompts read, and the image names a
    person sees in the queue. No local paths, so moving the sources re-asks nothing."""

    id: str
    question: str
    description: str
    modality: str
    images: list[str]


class Candidate(BaseModel):
    """A chain of thought that passed the checks (the "cot" node's item, the "verify" node's row)."""

    sample: CotSample
    cot_output: str
    think: str
    answer: str


def cot_sample(item: Selected) -> CotSample:
    s = item.sample
    return CotSample(id=s.id, question=s.question, description=s.description, modality=s.modality,
                     images=list(s.image_names))


# --------------------------------------------------------------------------- generate, check, verify


def generation_request(item: CotSample, prompt: Prompt, config: RadAceCotConfig) -> LLMRequest:
    """Text only: the reasoning model reads the findings, as in the method (no image is sent)."""
    return LLMRequest(
        id=item.id, stage="cot", system=prompt.system,
        messages=(Message.user(prompt.render(description=item.description, question=item.question)),),
        sampling=config.sampling, output=OutputFormat(kind="tags", tags=("think", "answer")),
        licence_class=LICENCE_CLASS, prompt_id=prompt.id,
        hints={"description": item.description, "question": item.question, "modality": item.modality})


def verification_request(item: CotSample, cot: str, prompt: Prompt) -> LLMRequest:
    return LLMRequest(
        id=item.id, stage="verify", system=prompt.system,
        messages=(Message.user(prompt.render(description=item.description, question=item.question, cot=cot)),),
        sampling=Sampling(temperature=0.0, max_tokens=512),
        output=OutputFormat(kind="json", schema_name="verdict", json_schema=json_schema_of(Verdict)),
        licence_class=LICENCE_CLASS, prompt_id=prompt.id,
        hints={"description": item.description, "cot": cot})


def _reject(item_id: str, reason: str, detail: str) -> Reject:
    """A reject named by the sample id; `run` points it at the source file and row (kept out of
    the stored lines, so a reordered source file re-asks nothing)."""
    return Reject(source=CORPUS, row=item_id, reason=reason, detail=f"{item_id}: {detail}")


def check_generation(item: CotSample, result: CallResult, config: RadAceCotConfig) -> Candidate | Reject:
    if not result.ok:
        assert result.error is not None
        return _reject(item.id, f"llm_{result.error.kind}", str(result.error))
    assert result.response is not None
    think, answer = result.parsed["think"], result.parsed["answer"]
    problems = cot_problems(think, answer, config.bounds)
    if problems:
        return _reject(item.id, "cot_check_" + problems[0].split(":")[0], "; ".join(problems))
    return Candidate(sample=item, cot_output=result.response.content.strip(), think=think, answer=answer)


class CotStage(LLMStage[CotSample]):
    """One reasoning-model call per sample: findings + question in, tagged reasoning out."""

    name = "cot"
    description = "chain of thought written as a reading of the image, from the findings"
    expected_output_tokens = 2500  # reasoning models bill their thinking as output

    def __init__(self, prompt: Prompt, config: RadAceCotConfig):
        self.prompt_file, self.config = prompt, config

    def prompt(self, row: CotSample) -> LLMRequest:
        return generation_request(row, self.prompt_file, self.config)

    def parser(self) -> TagParser:
        return TagParser()

    def parse(self, row: CotSample, result: CallResult) -> list[Candidate] | Reject:
        checked = check_generation(row, result, self.config)
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
        return verification_request(row.sample, row.cot_output, self.prompt_file)

    def parser(self) -> JsonParser:
        return JsonParser(Verdict)

    def parse(self, row: Candidate, result: CallResult) -> list[Verdict] | Reject:
        if not result.ok:
            return _reject(row.sample.id, f"llm_{result.error.kind if result.error else 'failed'}", str(result.error))
        return [result.parsed]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_verify(request)


STAGES = (CotStage, VerifyStage)


def _queued(candidate: Candidate) -> dict[str, Any]:
    """What a person sees of a queued sample."""
    s = candidate.sample
    return {"question": s.question, "description": s.description, "cot_output": candidate.cot_output,
            "images": list(s.images)}


def _stand_in(sample: CotSample) -> Candidate:
    """Sizes verification before any reasoning exists: the findings are about as long."""
    return Candidate(sample=sample, cot_output=sample.description, think=sample.description, answer="")


def pipeline(config: RadAceCotConfig) -> Pipeline:
    """The corpus' LLM stages as one graph: "cot", then (with verifiers) the "verify" audit. The
    checks' bounds are the cot node's version: other bounds re-check the stored replies."""
    generate_prompt, verify_prompt = load_prompts(config)
    bounds = hashlib.sha256(config.bounds.model_dump_json().encode()).hexdigest()[:16]
    nodes = [Node("cot", CotStage(generate_prompt, config), [config.llm], item_type=Candidate,
                  stand_in=_stand_in, version=f"bounds:{bounds}")]
    if config.verifiers:
        nodes.append(Node("verify", VerifyStage(verify_prompt), config.verifiers, consumes="cot", audit=True,
                          describe=_queued))
    return Pipeline(nodes, key=lambda sample: sample.id)


@dataclass
class CotOutcome:
    """The pipeline's result (its queue and figures included) as the records need it: kept
    candidates with how they were verified, rejects pointed at their source rows, counts and
    the auditors' agreement."""

    result: PipelineResult
    kept: dict[str, tuple[Candidate, str]]
    rejects: list[Reject]
    counts: Counter
    agreement: dict[str, Any]


def run_pipeline(graph: Pipeline, selected: list[Selected], config: RadAceCotConfig, session: Any, store: Path,
                 decisions: dict[str, str]) -> CotOutcome:
    result = graph.run([cot_sample(item) for item in selected], session, store, decisions)
    where = {item.sample.id: item.sample for item in selected}
    counts: Counter = Counter()
    rejects: list[Reject] = []
    for item_id, reject in sorted(result["cot"].rejects.items()):
        counts[reject.reason] += 1
        rejects.append(Reject(source=where[item_id].file, row=str(where[item_id].row), reason=reject.reason,
                              detail=reject.detail))
    candidates: dict[str, Candidate] = result["cot"].outputs
    counts["generated"] = len(candidates)
    if not config.verifiers:
        return CotOutcome(result, {i: (c, "not_run") for i, c in candidates.items()}, rejects, counts, {})
    audit = result["verify"]
    expected = {model_id(v) for v in config.verifiers}
    for item_id in candidates:
        counts[f"verification_{settle(audit.verdicts[item_id], expected, decisions.get(item_id))[1]}"] += 1
    for item_id, reject in sorted(audit.rejects.items()):
        rejects.append(Reject(source=where[item_id].file, row=str(where[item_id].row), reason=reject.reason,
                              detail=f"{item_id}: {reject.detail}"))
    kept = {i: (candidates[i], audit.settled[i]) for i in audit.outputs}
    agreement = {k: v for k, v in audit.agreement.items() if k != "settled"}
    return CotOutcome(result, kept, rejects, counts, agreement)


# --------------------------------------------------------------------------- records


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def make_record(item: Selected, candidate: Candidate, verification: str, prompts: list[Prompt],
                models: list[str]) -> CotRecord:
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
    graph = pipeline(config)
    session = ctx.llm_session(graph.offline_responders())
    try:
        outcome = run_pipeline(graph, plan.selected, config, session, ctx.llm_store, decisions)
    finally:
        session.close()
    queue = outcome.result.queue
    prompts = [generate_prompt] + ([verify_prompt] if config.verifiers else [])
    models = [model_id(config.llm), *(model_id(v) for v in config.verifiers)]
    chunks: list[ChunkResult] = []
    for split in ("train", "validation"):
        kept = [(item, *outcome.kept[item.sample.id]) for item in plan.selected
                if item.split == split and item.sample.id in outcome.kept]
        records = (make_record(item, c, v, prompts, models) for item, c, v in kept)
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
    atomic.write_jsonl(out / QUEUE_FILE, [q.model_dump(mode="json") for q in queue])
    counts = Counter(plan.scan.counts) + outcome.counts
    counts["selected"] = len(plan.selected)
    eval_rows = sum(r.shards[k].rows for r in chunks if r.chunk_id == "eval-test" for k in r.shards)
    return StageOutput(
        chunks=chunks,
        rejects=[*plan.scan.rejects, *plan.select_rejects, *outcome.rejects, *eval_rejects],
        counts=counts,
        warnings=([f"{len(queue)} sample(s) await adjudication in {QUEUE_FILE}"] if queue else [])
        + ([f"{len(session.ledger.entries)} LLM request(s) failed; rerun to retry them"] if session.ledger.entries else []),
        files=[FAILURES_FILE, QUEUE_FILE, *([DECISIONS_FILE] if decisions else [])],
        manifest={
            "source": {"dataset": "PubMedVision", "file": plan.scan.file.name,
                       "modality_values": dict(plan.scan.modality_values.most_common()),
                       "vqa_rad": None if plan.vqa_rad is None else {"questions": eval_rows}},
            "prompts": {p.id: p.content_hash for p in prompts},
            "llm": {"generator": model_id(config.llm),
                    "verifiers": [model_id(v) for v in config.verifiers],
                    "stages": {s.name: s.description for s in STAGES if s is CotStage or config.verifiers},
                    **session.summary(), "verification": outcome.agreement,
                    "adjudication_pending": len(queue), "adjudication_decisions": len(decisions),
                    "pipeline": outcome.result.figures(),
                    "cache_path": str(session.cache.path)},
            "rebuild": {"sources": {k: str(Path(v).resolve()) for k, v in ctx_sources(prepared).items()}},
        })


def estimate(sources: dict[str, Path], config: RadAceCotConfig, log) -> tuple[Callable[..., dict[str, Any]], dict[str, Any]]:
    """The pipeline's estimate, to be called with the LLM settings (and the build folder, whose
    stored outputs count as done), and the samples it covers; nothing is sent."""
    scan = scan_pubmedvision(sources["source"], config.subset)
    selected, rejects = select_samples(scan, config)
    info: dict[str, Any] = {"samples": len(selected), "rejected_rows": len(scan.rejects) + len(rejects)}
    if config.max_samples and len(selected) < config.max_samples:
        info["note"] = f"only {len(selected)} usable samples exist; --max-samples asked for {config.max_samples}"
    graph, samples = pipeline(config), [cot_sample(item) for item in selected]

    def sized(llm_settings: Any, out: Path | None = None) -> dict[str, Any]:
        return graph.estimate(samples, llm_settings, None if out is None else Path(out) / LLM_STORE, corpus=CORPUS)

    return sized, info


def ctx_sources(prepared: Prepared) -> dict[str, Path]:
    plan: RadAcePlan = prepared.plan
    found = {"source": plan.scan.root}
    if plan.vqa_rad is not None:
        found["vqa_rad"] = plan.vqa_rad.root
    return found
