"""DPO pairs from a ct-reasoning build: candidate reports per scan, scored against the scan's own
report, the best kept as `chosen` and the worst as `rejected`.

Cases come from the build's `report_thinking` config (one row per scan: its report, the reference,
and its volume references with any slices). The prompt is the report-writing task on that scan:
one `<image>` per stored slice, then PROMPT_TEXT (report_thinking, not vqa_thinking: its unit is
the whole report, as the candidates are).

Candidates: a JSONL file (`{"scan": ID, "report": TEXT}` a line), or N samples per scan from a
model, each with its own seed (`candidate_seed`: the run's seed, the scan, the candidate index
and the attempt), an empty or failed sample asked again at most `retries` times. Models behind
the LLM session (openai-compatible servers such as vLLM, anthropic, the offline stand-in) are
sampled here; other prefixes (`hf:PATH`, a local transformers checkpoint) by a sampler
registered with `register_sampler` (radcorpora.reference_models.sampler, registered by the
command line: corpora never import reference_models).

Scoring: a registered scorer by name (`rougeL` built in, `green` when the GREEN package and its
model are installed), an entry point in the group `radcorpora.scorers`, or `module:function`.

Pairing, per scan: a single candidate -> skipped "single_candidate"; every score 0 -> "all_zero";
best and worst scored equal -> "tie"; otherwise chosen = the first best-scored candidate and
rejected = the first worst-scored one (candidate order: file order, or sample index).

The output is a build of the corpus `ct-reasoning-dpo` (its spec: corpora/ct_reasoning/pairs):
config `preference` (loss intent "preference"), rows CtPreferencePair, every candidate with its
score and seed in build/candidates.jsonl.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, Field, field_validator

from radcorpora.corpora.ct_reasoning.records import CtPreferencePair
from radcorpora.llm.request import ImagePart, LLMRequest, Message, Sampling
from radcorpora.llm.runner import CallResult
from radcorpora.llm.stage import LLMStage
from radcorpora.schemas.common import ImageData, Lineage, Reject, Turn
from radcorpora.schemas.interleaved import ImageProvenance
from radcorpora.schemas.volume import VolumeRef
from radcorpora.sources.errors import SourceError
from radcorpora.spec.corpus import Cli

CORPUS = "ct-reasoning-dpo"
CONFIG = "preference"
CASES_CONFIG = "report_thinking"
CASES_CORPUS = "ct-reasoning"
SPLITS = ("train", "validation", "test")
PROMPT_TEXT = "Write the radiology report for this CT scan."
SYSTEM_TEXT = "You are a radiologist writing CT reports."
PROMPT_ID = "ct-reasoning/dpo_candidate/v1"
STAGE = "dpo_candidate"
SKIP_REASONS = ("single_candidate", "all_zero", "tie")
CANDIDATES_FILE = "build/candidates.jsonl"
SCORER_ENTRY_POINTS = "radcorpora.scorers"
GREEN_MODEL = "StanfordAIMI/GREEN-radllama2-7b"
GREEN_INSTALL = ("--metric green needs the GREEN scorer and its model on disk: pip install green-score (or RadEval), "
                 f"then download {GREEN_MODEL} and pass --metric-model PATH (or register your own scorer)")


class DpoError(SourceError):
    """Input the DPO build cannot use (one line for the user, exit 2 like any source error)."""


# ----------------------------------------------------------------------------- scorers


class Scorer(Protocol):
    """`scorer(candidate, reference) -> float`, higher is better. A scorer may also offer
    `many(candidates, references) -> list[float]` (one batched call: a model-based metric)."""

    def __call__(self, candidate: str, reference: str) -> float: ...


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, no stemming)."""
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, candidate)["rougeL"].fmeasure)


class GreenScorer:
    """GREEN (Ostmeier et al. 2024): a local LLM counts clinically significant errors of the
    candidate against the reference; 0..1, higher is better. Through the `green_score` package,
    else RadEval's copy of it; made on first use (loading the model takes a while)."""

    def __init__(self, model: str | None = None):
        self.model = model or GREEN_MODEL
        self._scorer: Any = None

    def _load(self) -> Any:
        if self._scorer is None:
            try:
                from green_score import GREEN  # type: ignore[import-not-found]
            except Exception:  # ImportError, or its dependencies failing to import
                try:
                    from RadEval.factual.green_score import GREEN  # type: ignore[import-not-found]
                except Exception:
                    raise DpoError(GREEN_INSTALL) from None
            try:
                self._scorer = GREEN(self.model, output_dir=".")
            except Exception as exc:  # no weights on disk, no network for them
                raise DpoError(f"--metric green: cannot load the GREEN model {self.model!r} ({type(exc).__name__}: "
                               f"{str(exc)[:160]}); {GREEN_INSTALL}") from None
        return self._scorer

    def many(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        found = self._load()(list(references), list(candidates))
        scores = found[2] if isinstance(found, tuple) else found  # (mean, std, per-pair scores, summary, table)
        return [float(s) if s is not None else 0.0 for s in scores]

    def __call__(self, candidate: str, reference: str) -> float:
        return self.many([candidate], [reference])[0]


def _green_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("green_score", "RadEval"))


SCORERS: dict[str, Scorer] = {"rougeL": rouge_l}


def register_scorer(name: str, scorer: Scorer) -> None:
    """Make `scorer(candidate, reference) -> float` available as `--metric NAME` (a local model,
    a reward model); a package can do the same with an entry point in `radcorpora.scorers`."""
    if not name or not name.strip() or ":" in name:
        raise DpoError(f"a scorer needs a name without ':' (got {name!r})")
    SCORERS[name] = scorer


def _entry_point(name: str) -> Scorer | None:
    from importlib.metadata import entry_points

    for point in entry_points(group=SCORER_ENTRY_POINTS):
        if point.name == name:
            try:
                return point.load()
            except Exception as exc:
                raise DpoError(f"--metric {name}: entry point {point.value!r} does not load ({type(exc).__name__}: "
                               f"{exc})") from None
    return None


def scorer_for(name: str, model: str | None = None) -> Scorer:
    """The scorer `--metric NAME` names: registered, built in (green), an entry point, or
    `module:function` (a callable scorer, or a factory taking no argument that returns one)."""
    if name in SCORERS:
        return SCORERS[name]
    if name == "green":
        if not _green_available():
            raise DpoError(GREEN_INSTALL)
        return GreenScorer(model)
    found = _entry_point(name)
    if found is None and ":" in name:
        module, _, attribute = name.partition(":")
        try:
            found = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise DpoError(f"--metric {name}: cannot import {attribute!r} from {module!r} ({exc})") from None
    if found is None:
        raise DpoError(f"unknown metric {name!r}; registered: {', '.join(sorted([*SCORERS, 'green']))}, an entry point "
                       f"in {SCORER_ENTRY_POINTS!r}, or module:function")
    if not callable(found):
        raise DpoError(f"--metric {name}: {found!r} is not callable")
    return found


def score_all(scorer: Scorer, candidates: Sequence[str], reference: str, metric: str, scan: str) -> list[float]:
    many = getattr(scorer, "many", None)
    try:
        scores = many(list(candidates), [reference] * len(candidates)) if many else \
            [scorer(c, reference) for c in candidates]
        scores = [float(s) for s in scores]
    except DpoError:
        raise
    except (TypeError, ValueError) as exc:
        raise DpoError(f"metric {metric!r} failed on scan {scan} ({type(exc).__name__}: {exc})") from None
    if len(scores) != len(candidates) or not all(math.isfinite(s) for s in scores):
        raise DpoError(f"metric {metric!r} gave a score that is not a finite number for scan {scan}")
    return scores


# ----------------------------------------------------------------------------- settings


def _sampler(value: str) -> str:
    value = value.strip()
    if value.startswith("hf:") and not value[3:].strip():
        raise ValueError("--sampler hf:PATH needs the checkpoint folder after 'hf:'")
    return value


class DpoSettings(BaseModel):
    """Everything that decides the pairs (part of the fingerprint)."""

    seed: int = Field(0, description="Seed of every sampled candidate (per scan, candidate and attempt)")
    sampler: Annotated[str | None, Cli(parse=_sampler, metavar="PROVIDER:MODEL")] = Field(
        None, description="Sample candidates from a model: openai:MODEL (OPENAI_BASE_URL or --base-url for vLLM and "
                          "other compatible servers), anthropic:MODEL, offline (the stand-in), hf:PATH (a local "
                          "transformers checkpoint); instead of --candidates")
    n: int = Field(4, ge=2, le=64, description="Candidates sampled per scan (with --sampler)")
    metric: str = Field("rougeL", min_length=1, description="Scorer: rougeL, green (GREEN package and model), a "
                                                             "registered name, an entry point or module:function")
    metric_model: str | None = Field(None, description="The scorer's model where it has one (green: a local "
                                                        "checkpoint folder or hub id)")
    retries: int = Field(2, ge=0, le=20, description="Re-asks of an empty or failed sample (with --sampler)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature (with --sampler)")
    max_tokens: int = Field(512, ge=1, description="Longest candidate, in tokens (with --sampler)")
    rows_per_shard: int = Field(1000, ge=1, description="Rows per Parquet shard")

    @field_validator("sampler")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return None if value is None else _sampler(value)


# ----------------------------------------------------------------------------- cases and candidates


@dataclass
class Case:
    id: str  # "source/scan_id"
    scan_id: str
    split: str
    report: str
    row: dict[str, Any]  # the report_thinking row (volume, volumes, lineage, patient), its slices left out
    where: tuple[str, int, int, int, int] | None = None  # its slices: shard, row group, row, shard size, mtime

    @property
    def slices(self) -> list[dict[str, Any]]:
        """The stored slices, read from the cases' shard when asked for (every case's slices at
        once would be the whole volume config: 8 slices of 50k scans are ~20 GB)."""
        return _stored_slices(*self.where) if self.where else []

    @property
    def volume(self) -> dict[str, Any]:
        return {**self.row["volume"], "slices": self.slices}


@functools.lru_cache(maxsize=16)  # one row group per source and split being walked in scan order
def _row_group_slices(shard: str, group: int, size: int, mtime: int) -> tuple[list[dict[str, Any]], ...]:
    import pyarrow.parquet as pq

    volumes = pq.ParquetFile(shard).read_row_group(group, columns=["volume"]).column("volume").to_pylist()
    return tuple((v or {}).get("slices") or [] for v in volumes)


def _stored_slices(shard: str, group: int, row: int, size: int, mtime: int) -> list[dict[str, Any]]:
    try:
        st = os.stat(shard)
    except OSError as exc:
        raise DpoError(f"{shard}: the cases' shard went away during the run ({exc.strerror})") from None
    if (st.st_size, st.st_mtime_ns) != (size, mtime):
        raise DpoError(f"{shard}: the cases' shard changed during the run; start again")
    return _row_group_slices(shard, group, size, mtime)[row]


def load_cases(build: Path) -> dict[str, Case]:
    """scan id -> its report_thinking row, from a ct-reasoning build folder (a row group at a
    time; slices stay in the shard until a case's `slices` are asked for)."""
    import pyarrow.parquet as pq

    from radcorpora.store.folder import BuildFolderError, read_manifest

    build = Path(build)
    if not build.is_dir():
        raise DpoError(f"{build}: no such build folder")
    try:
        corpus = read_manifest(build).get("corpus")
    except BuildFolderError as exc:
        raise DpoError(str(exc)) from None
    if corpus != CASES_CORPUS:
        raise DpoError(f"{build}: a {corpus} build; the cases come from a {CASES_CORPUS} build")
    shards = sorted((build / "data" / CASES_CONFIG).glob("*.parquet"))
    if not shards:
        raise DpoError(f"{build}: no {CASES_CONFIG} rows")
    cases: dict[str, Case] = {}
    for shard in shards:
        split = shard.name.split("-")[0]
        path, st = str(shard.resolve()), shard.stat()
        parquet = pq.ParquetFile(shard)
        for group in range(parquet.num_row_groups):
            for k, row in enumerate(parquet.read_row_group(group).to_pylist()):
                sliced = bool(row["volume"].get("slices"))
                row["volume"] = {**row["volume"], "slices": []}
                cases[row["scan_id"]] = Case(row["id"], row["scan_id"], split, row["report"], row,
                                             (path, group, k, st.st_size, st.st_mtime_ns) if sliced else None)
    return cases


@dataclass
class Candidates:
    by_scan: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # {"report", "seed"?, "line"?}
    rejects: list[Reject] = field(default_factory=list)

    def texts(self, scan: str) -> list[str]:
        return [c["report"] for c in self.by_scan.get(scan, [])]


def read_candidates(path: Path, cases: dict[str, Case]) -> Candidates:
    """JSONL, one `{"scan": ID, "report": TEXT}` a line (ID: a scan id or "source/scan_id").
    Bad lines and unknown scans are counted rejects naming the file and line."""
    path = Path(path)
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
        reason = detail = None
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            item, reason, detail = None, "candidate_not_json", f"not JSON ({exc.msg})"
        if reason is None and not isinstance(item, dict):
            reason, detail = "candidate_not_object", "not a JSON object"
        elif reason is None and not (isinstance(item.get("scan"), str) and isinstance(item.get("report"), str)):
            reason, detail = "candidate_fields", 'needs "scan" and "report" strings'
        elif reason is None and not item["report"].strip():
            reason, detail = "candidate_blank", "blank report"
        elif reason is None and by_id.get(item["scan"], item["scan"]) not in cases:
            reason, detail = "candidate_unknown_scan", f"unknown scan {item['scan']!r}"
        if reason:
            found.rejects.append(Reject(source=str(path), row=f"line {number}", reason=reason,
                                        detail=f"{path}:{number}: {detail}"))
            continue
        scan = by_id.get(item["scan"], item["scan"])
        found.by_scan.setdefault(scan, []).append({"report": item["report"].strip(), "line": number})
    return found


# ----------------------------------------------------------------------------- sampling


def candidate_seed(seed: int, scan: str, index: int, attempt: int) -> int:
    """The sampling seed of candidate `index` of `scan` at try `attempt`: its own, whatever N or
    the order candidates are drawn in."""
    digest = hashlib.sha256(f"{seed}/{scan}/{index}/{attempt}".encode()).hexdigest()
    return int(digest[:8], 16)


def prompt_turns(case: Case) -> list[dict[str, str]]:
    """The prompt as LLaVA turns: one `<image>` per stored slice, then the task."""
    return [{"from": "human", "value": "<image>\n" * len(case.slices) + PROMPT_TEXT}]


def offline_candidate(request: LLMRequest) -> str:
    """The offline stand-in's candidate (NOT a model): a seeded subset of the reference's sentences,
    some of them cut short, so candidates differ and score differently."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", request.hints.get("reference", "")) if s.strip()]
    rng = random.Random(request.sampling.seed)
    kept = [s if rng.random() < 0.6 else " ".join(s.split()[: max(1, len(s.split()) // 2)]) + "."
            for s in sentences if rng.random() < 0.7]
    return " ".join(kept) or "No acute abnormality."


class CandidateStage(LLMStage):
    """A candidate report for one scan (row: case, candidate index, attempt)."""

    name = STAGE
    description = "a candidate report per scan and sample index, each with its own seed (DPO pairs)"
    expected_output_tokens = 300

    def __init__(self, settings: DpoSettings):
        self.settings = settings

    def prompt(self, row: tuple[Case, int, int]) -> LLMRequest:
        case, index, attempt = row
        images = [ImagePart(media_type="image/png", data=s["image"]["bytes"]) for s in case.slices]
        return LLMRequest(
            id=f"{case.id}#{index}", stage=STAGE, system=SYSTEM_TEXT, messages=(Message.user(*images, PROMPT_TEXT),),
            licence_class=case.row["lineage"]["licence_class"],
            sampling=Sampling(temperature=self.settings.temperature, max_tokens=self.settings.max_tokens,
                              seed=candidate_seed(self.settings.seed, case.scan_id, index, attempt)),
            prompt_id=PROMPT_ID, hints={"reference": case.report})

    def parse(self, row: tuple[Case, int, int], result: CallResult) -> list[str] | Reject:
        text = result.response.content.strip() if result.ok and result.response else ""
        if not text:
            return Reject(source=CORPUS, row=row[0].id, reason="empty_sample", detail=str(result.error or "empty"))
        return [text]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return offline_candidate(request)


# A local sampler: (spec after its prefix, cases, settings) -> (candidates, (scan, index) never sampled)
LocalSampler = Callable[[str, dict[str, Case], DpoSettings], tuple[Candidates, list[tuple[str, int]]]]
LOCAL_SAMPLERS: dict[str, LocalSampler] = {}


def register_sampler(prefix: str, sampler: LocalSampler) -> None:
    """`--sampler PREFIX:SPEC` runs `sampler` instead of the LLM session (hf: a local checkpoint)."""
    LOCAL_SAMPLERS[prefix] = sampler


def local_sampler(spec: str) -> tuple[LocalSampler, str] | None:
    prefix, _, rest = spec.partition(":")
    if prefix in LOCAL_SAMPLERS:
        return LOCAL_SAMPLERS[prefix], rest
    if prefix == "hf":
        raise DpoError("--sampler hf:PATH needs the local sampler: run it through the radcorpora command line, or "
                       "register_sampler('hf', radcorpora.reference_models.sampler.sample_local) first")
    return None


# Scans whose candidates go to the session in one call (with --batch: one provider batch each).
# Every request of a call is made before any is sent, each holding its scan's slices.
CASES_PER_CALL = 2000


def sample_candidates(session: Any, spec: str, cases: dict[str, Case], settings: DpoSettings
                      ) -> tuple[Candidates, list[tuple[str, int]]]:
    """`n` candidates per scan from model `spec` through the LLM session; an empty or failed
    answer is asked again with the next attempt's seed, at most `retries` times. Returns the
    candidates (in index order, each with its seed) and the (scan, index) samples that never came."""
    stage = CandidateStage(settings)
    got: dict[tuple[str, int], dict[str, Any]] = {}
    never: list[tuple[str, int]] = []
    scans = sorted(cases)
    for start in range(0, len(scans), CASES_PER_CALL):  # a call's requests hold their scans' slices
        todo = [(scan, i) for scan in scans[start:start + CASES_PER_CALL] for i in range(settings.n)]
        for attempt in range(settings.retries + 1):
            if not todo:
                break
            rows = [(cases[scan], i, attempt) for scan, i in todo]
            left = []
            for (case, i, _), made in stage.run(session, spec, rows):
                if isinstance(made, Reject):
                    left.append((case.scan_id, i))
                else:
                    got[(case.scan_id, i)] = {"report": made[0], "index": i, "attempt": attempt,
                                              "seed": candidate_seed(settings.seed, case.scan_id, i, attempt)}
            todo = left
        never += todo
    return collect(cases, got, settings.n), never


def collect(cases: dict[str, Case], got: dict[tuple[str, int], dict[str, Any]], n: int) -> Candidates:
    """Sampled candidates in scan, then index order."""
    found = Candidates()
    for scan in sorted(cases):
        texts = [got[(scan, i)] for i in range(n) if (scan, i) in got]
        if texts:
            found.by_scan[scan] = texts
    return found


# ----------------------------------------------------------------------------- pairing and rows


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
              model: str | None) -> CtPreferencePair:
    """The pair row: the prompt over the scan's slices, both answers with their scores, and the
    scan's volume references (the slices are the row's `images`, in the same order)."""
    images = [ImageData(bytes=s["image"]["bytes"], path=s["image"]["path"]) for s in case.slices]
    provenance = [ImageProvenance(source_sha256=case.volume["sha256"], source_path=case.volume["path"])
                  for _ in case.slices]
    lineage = case.row["lineage"]
    hashes = [hashlib.sha256(i.bytes).hexdigest() for i in images]  # the engine checks the stored images by these
    lineage = Lineage.model_validate({**lineage, "image_sha256": ",".join(hashes) or lineage["image_sha256"],
                                      "models": [*lineage.get("models", []), *([model] if model else [])]})
    return CtPreferencePair(
        id=f"{case.id}#dpo", images=images, image_provenance=provenance,
        prompt=[Turn(**t) for t in prompt_turns(case)],
        chosen=Turn(**{"from": "gpt", "value": chosen}), rejected=Turn(**{"from": "gpt", "value": rejected}),
        chosen_score=scores[0], rejected_score=scores[1], scorer=scorer, lineage=lineage,
        source=case.row["source"], scan_id=case.scan_id, patient_id=case.row["patient_id"],
        volume=VolumeRef.model_validate(case.volume),
        volumes=[VolumeRef.model_validate(v) for v in case.row.get("volumes") or [
            {**case.volume, "slices": []}]])


@dataclass(frozen=True)
class PlannedPair:
    """A pair decided (its answers and scores), made into its row when its shard is written: the
    row carries the scan's slices, read from the cases' shard then."""

    case: Case
    chosen: str
    rejected: str
    scores: tuple[float, float]
    scorer: str
    model: str | None

    @property
    def id(self) -> str:
        return f"{self.case.id}#dpo"

    def make(self) -> CtPreferencePair:
        return make_pair(self.case, self.chosen, self.rejected, self.scores, self.scorer, self.model)


@dataclass
class DpoResult:
    pairs: list[tuple[str, PlannedPair]]  # (split, pair)
    skipped: dict[str, int]
    skipped_by_source: dict[str, int]  # "<source>/<reason>" -> scans
    scored: list[dict[str, Any]]  # every candidate with its score (build/candidates.jsonl)
    without_candidates: int


def pair_up(cases: dict[str, Case], candidates: Candidates, metric: str, model: str | None = None,
            metric_model: str | None = None) -> DpoResult:
    """Score every candidate against its scan's report; one pair per scan that has a best and a worst."""
    scorer = scorer_for(metric, metric_model)
    pairs, scored = [], []
    skipped: Counter = Counter({r: 0 for r in SKIP_REASONS})
    by_source: Counter = Counter()
    for scan in sorted(candidates.by_scan):
        case, items = cases[scan], candidates.by_scan[scan]
        texts = [c["report"] for c in items]
        scores = score_all(scorer, texts, case.report, metric, scan)
        scored.extend({"scan": case.id, **c, "score": s} for c, s in zip(items, scores))
        picked = pick(scores)
        if isinstance(picked, str):
            skipped[picked] += 1
            by_source[f"{case.row['source']}/{picked}"] += 1
            continue
        best, worst = picked
        pairs.append((case.split, PlannedPair(case, texts[best], texts[worst], (scores[best], scores[worst]), metric,
                                              model)))
    return DpoResult(pairs, dict(skipped), dict(sorted(by_source.items())), scored,
                     len(set(cases) - set(candidates.by_scan)))
