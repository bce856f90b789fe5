"""`radcorpora dpo ct-reasoning BUILD --out DIR`: preference pairs (best vs worst candidate report
per scan, scored against the scan's report) in TRL's preference format. Exit 2 on bad input."""

from __future__ import annotations

from pathlib import Path

import typer

from radcorpora.commands.ui import USER_ERRORS, fail, say
from radcorpora.corpora.ct_reasoning import dpo

CORPORA = ("ct-reasoning",)


def dpo_cmd(
    corpus: str = typer.Argument(..., help="Corpus whose build gives the cases (ct-reasoning)"),
    build: Path = typer.Argument(..., help="The corpus's build folder"),
    out: Path = typer.Option(..., "--out", help="Folder to write the preference dataset to"),
    candidates: Path | None = typer.Option(None, "--candidates",
                                           help='JSONL of candidates, one {"scan": ID, "report": TEXT} a line'),
    sampler: str | None = typer.Option(None, "--sampler",
                                       help="Sample candidates: PROVIDER:MODEL (openai-compatible, e.g. vLLM via "
                                            "--base-url), offline (the stand-in), hf:PATH (not supported yet)"),
    n: int = typer.Option(4, "--n", help="Candidates sampled per scan (with --sampler)"),
    metric: str = typer.Option("rougeL", "--metric", help="Registered scorer (rougeL by default)"),
    seed: int = typer.Option(0, "--seed", help="Sampling seed"),
    retries: int = typer.Option(2, "--retries", help="Re-asks of an empty or failed sample (with --sampler)"),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (with --sampler)"),
    base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (vLLM, ...)"),
    cache: Path | None = typer.Option(None, "--cache", help="LLM answer cache (default OUT/llm_cache.sqlite)"),
) -> None:
    """Pair the best and the worst candidate report of each scan (scored against its report) as
    chosen / rejected; ties, single candidates and all-zero scores are skipped and counted."""
    try:
        if corpus not in CORPORA:
            raise dpo.DpoError(f"dpo supports {', '.join(CORPORA)}, not {corpus!r}")
        if (candidates is None) == (sampler is None):
            raise dpo.DpoError("give exactly one of --candidates FILE and --sampler PROVIDER:MODEL")
        if sampler is not None and sampler.startswith("hf:"):
            raise dpo.DpoError("--sampler hf:PATH (a local transformers checkpoint) is not supported yet; "
                               "serve it with vLLM and use --sampler openai:MODEL --base-url URL")
        if n < 2:
            raise dpo.DpoError("--n must be >= 2 (a pair needs two candidates)")
        if retries < 0:
            raise dpo.DpoError("--retries must be >= 0")
        dpo.scorer_for(metric)
        if not build.is_dir():
            raise dpo.DpoError(f"{build}: no such build folder")
        cases = dpo.load_cases(build)
        failures, model = 0, None
        if candidates is not None:
            found = dpo.read_candidates(candidates, cases)
        else:
            from radcorpora.llm.session import LLMSession, LLMSettings

            out.mkdir(parents=True, exist_ok=True)
            settings = LLMSettings(cache_path=str(cache or out / "llm_cache.sqlite"), base_url=base_url)
            session = LLMSession(settings, offline={dpo.STAGE: dpo.offline_candidate})
            try:
                model = session.model_id(sampler)
                found, failures = dpo.sample_candidates(session, sampler, cases, n, seed, retries, temperature)
            finally:
                session.close()
        result = dpo.pair_up(cases, found, metric, model)
        result.sampling_failures = failures
        manifest = dpo.write_output(result, out, {
            "build": str(build), "metric": metric, "candidates": str(candidates) if candidates else None,
            "sampler": model, "n": n if sampler else None, "seed": seed if sampler else None})
    except (dpo.DpoError, *USER_ERRORS) as exc:
        fail(exc)
        return
    skipped = ", ".join(f"{k} {v}" for k, v in manifest["skipped"].items())
    say(f"pairs: {sum(manifest['pairs'].values())} ({manifest['pairs']}); skipped: {skipped}; "
        f"rejected lines: {manifest['rejected_lines']}; scans without candidates: "
        f"{manifest['scans_without_candidates']}; written to {out}")
    for reject in manifest["rejects"][:10]:
        say(f"  {reject['file']}:{reject['line']}: {reject['reason']}")
