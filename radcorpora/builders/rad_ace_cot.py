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
from typing import Any, Literal

from pydantic import BaseModel, Field

from radcorpora.llm.request import LLMRequest, Message, OutputFormat, Sampling
from radcorpora.llm.runner import CallResult
from radcorpora.llm.session import LLMSession
from radcorpora.llm.structured import JsonParser, TagParser
from radcorpora.llm.verify import QueueEntry, Verdict, agreement, route
from radcorpora.ops.cot import CotBounds, cot_problems, leaked_phrases
from radcorpora.ops.image_check import ImageCheckError, check_image
from radcorpora.ops.sampling import rank_key, row_rng
from radcorpora.prompts.llm import Prompt, load_prompt
from radcorpora.schemas.common import ImageData, Lineage, Reject, Turn
from radcorpora.schemas.rad_ace_cot import CotEvalRecord, CotRecord
from radcorpora.sources.pubmedvision import PubMedVisionSample, PubMedVisionScan
from radcorpora.sources.vqa_rad import VqaRadTest

CORPUS = "rad-ace-cot"
LICENCE_CLASS = "public"  # PubMedVision: apache-2.0; VQA-RAD: cc0-1.0
GENERATE_FIELDS = frozenset({"description", "question"})
VERIFY_FIELDS = frozenset({"description", "question", "cot"})
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif"}


class RadAceCotConfig(BaseModel):
    """Everything that decides a build's content (part of its fingerprint)."""

    seed: int = 0
    subset: Literal["alignment", "instruction"] = "alignment"
    max_samples: int | None = Field(None, ge=1)  # the paper used a 12K CT/MR subset
    validation_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    llm: str = "offline"
    verifiers: list[str] = Field(default_factory=list)
    sampling: Sampling = Sampling(temperature=0.6, max_tokens=4096)
    bounds: CotBounds = Field(default_factory=CotBounds)
    prompt_path: str | None = None
    verify_prompt_path: str | None = None
    images_per_shard: int = Field(1000, ge=1)


def load_prompts(config: RadAceCotConfig) -> tuple[Prompt, Prompt]:
    generate = load_prompt("rad_ace_cot", Path(config.prompt_path) if config.prompt_path else None, GENERATE_FIELDS)
    verify = load_prompt("rad_ace_cot_verify", Path(config.verify_prompt_path) if config.verify_prompt_path else None,
                         VERIFY_FIELDS)
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
    results = session.run(config.llm, [generation_request(i, generate_prompt, config) for i in selected], TagParser())
    candidates: list[Candidate] = []
    for item, result in zip(selected, results):
        checked = check_generation(item, result, config, session.model_id(config.llm))
        if isinstance(checked, Reject):
            outcome.rejects.append(checked)
            outcome.counts[checked.reason] += 1
        else:
            candidates.append(checked)
    outcome.counts["generated"] = len(candidates)
    if not config.verifiers:
        outcome.kept = [(c, "not_run") for c in candidates]
        return outcome

    verdicts: dict[str, dict[str, Verdict]] = {c.item.sample.id: {} for c in candidates}
    for spec in config.verifiers:
        answers = session.run(spec, [verification_request(c.item, c.cot_output, verify_prompt) for c in candidates],
                              JsonParser(Verdict))
        for candidate, answer in zip(candidates, answers):
            if answer.ok:
                verdicts[candidate.item.sample.id][session.model_id(spec)] = answer.parsed
    outcome.agreement = agreement(verdicts)
    expected = {session.model_id(s) for s in config.verifiers}
    for candidate in candidates:
        sample_id = candidate.item.sample.id
        given = verdicts[sample_id]
        decision = decisions.get(sample_id)
        verdict_route = route(given) if set(given) == expected else "disagree"
        if verdict_route == "pass":
            outcome.kept.append((candidate, "passed"))
        elif verdict_route == "fail" and decision is None:
            reasons = "; ".join(f"{m}: {v.reason}" for m, v in sorted(given.items()))
            outcome.rejects.append(_reject(candidate.item, "verifier_inconsistent", reasons))
        elif decision == "accept":
            outcome.kept.append((candidate, "adjudicated"))
        elif decision == "reject":
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

EXPECTED_OUTPUT_TOKENS = {"cot": 2500, "verify": 80}  # reasoning models bill their thinking as output


def estimate_requests(selected: list[Selected], config: RadAceCotConfig) -> dict[str, list[LLMRequest]]:
    """spec -> the requests a build would send; verification is sized with the findings standing
    in for the not-yet-written reasoning (about the same length)."""
    generate_prompt, verify_prompt = load_prompts(config)
    plan = {config.llm: [generation_request(i, generate_prompt, config) for i in selected]}
    for spec in config.verifiers:
        plan.setdefault(spec, []).extend(verification_request(i, i.sample.description, verify_prompt) for i in selected)
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


OFFLINE_RESPONDERS = {"cot": offline_cot, "verify": offline_verify}
