"""ct-reasoning-dpo, declared once: DPO preference pairs from a ct-reasoning build, as a build the
engine knows (manifest, card, validation, preview, exports, `datasets.load_dataset`).

Made by `radcorpora dpo ct-reasoning BUILD --out DIR ...` (or `radcorpora build ct-reasoning-dpo
--cases BUILD ...`): sources are the ct-reasoning build (`--cases`) and, unless a sampler is given,
a candidates file; the logic lives in corpora/ct_reasoning/dpo.py.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from radcorpora.corpora.ct_reasoning import dpo
from radcorpora.corpora.ct_reasoning.card import MU2_BIBTEX
from radcorpora.corpora.ct_reasoning.records import CtPreferencePair
from radcorpora.schemas import preference
from radcorpora.schemas.common import Reject
from radcorpora.schemas.volume import volume_rows
from radcorpora.sources.abdomen_atlas import INFO as ATLAS
from radcorpora.sources.amos_mm import INFO as AMOS
from radcorpora.sources.ct_rate import INFO as CT_RATE
from radcorpora.spec.card import CardContent
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.spec.corpus import ConfigSpec, CorpusSpec, SourceOption
from radcorpora.spec.preview import PlotSpec, PreviewSpec
from radcorpora.spec.report import ValidationReport
from radcorpora.spec.rules import CorpusRules, RowRules
from radcorpora.store import atomic
from radcorpora.store.shards import write_split
from radcorpora.store.state import ChunkResult, ShardInfo
from radcorpora.validators.structure import OBJECT_CHECKS, iter_records


@dataclass
class Plan:
    cases: dict[str, dpo.Case]
    candidates: dpo.Candidates | None  # from the file; None: sampled in run
    licence: str


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _checkpoint_identity(path: str) -> dict[str, Any]:
    """What names a local checkpoint's content cheaply: its config and its files' sizes."""
    folder = Path(path).expanduser()
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    return {"config": _file_sha256(folder / "config.json") if (folder / "config.json").is_file() else None,
            "files": {p.name: p.stat().st_size for p in files}}


def prepare(sources: dict[str, Path], settings: dpo.DpoSettings, log: Callable[[str], None]) -> Prepared:
    from radcorpora.llm.providers import parse_llm_spec
    from radcorpora.store.folder import read_manifest

    if "cases" not in sources:
        raise dpo.DpoError("give the ct-reasoning build the cases come from: --cases BUILD")
    if ("candidates" in sources) == (settings.sampler is not None):
        raise dpo.DpoError("give exactly one of --candidates FILE and --sampler PROVIDER:MODEL")
    dpo.scorer_for(settings.metric, settings.metric_model)  # an unknown metric stops here, before any sample
    cases = dpo.load_cases(sources["cases"])
    manifest = read_manifest(sources["cases"])
    log(f"{len(cases)} cases from {sources['cases']}")
    candidates, fingerprint = None, {}
    if "candidates" in sources:
        candidates = dpo.read_candidates(sources["candidates"], cases)
        fingerprint["candidates"] = _file_sha256(sources["candidates"])
        log(f"{sum(len(v) for v in candidates.by_scan.values())} candidates, {len(candidates.rejects)} bad lines")
    elif dpo.local_sampler(settings.sampler) is not None:
        fingerprint["checkpoint"] = _checkpoint_identity(settings.sampler.partition(":")[2])
    else:
        parse_llm_spec(settings.sampler)  # an unknown provider stops here
    shards = {k: v.get("sha256") for k, v in (manifest.get("shards") or {}).items()
              if k.startswith(f"data/{dpo.CASES_CONFIG}/")}
    fingerprint["cases"] = hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()[:16]
    return Prepared(fingerprint={"sources": fingerprint, "prompt": dpo.PROMPT_ID},
                    plan=Plan(cases, candidates, manifest.get("licence_class", "restricted")))


def licence(settings: dpo.DpoSettings, sources: dict[str, Path]) -> str:
    """The cases' licence class: pairs are derived from their reports and slices."""
    from radcorpora.store.folder import read_manifest

    return read_manifest(sources["cases"]).get("licence_class", "restricted")


def run(prepared: Prepared, settings: dpo.DpoSettings, ctx: BuildContext) -> StageOutput:
    plan: Plan = prepared.plan
    counts: Counter = Counter()
    rejects: list[Reject] = []
    llm: dict[str, Any] = {}
    model = None
    failed: list[tuple[str, int]] = []
    if plan.candidates is not None:
        found = plan.candidates
        rejects.extend(found.rejects)
    else:
        local = dpo.local_sampler(settings.sampler)
        if local is not None:
            sampler, rest = local
            model = settings.sampler
            found, failed = sampler(rest, plan.cases, settings)
        else:
            session = ctx.llm_session({dpo.STAGE: dpo.offline_candidate})
            try:
                model = session.model_id(settings.sampler)
                found, failed = dpo.sample_candidates(session, settings.sampler, plan.cases, settings)
            finally:
                session.close()
            llm = {"generator": model, "stages": {dpo.STAGE: dpo.CandidateStage.description}, **session.summary(),
                   "cache_path": str(session.cache.path)}
        for scan, index in failed:
            case = plan.cases[scan]
            rejects.append(Reject(source=dpo.CORPUS, row=f"{case.id}#{index}", reason="sample_failed",
                                  detail=f"{case.id}: candidate {index} empty or failed after "
                                         f"{settings.retries + 1} tries"))
    result = dpo.pair_up(plan.cases, found, settings.metric, model, settings.metric_model)
    atomic.write_jsonl(ctx.out / dpo.CANDIDATES_FILE, result.scored)
    # the splits that hold pairs (an empty shard breaks `datasets.load_dataset`); train always
    splits = sorted({s for s, _ in result.pairs} | {"train"}, key=dpo.SPLITS.index)
    chunks = []
    for split in splits:
        planned = sorted((p for s, p in result.pairs if s == split), key=lambda p: p.id)
        rows = (p.make() for p in planned)  # each row's slices read from the cases' shard as it is written
        written = write_split(ctx.out, dpo.CONFIG, split, rows, len(planned), CtPreferencePair,
                              settings.rows_per_shard)
        chunks.append(ChunkResult(chunk_id=f"{dpo.CONFIG}-{split}", shards={
            rel: ShardInfo(rows=n, sha256=digest) for rel, (n, digest) in written.items()}))
    for reject in rejects:
        counts[f"rejected_{reject.reason}"] += 1
    counts.update({"cases": len(plan.cases), "candidates": len(result.scored), "pairs": len(result.pairs),
                   "scans_without_candidates": result.without_candidates,
                   **{f"skipped_{k}": v for k, v in result.skipped.items()}})
    figures = {"metric": settings.metric, "sampler": model, "pairs": len(result.pairs), "skipped": result.skipped,
               "scans_without_candidates": result.without_candidates, "sampling_failures": len(failed),
               "candidates": len(result.scored), "cases_from": dpo.CASES_CONFIG, "prompt": dpo.PROMPT_TEXT}
    return StageOutput(
        chunks=chunks, rejects=rejects, counts=counts, excluded=result.skipped_by_source, configs_asked=[dpo.CONFIG],
        files=[dpo.CANDIDATES_FILE], manifest={"dpo": figures, **({"llm": llm} if llm else {})},
        warnings=[f"{len(failed)} sample(s) never came; rerun to ask again"] if failed else [])


def estimate(sources: dict[str, Path], settings: dpo.DpoSettings, log: Callable[[str], None]
             ) -> tuple[list[Any], dict[str, Any]]:
    """The first try of every sample (retries come only for empty or failed ones)."""
    cases = dpo.load_cases(sources["cases"])
    info = {"samples": len(cases)}
    if settings.sampler is None or dpo.local_sampler(settings.sampler) is not None:
        return [], {**info, "note": "candidates from a file or a local checkpoint: nothing is sent to a provider"}
    stage = dpo.CandidateStage(settings)
    requests = [stage.prompt((cases[s], i, 0)) for s in sorted(cases) for i in range(settings.n)]
    return [(dpo.CandidateStage, settings.sampler, requests)], info


# --------------------------------------------------------------------------- checks

RULES = {
    "split_by_patient": "no patient in two splits",
    "images_are_slices": "a pair's images are its volume's stored slices, in order, each a PNG that decodes",
    "not_empty": "the preference config has training pairs",
}
ROW_NAMES = {
    "too_many_placeholders": "no more <image> in the prompt than images",
    "too_few_placeholders": "no fewer <image> in the prompt than images",
    "placeholder_in_assistant_turn": "no <image> in a gpt turn of the prompt",
    "misspelt_placeholder": "no misspelt <image> placeholder",
    "placeholder_in_answer": "no <image> in either answer",
    "provenance_count": "one provenance entry per image",
    "score_order": "chosen is scored above rejected",
    "volume_grid": "the volume references' shape, spacing, orientation and slices are consistent",
}


def check_rows(config: str, table) -> dict[str, list[int]]:
    broken = dict(preference.check_rows(config, table))
    grid = volume_rows(table, "volume")
    if grid:
        broken["volume_grid"] = sorted({r for rows in grid.values() for r in rows})
    return broken


def validate_pairs(build: Path, report: ValidationReport, manifest: dict, image_check: str = "full",
                   deep: bool = False) -> ValidationReport:
    patients = report.check("split_by_patient", RULES["split_by_patient"])
    slices = report.check("images_are_slices", RULES["images_are_slices"])
    split_of: dict[tuple[str, str], str] = {}
    for _config, split, where, record in iter_records(build, {dpo.CONFIG: CtPreferencePair}, report):
        key = (record.source, record.patient_id)
        previous = split_of.setdefault(key, split)
        patients.expect(previous == split, f"{where}: patient {record.patient_id} in {previous} and {split}")
        stored = [s.image.bytes for s in record.volume.slices]
        slices.expect([i.bytes for i in record.images] == stored, f"{where}: images are not the volume's slices")
        for k, image in enumerate(record.images):
            try:
                with Image.open(io.BytesIO(image.bytes)) as opened:
                    opened.load()
            except (OSError, ValueError) as exc:
                slices.fail(f"{where}: image {k} does not decode ({exc})")
    report.check("not_empty", RULES["not_empty"]).expect(
        bool((manifest.get("splits") or {}).get(dpo.CONFIG, {}).get("train")),
        f"{dpo.CONFIG}/train is empty: nothing to train on")
    return report


USAGE = """```python
from datasets import load_dataset

pairs = load_dataset("path/or/repo", "preference")   # prompt, chosen, rejected, scores, images, volume
row = pairs["train"][0]
row["chosen"]["value"], row["rejected"]["value"], row["chosen_score"], row["scorer"]
```

For TRL's DPOTrainer: `radcorpora export BUILD --format trl --out DIR` writes prompt / chosen /
rejected messages with image paths (see its export_settings.json). Volumes are referenced, not
copied: get them from the source datasets and check the sha256."""


def card(manifest: dict[str, Any]) -> CardContent:
    figures = manifest.get("dpo") or {}
    skipped = ", ".join(f"{k}: {v}" for k, v in (figures.get("skipped") or {}).items()) or "none"
    return CardContent(
        pretty_name="CT report reasoning: DPO pairs (radcorpora build)",
        summary=("Preference pairs for CT report generation, following Li et al. (mu^2 Tokenizer): candidate "
                 "reports per scan, scored against the scan's reference report, the best kept as `chosen` and "
                 "the worst as `rejected`; ties, single candidates and all-zero scores are skipped and counted. "
                 "The prompt shows the scan's stored axial slices; rows reference the CT volumes."),
        licence={"license": "cc-by-nc-sa-4.0"},
        licence_text=(f"Licence class: {manifest.get('licence_class', 'restricted')} (non-commercial). "
                      f"{CT_RATE.licence} {ATLAS.licence} {AMOS.licence} The reports and candidates are derived "
                      "from these sources and follow CC BY-NC-SA 4.0; sampled candidates are model output: check "
                      "your model provider's terms too."),
        citations=[MU2_BIBTEX, CT_RATE.citation, AMOS.citation, ATLAS.citation],
        task_categories=["text-generation", "image-text-to-text"],
        tags=["medical", "radiology", "ct", "dpo", "preference", "report-generation", "radcorpora"],
        usage=USAGE,
        sections={"Pairs": (f"Scorer `{figures.get('metric')}`; candidates from "
                            f"{figures.get('sampler') or 'a candidates file'}; {figures.get('pairs', 0)} pairs from "
                            f"{figures.get('candidates', 0)} candidates; skipped: {skipped}; scans without "
                            f"candidates: {figures.get('scans_without_candidates', 0)}; samples that never came: "
                            f"{figures.get('sampling_failures', 0)}. Every candidate with its score: "
                            f"`{dpo.CANDIDATES_FILE}`.")},
    )


SPEC = CorpusSpec(
    name=dpo.CORPUS,
    title="CT report reasoning: DPO pairs",
    summary="Preference pairs from a ct-reasoning build: candidate reports per scan (a file or a sampler) scored "
            "against the reference report; best = chosen, worst = rejected (radcorpora dpo ct-reasoning)",
    settings=dpo.DpoSettings,
    configs=(ConfigSpec(dpo.CONFIG, CtPreferencePair, "prompt over the scan's slices, chosen and rejected report "
                        "with scores, volume references", dpo.SPLITS, default=True, loss="preference"),),
    sources=(SourceOption("cases", "--cases", "the ct-reasoning build folder the cases come from (report_thinking)",
                          required=True),
             SourceOption("candidates", "--candidates", 'JSONL of candidates, one {"scan": ID, "report": TEXT} a '
                          "line (instead of --sampler)", accepts_file=True)),
    licence_class=licence,
    prepare=prepare,
    run=run,
    rules=CorpusRules({**RULES, "record_objects": OBJECT_CHECKS["record_objects"]}, validate_pairs),
    row_rules=RowRules(ROW_NAMES, check_rows),
    card=card,
    llm_stages=(dpo.CandidateStage,),
    estimate=estimate,
    preview=PreviewSpec(plots=(PlotSpec("source", "source"), PlotSpec("scorer", "scorer"))),
)
