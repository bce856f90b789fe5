"""The whole rad-ace-cot build: scan -> select -> LLM stages -> shards -> ledgers -> card -> validation.

Re-running the same command resumes: every answered request is in the cache, so only what was
never answered (or failed) is sent again. Adjudication decisions kept in the build folder are
applied on every (re)build, which is how `radcorpora adjudicate apply` folds them back.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radcorpora.builders import rad_ace_cot as rac
from radcorpora.builders.engine import clear_state, prepare_out_dir
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.llm.verify import read_decisions
from radcorpora.pipelines.common import BuildOutcome, library_versions, storage_report
from radcorpora.publish import atomic
from radcorpora.publish.card import render_card, write_card
from radcorpora.publish.rad_ace_cot_card import rad_ace_cot_card
from radcorpora.publish.shards import write_split
from radcorpora.schemas.rad_ace_cot import CONFIG_RECORDS, CotEvalRecord, CotRecord
from radcorpora.sources.pubmedvision import scan_pubmedvision
from radcorpora.sources.vqa_rad import read_vqa_rad_test
from radcorpora.validators import validate_build

DECISIONS_FILE = "build/adjudication_decisions.jsonl"
QUEUE_FILE = "build/adjudication_queue.jsonl"
FAILURES_FILE = "build/llm_failures.jsonl"


def build_rad_ace_cot(
    source: Path,
    out: Path,
    config: rac.RadAceCotConfig,
    settings: LLMSettings,
    *,
    vqa_rad: Path | None = None,
    overwrite: bool = False,
    decisions: dict[str, str] | None = None,
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> BuildOutcome:
    started = time.time()
    log = log or (lambda message: None)
    generate_prompt, verify_prompt = rac.load_prompts(config)
    if decisions is None and (out / DECISIONS_FILE).exists():
        decisions = read_decisions(out / DECISIONS_FILE)
    decisions = dict(sorted((decisions or {}).items()))
    scan = scan_pubmedvision(source, config.subset)
    log(f"{scan.file.name}: {scan.counts['records']} records, {len(scan.samples)} CT/MR samples")
    fingerprint = {
        "corpus": rac.CORPUS,
        "config": config.model_dump(mode="json"),
        "source": {"file": scan.file.name, "size": scan.file.stat().st_size, "samples": len(scan.samples)},
        "prompts": {generate_prompt.id: generate_prompt.content_hash, verify_prompt.id: verify_prompt.content_hash},
        "vqa_rad": str(vqa_rad) if vqa_rad else None,
        "decisions": decisions,
    }
    state = prepare_out_dir(out, fingerprint, overwrite)
    if state == "complete":
        return BuildOutcome(out, state, json.loads((out / "build" / "manifest.json").read_text()), None)
    if decisions:
        atomic.write_jsonl(out / DECISIONS_FILE, [{"id": k, "decision": v} for k, v in decisions.items()])

    selected, select_rejects = rac.select_samples(scan, config)
    session = LLMSession(settings, offline=rac.OFFLINE_RESPONDERS, log=log)
    try:
        outcome = rac.run_stages(selected, config, session, decisions)
    finally:
        session.close()

    prompts = [generate_prompt] + ([verify_prompt] if config.verifiers else [])
    models = [session.model_id(config.llm), *(session.model_id(v) for v in config.verifiers)]
    splits: dict[str, dict[str, int]] = {}
    for split in ("train", "validation"):
        kept = [(c, v) for c, v in outcome.kept if c.item.split == split]
        records = (rac.make_record(c, v, prompts, models) for c, v in kept)
        shards = write_split(out, "default", split, records, len(kept), CotRecord, config.images_per_shard)
        splits.setdefault("default", {})[split] = sum(shards.values())
    eval_rejects = []
    if vqa_rad is not None:
        test = read_vqa_rad_test(vqa_rad)
        eval_rejects = test.rejects
        records = rac.eval_records(test)
        shards = write_split(out, "eval", "test", records, len(records), CotEvalRecord, 5000)
        splits["eval"] = {"test": sum(shards.values())}

    rejects = [*scan.rejects, *select_rejects, *outcome.rejects, *eval_rejects]
    atomic.write_jsonl(out / "build" / "rejects.jsonl", [r.model_dump() for r in rejects])
    atomic.write_jsonl(out / FAILURES_FILE, session.ledger.entries)
    atomic.write_jsonl(out / QUEUE_FILE, [q.model_dump(mode="json") for q in outcome.queued])
    counts = Counter(scan.counts) + outcome.counts
    counts["selected"] = len(selected)
    manifest: dict[str, Any] = {
        "corpus": rac.CORPUS,
        "fingerprint": fingerprint,
        "versions": library_versions(),
        "build": {"command": command or f"radcorpora build rad-ace-cot --source {source} --out {out} --llm {config.llm}",
                  "started_unix": round(started, 3),
                  "rebuild": {"source": str(Path(source).resolve()),
                              "vqa_rad": str(Path(vqa_rad).resolve()) if vqa_rad else None,
                              "config": config.model_dump(mode="json"),
                              "cache_path": str(session.cache.path)}},
        "source": {"dataset": "PubMedVision", "file": scan.file.name,
                   "modality_values": dict(scan.modality_values.most_common()),
                   "vqa_rad": None if vqa_rad is None else {"questions": splits.get("eval", {}).get("test", 0)}},
        "licence_class": rac.LICENCE_CLASS,
        "prompts": {p.id: p.content_hash for p in prompts},
        "llm": {"generator": session.model_id(config.llm), "verifiers": [session.model_id(v) for v in config.verifiers],
                **session.summary(), "verification": outcome.agreement,
                "adjudication_pending": len(outcome.queued), "adjudication_decisions": len(decisions)},
        "splits": splits,
        "counts": dict(sorted(counts.items())),
        "rejects": dict(sorted(Counter(r.reason for r in rejects).items())),
        "rejected_rows": len(rejects),
        "warnings": ([f"{len(outcome.queued)} sample(s) await adjudication in {QUEUE_FILE}"] if outcome.queued else [])
                    + ([f"{len(session.ledger.entries)} LLM request(s) failed; rerun to retry them"]
                       if session.ledger.entries else []),
    }
    manifest["storage"] = storage_report(out, 0)
    atomic.write_json(out / "build" / "manifest.json", manifest)
    write_card(out, render_card(out, CONFIG_RECORDS, rad_ace_cot_card(manifest), manifest, default="default"))
    report = validate_build(out)
    atomic.write_json(out / "build" / "validation.json", json.loads(report.model_dump_json()))
    manifest["validation"] = report.summary()
    manifest["build"]["seconds"] = round(time.time() - started, 2)
    atomic.write_json(out / "build" / "manifest.json", manifest)
    write_card(out, render_card(out, CONFIG_RECORDS, rad_ace_cot_card(manifest), manifest, default="default"))
    clear_state(out)
    return BuildOutcome(out, state, manifest, report)


def apply_adjudication(build: Path, decisions_file: Path, log: Callable[[str], None] | None = None) -> BuildOutcome:
    """Fold a person's decisions on queued samples back into the build: accepted samples join
    their split, rejected ones go to rejects.jsonl. The build is re-finalised from the answer
    cache only (nothing is sent), so the result equals a build made with these decisions."""
    from radcorpora.llm.verify import AdjudicationError, read_queue
    from radcorpora.validators.layout import read_manifest

    manifest = read_manifest(build)
    if manifest.get("corpus") != rac.CORPUS:
        raise AdjudicationError(f"{build}: adjudication applies to rad-ace-cot builds, this is {manifest.get('corpus')!r}")
    previous = read_decisions(build / DECISIONS_FILE) if (build / DECISIONS_FILE).exists() else {}
    queue_ids = {entry.id for entry in read_queue(build / QUEUE_FILE)} | set(previous)
    decisions = {**previous, **read_decisions(decisions_file, queue_ids)}
    rebuild = manifest["build"]["rebuild"]
    settings = LLMSettings(cache_path=rebuild["cache_path"], cache_only=True)
    return build_rad_ace_cot(Path(rebuild["source"]), build, rac.RadAceCotConfig.model_validate(rebuild["config"]),
                             settings, vqa_rad=Path(rebuild["vqa_rad"]) if rebuild.get("vqa_rad") else None,
                             overwrite=True, decisions=decisions, command=manifest["build"]["command"], log=log)
