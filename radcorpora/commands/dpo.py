"""`radcorpora dpo ct-reasoning BUILD --out DIR`: preference pairs (best vs worst candidate report
per scan, scored against the scan's report) written as a build of `ct-reasoning-dpo` (config
`preference`, loss intent "preference"), through the engine like any build. Exit 2 on bad input."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from radcorpora.commands.corpus import on_corpus_command
from radcorpora.commands.ui import USER_ERRORS, fail, say

if TYPE_CHECKING:
    from radcorpora.corpora.ct_reasoning.dpo import Candidates, Case, DpoSettings

# the corpus whose build gives the cases -> the pairs' corpus (ct_reasoning.dpo.CORPUS, named here
# so that the command line does not import that module until a dpo command runs)
CORPORA = {"ct-reasoning": "ct-reasoning-dpo"}


def _hf_sampler(path: str, cases: dict[str, Case], settings: DpoSettings) -> tuple[Candidates, Any]:
    """`--sampler hf:PATH`: imported only when used (torch and transformers take seconds)."""
    from radcorpora.reference_models.sampler import sample_local

    return sample_local(path, cases, settings)


def wire_samplers() -> None:
    """The `hf:` sampler, wired in by the layer that may import reference_models: before the dpo
    command or `build ct-reasoning-dpo` runs."""
    from radcorpora.corpora.ct_reasoning import dpo

    dpo.register_sampler("hf", _hf_sampler)


for _pairs in CORPORA.values():
    on_corpus_command(_pairs, wire_samplers)


def dpo_cmd(
    corpus: str = typer.Argument(..., help="Corpus whose build gives the cases (ct-reasoning)"),
    build: Path = typer.Argument(..., help="The corpus's build folder"),
    out: Path = typer.Option(..., "--out", help="Build folder to write the preference pairs to"),
    candidates: Path | None = typer.Option(None, "--candidates",
                                           help='JSONL of candidates, one {"scan": ID, "report": TEXT} a line'),
    sampler: str | None = typer.Option(None, "--sampler",
                                       help="Sample candidates: PROVIDER:MODEL (openai-compatible, e.g. vLLM via "
                                            "--base-url), offline (the stand-in), hf:PATH (a local transformers "
                                            "checkpoint)"),
    n: int = typer.Option(4, "--n", help="Candidates sampled per scan (with --sampler)"),
    metric: str = typer.Option("rougeL", "--metric", help="Scorer: rougeL, green, a registered name, an entry point "
                                                          "(group radcorpora.scorers) or module:function"),
    metric_model: str | None = typer.Option(None, "--metric-model", help="The scorer's model (green: local path)"),
    seed: int = typer.Option(0, "--seed", help="Sampling seed"),
    retries: int = typer.Option(2, "--retries", help="Re-asks of an empty or failed sample (with --sampler)"),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (with --sampler)"),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Longest candidate in tokens (with --sampler)"),
    base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (vLLM, ...)"),
    cache: Path | None = typer.Option(None, "--cache", help="LLM answer cache (default: the user cache)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing build in --out"),
) -> None:
    """Pair the best and the worst candidate report of each scan (scored against its report) as
    chosen / rejected; ties, single candidates and all-zero scores are skipped and counted. The
    output is a build folder: `radcorpora validate`, `preview`, `export --format trl` work on it."""
    from pydantic import ValidationError

    from radcorpora.commands.corpus import run_build_command
    from radcorpora.corpora.ct_reasoning import dpo
    from radcorpora.llm.session import LLMSettings
    from radcorpora.registry import corpus as spec_of

    flags = {"n": "--n", "retries": "--retries", "temperature": "--temperature", "max_tokens": "--max-tokens",
             "metric": "--metric", "sampler": "--sampler", "seed": "--seed"}
    wire_samplers()
    try:
        if corpus not in CORPORA:
            raise dpo.DpoError(f"dpo supports {', '.join(CORPORA)}, not {corpus!r}")
        if (candidates is None) == (sampler is None):
            raise dpo.DpoError("give exactly one of --candidates FILE and --sampler PROVIDER:MODEL")
        settings = dpo.DpoSettings(sampler=sampler, n=n, metric=metric, metric_model=metric_model, seed=seed,
                                   retries=retries, temperature=temperature, max_tokens=max_tokens)
        if candidates is not None and not candidates.is_file():
            raise dpo.DpoError(f"--candidates {candidates}: no such file")
        spec = spec_of(CORPORA[corpus])
        llm = LLMSettings(cache_path=str(cache) if cache else None, base_url=base_url)
    except ValidationError as exc:
        fail(exc, flags=flags)
        return
    except (dpo.DpoError, *USER_ERRORS) as exc:
        fail(exc)
        return
    run_build_command(spec, {"cases": build, "candidates": candidates}, settings, out, overwrite=overwrite, llm=llm)
    import json

    figures = json.loads((out / "build" / "manifest.json").read_text()).get("dpo") or {}
    skipped = ", ".join(f"{k} {v}" for k, v in (figures.get("skipped") or {}).items())
    say(f"pairs: {figures.get('pairs')}; skipped: {skipped}; scans without candidates: "
        f"{figures.get('scans_without_candidates')}; samples that never came: {figures.get('sampling_failures')}")
