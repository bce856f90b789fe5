"""DPO pairs from a ct-reasoning build: candidate reports per scan, scored against the scan's own
report, the best kept as `chosen` and the worst as `rejected`.

Cases come from the build's `report_thinking` config (one row per scan: its report, the reference,
and its volume reference with any slices). The prompt is the report-writing task on that scan:
one `<image>` per stored slice, then PROMPT_TEXT (report_thinking, not vqa_thinking: its unit is
the whole report, as the candidates are).

Pairing, per scan: a single candidate -> skipped "single_candidate"; every score 0 -> "all_zero";
best and worst scored equal -> "tie"; otherwise chosen = the first best-scored candidate and
rejected = the first worst-scored one (candidate order: file order, or sample index).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radcorpora.schemas.common import ImageData, Lineage, Turn
from radcorpora.schemas.interleaved import ImageProvenance
from radcorpora.schemas.preference import LOSS_INTENT, PreferencePair

CONFIG = "preference"
CASES_CONFIG = "report_thinking"
PROMPT_TEXT = "Write the radiology report for this CT scan."
STAGE = "dpo_candidate"
SKIP_REASONS = ("single_candidate", "all_zero", "tie")
Scorer = Callable[[str, str], float]


class DpoError(ValueError):
    """Input the DPO command cannot use (one line for the user)."""


# ----------------------------------------------------------------------------- scorers


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, no stemming)."""
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, candidate)["rougeL"].fmeasure)


SCORERS: dict[str, Scorer] = {"rougeL": rouge_l}


def register_scorer(name: str, scorer: Scorer) -> None:
    """Make `scorer(candidate, reference) -> float` available as `--metric NAME` (e.g. GREEN, a local model)."""
    if not name or not name.strip():
        raise DpoError("a scorer needs a name")
    SCORERS[name] = scorer


def scorer_for(name: str) -> Scorer:
    if name not in SCORERS:
        raise DpoError(f"unknown metric {name!r}; registered: {', '.join(sorted(SCORERS))}")
    return SCORERS[name]


# ----------------------------------------------------------------------------- cases and candidates


@dataclass
class Case:
    id: str  # "source/scan_id"
    scan_id: str
    split: str
    report: str
    volume: dict[str, Any]
    lineage: dict[str, Any]


def load_cases(build: Path) -> dict[str, Case]:
    """scan id -> its report_thinking row, from a build folder."""
    import pyarrow.parquet as pq

    shards = sorted((build / "data" / CASES_CONFIG).glob("*.parquet"))
    if not shards:
        raise DpoError(f"{build}: no {CASES_CONFIG} rows (not a ct-reasoning build folder?)")
    cases: dict[str, Case] = {}
    for shard in shards:
        split = shard.name.split("-")[0]
        for row in pq.read_table(shard).to_pylist():
            cases[row["scan_id"]] = Case(row["id"], row["scan_id"], split, row["report"], row["volume"], row["lineage"])
    return cases


@dataclass
class Candidates:
    by_scan: dict[str, list[str]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)  # {"file", "line", "reason"}


def read_candidates(path: Path, cases: dict[str, Case]) -> Candidates:
    """JSONL, one `{"scan": ID, "report": TEXT}` a line (ID: a scan id or "source/scan_id").
    Bad lines and unknown scans are counted rejects naming the file and line."""
    if not path.is_file():
        raise DpoError(f"--candidates {path}: no such file")
    by_id = {c.id: c.scan_id for c in cases.values()}
    found = Candidates()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DpoError(f"--candidates {path}: not UTF-8 text ({exc.reason})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        reason = None
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            item, reason = None, f"not JSON ({exc.msg})"
        if reason is None and not isinstance(item, dict):
            reason = "not a JSON object"
        elif reason is None and not (isinstance(item.get("scan"), str) and isinstance(item.get("report"), str)):
            reason = 'needs "scan" and "report" strings'
        elif reason is None and not item["report"].strip():
            reason = "blank report"
        elif reason is None and by_id.get(item["scan"], item["scan"]) not in cases:
            reason = f"unknown scan {item['scan']!r}"
        if reason:
            found.rejects.append({"file": str(path), "line": number, "reason": reason})
            continue
        found.by_scan.setdefault(by_id.get(item["scan"], item["scan"]), []).append(item["report"].strip())
    return found


# ----------------------------------------------------------------------------- sampling


def _seed(seed: int, scan: str, index: int, attempt: int) -> int:
    digest = hashlib.sha256(f"{seed}/{scan}/{index}/{attempt}".encode()).hexdigest()
    return int(digest[:8], 16)


def offline_candidate(request) -> str:
    """The offline stand-in's candidate (NOT a model): a seeded subset of the reference's sentences,
    some of them cut short, so candidates differ and score differently."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", request.hints.get("reference", "")) if s.strip()]
    rng = random.Random(request.sampling.seed)
    kept = [s if rng.random() < 0.6 else " ".join(s.split()[: max(1, len(s.split()) // 2)]) + "."
            for s in sentences if rng.random() < 0.7]
    return " ".join(kept) or "No acute abnormality."


def sample_candidates(session, spec: str, cases: dict[str, Case], n: int, seed: int, retries: int,
                      temperature: float = 1.0) -> tuple[Candidates, int]:
    """`n` candidates per scan from model `spec` through the LLM session, each sampled with its own
    seed (from `seed`, the scan and the candidate index); an empty or failed answer is asked again
    with the next attempt's seed, at most `retries` times. Returns the candidates and the failures."""
    from radcorpora.llm.request import ImagePart, LLMRequest, Message, Sampling

    got: dict[tuple[str, int], str] = {}
    todo = [(scan, i) for scan in sorted(cases) for i in range(n)]
    for attempt in range(retries + 1):
        if not todo:
            break
        requests = []
        for scan, i in todo:
            case = cases[scan]
            images = [ImagePart(media_type="image/png", data=s["image"]["bytes"]) for s in case.volume.get("slices") or []]
            requests.append(LLMRequest(
                id=f"{case.id}#{i}", stage=STAGE, system="You are a radiologist writing CT reports.",
                messages=(Message.user(*images, PROMPT_TEXT),), licence_class=case.lineage["licence_class"],
                sampling=Sampling(temperature=temperature, seed=_seed(seed, scan, i, attempt), max_tokens=1024),
                prompt_id="ct-reasoning/dpo_candidate/v1", hints={"reference": case.report}))
        results = session.run(spec, requests)
        left = []
        for (scan, i), result in zip(todo, results):
            text = result.response.content.strip() if result.ok and result.response else ""
            if text:
                got[(scan, i)] = text
            else:
                left.append((scan, i))
        todo = left
    found = Candidates()
    for scan in sorted(cases):
        texts = [got[(scan, i)] for i in range(n) if (scan, i) in got]
        if texts:
            found.by_scan[scan] = texts
    return found, len(todo)


# ----------------------------------------------------------------------------- pairing and output


def pick(scores: list[float]) -> tuple[int, int] | str:
    """(best, worst) candidate indexes, or why the case is skipped."""
    if len(scores) < 2:
        return "single_candidate"
    if all(s == 0 for s in scores):
        return "all_zero"
    best, worst = max(scores), min(scores)
    if best == worst:
        return "tie"
    return scores.index(best), scores.index(worst)


def make_pair(case: Case, chosen: str, rejected: str, scores: tuple[float, float], scorer: str,
              model: str | None) -> PreferencePair:
    slices = case.volume.get("slices") or []
    images = [ImageData(bytes=s["image"]["bytes"], path=s["image"]["path"]) for s in slices]
    provenance = [ImageProvenance(source_sha256=case.volume["sha256"], source_path=case.volume["path"])
                  for _ in slices]  # which slice: the row's `volume.slices`, in the same order
    lineage = Lineage.model_validate({**case.lineage, "models": [*case.lineage.get("models", []),
                                                                  *([model] if model else [])]})
    return PreferencePair(
        id=f"{case.id}#dpo", images=images, image_provenance=provenance,
        prompt=[Turn(**{"from": "human", "value": "<image>\n" * len(images) + PROMPT_TEXT})],
        chosen=Turn(**{"from": "gpt", "value": chosen}), rejected=Turn(**{"from": "gpt", "value": rejected}),
        chosen_score=scores[0], rejected_score=scores[1], scorer=scorer, lineage=lineage)


def _trl_blocks(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, piece in enumerate(text.split("<image>")):
        if i > 0:
            out.append({"type": "image", "text": None})
        piece = piece.strip("\n")
        if piece:
            out.append({"type": "text", "text": piece})
    return out


def trl_row(pair: PreferencePair, image_paths: list[str]) -> dict[str, Any]:
    """TRL's preference format: prompt / chosen / rejected messages and image paths."""
    role = {"human": "user", "gpt": "assistant"}
    return {"id": pair.id, "images": image_paths,
            "prompt": [{"role": role[t.from_], "content": _trl_blocks(t.value)} for t in pair.prompt],
            "chosen": [{"role": "assistant", "content": _trl_blocks(pair.chosen.value)}],
            "rejected": [{"role": "assistant", "content": _trl_blocks(pair.rejected.value)}],
            "chosen_score": pair.chosen_score, "rejected_score": pair.rejected_score}


@dataclass
class DpoResult:
    pairs: list[tuple[str, PreferencePair]]  # (split, pair)
    volumes: dict[str, dict[str, Any]]  # pair id -> its volume reference (its slices: the pair's images)
    skipped: dict[str, int]
    rejects: list[dict[str, Any]]
    without_candidates: int
    sampling_failures: int = 0


def pair_up(cases: dict[str, Case], candidates: Candidates, metric: str, model: str | None = None) -> DpoResult:
    """Score every candidate against its scan's report; one pair per scan that has a best and a worst."""
    score = scorer_for(metric)
    pairs, volumes, skipped = [], {}, Counter({r: 0 for r in SKIP_REASONS})
    for scan in sorted(candidates.by_scan):
        case, texts = cases[scan], candidates.by_scan[scan]
        scores = [float(score(t, case.report)) for t in texts]
        if not all(math.isfinite(s) for s in scores):
            raise DpoError(f"metric {metric!r} gave a score that is not a finite number for scan {scan}")
        picked = pick(scores)
        if isinstance(picked, str):
            skipped[picked] += 1
            continue
        best, worst = picked
        pair = make_pair(case, texts[best], texts[worst], (scores[best], scores[worst]), metric, model)
        pairs.append((case.split, pair))
        volumes[pair.id] = case.volume
    return DpoResult(pairs, volumes, dict(skipped), candidates.rejects, len(set(cases) - set(candidates.by_scan)))


def write_output(result: DpoResult, out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """OUT/data/preference/SPLIT.parquet (PreferencePair rows + `volume`, the scan's volume
    reference, whose slices are the row's `images`), OUT/trl/
    preference-SPLIT.jsonl (+ images/), OUT/dpo_manifest.json. Returns the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, trl = out / "data" / CONFIG, out / "trl"
    (trl / "images").mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[PreferencePair]] = {}
    for split, pair in result.pairs:
        splits.setdefault(split, []).append(pair)
    rows_per_split = {}
    for split, pairs in sorted(splits.items()):
        rows, lines = [], []
        for pair in pairs:
            row = pair.model_dump(by_alias=True)
            row["volume"] = result.volumes[pair.id]
            rows.append(row)
            paths = []
            for image in pair.images:
                name = f"images/{hashlib.sha256(image.bytes).hexdigest()}.png"
                (trl / name).write_bytes(image.bytes)
                paths.append(name)
            lines.append(json.dumps(trl_row(pair, paths), sort_keys=True))
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        (data / f"{split}-00000-of-00001.parquet").write_bytes(buffer.getvalue())
        (trl / f"{CONFIG}-{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        rows_per_split[split] = len(pairs)
    manifest = {"config": CONFIG, "loss": LOSS_INTENT, "cases_from": CASES_CONFIG, "prompt": PROMPT_TEXT,
                **settings, "pairs": rows_per_split, "skipped": result.skipped,
                "scans_without_candidates": result.without_candidates,
                "sampling_failures": result.sampling_failures, "rejected_lines": len(result.rejects),
                "rejects": result.rejects}
    (out / "dpo_manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest
