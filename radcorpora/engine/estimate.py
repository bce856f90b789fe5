"""`radcorpora estimate`: a corpus' LLM stages sized before anything is sent — requests to send
and already cached, tokens, cost online and batch, time at the configured limits — read from the
stages themselves, keyed and looked up in the answer cache as a build would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from radcorpora.llm.cache import AnswerCache, default_cache_path
from radcorpora.llm.estimate import estimate_stage, total
from radcorpora.llm.providers import endpoint_for, parse_llm_spec
from radcorpora.llm.request import LLMRequest
from radcorpora.llm.usage import load_prices


def estimate_plan(corpus: str, plan: Sequence[tuple[type, str, list[LLMRequest]]], settings: Any) -> dict[str, Any]:
    """plan: (stage class, model, requests) per stage and model."""
    table = load_prices(Path(settings.prices_path) if settings.prices_path else None)
    cache_path = Path(settings.cache_path) if settings.cache_path else default_cache_path()
    cache = AnswerCache(cache_path) if cache_path.exists() else None
    stages = []
    try:
        for stage, model, requests in plan:
            row = estimate_stage(model, requests, stage.expected_output_tokens, table, settings.limits, cache,
                                 endpoint_for(parse_llm_spec(model)[0], getattr(settings, "base_url", None)),
                                 cache_scope=getattr(settings, "cache_scope", "model"))
            stages.append({"stage": stage.name, **row})
    finally:
        if cache is not None:
            cache.close()
    missing = sorted({s["llm"] for s in stages if s["cost_usd_online"] is None})
    result = {"corpus": corpus, "stages": stages, "total": total(stages), "prices_as_of": table.as_of}
    if missing:
        result["missing_prices"] = missing
    return result


def _money(value: float | None) -> str:
    return "no price" if value is None else f"${value:,.2f}"


def print_estimate(result: dict[str, Any], out: Console) -> None:
    """A table that reads at 80 columns, totals as sentences, and what to do about missing prices."""
    table = Table(title=f"{result['corpus']} estimate: {result.get('samples', '?')} samples", width=80,
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    # six narrow columns fit 80 even at a million requests; a long PROVIDER:MODEL wraps, never "…".
    # Tokens, cost and minutes are those of the requests to send (answers in the cache are free).
    for column, justify in (("stage / model", "left"), ("requests", "right"), ("to send:\ntokens in/out", "right"),
                            ("online", "right"), ("batch", "right"), ("minutes", "right")):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for s in result["stages"]:
        table.add_row(Text(f"{s['stage']}\n{s['llm']}"), f"{s['requests']:,}\n{s['already_cached']:,} cached",
                      f"{s['estimated_input_tokens']:,}\n{s['estimated_output_tokens']:,}",
                      _money(s["cost_usd_online"]), _money(s["cost_usd_batch"]), f"{s['minutes_online']:,}")
    out.print(table)
    limits = ", ".join(f"{s['stage']} {s['limited_by']}" for s in result["stages"])
    out.print(Text(f"Minutes are online time at the configured --concurrency, --rpm and --tpm; the limit that "
                   f"binds: {limits}."))
    t = result["total"]
    out.print(Text(f"In all: {t['requests']:,} requests, {t['to_send']:,} to send (the rest answered from the "
                   f"cache); cost of what is sent "
                   f"{_money(t.get('cost_usd_online'))} online or {_money(t.get('cost_usd_batch'))} with --batch "
                   f"(list prices as of {result['prices_as_of']})."))
    for model in result.get("missing_prices", []):
        out.print(Text(f"No price known for {model}: add it to a YAML file passed with --prices "
                       "(models: {MODEL: {input: USD per 1M tokens, output: ...}}).", style="yellow"))
    if result.get("note"):
        out.print(Text(result["note"], style="yellow"))
