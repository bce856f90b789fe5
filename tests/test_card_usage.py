"""The card's LLM usage after a resumed build: stored pipeline outputs were reused without a
request, so the session saw none of them; what the build holds comes from the pipeline figures."""

from __future__ import annotations

from radcorpora.publish.card import llm_section


def _stage(consumes: str, parsed: int, rejected: int, cost: float | None) -> dict:
    return {"models": ["openai:gpt-4o"], "consumes": consumes, "items": parsed + rejected, "requests": parsed + rejected,
            "reused": parsed + rejected, "cached": 0, "sent": 0, "failed": 0, "parsed": parsed, "repaired": 0,
            "rejected": rejected, "outputs": parsed, "paid": {"cost_usd": 0.0},
            "held": {"input_tokens": 100, "output_tokens": 10, "cost_usd": cost}}


def test_a_resumed_build_holds_what_its_pipeline_stored():
    resumed_usage = {"stages": {}, "paid_this_run": {"replies": 0, "cost_usd": 0.0},
                     "held": {"answers": 0, "cost_usd": 0.0}, "prices_as_of": "2026-01-01"}
    manifest = {"llm": {"generator": "openai:gpt-4o", "usage": resumed_usage,
                        "pipeline": {"stages": {"summarise": _stage("input", 7, 1, 0.0125),
                                                "reflect": _stage("summarise", 6, 1, 0.0075)}}}}
    text = llm_section(manifest)
    assert "Cost of the 15 answers this build holds: $0.0200" in text  # 7+1 + 6+1 lines, 0.0125 + 0.0075
    assert "No LLM requests this run." in text and "Paid this run: $0.0000 for 0 billed replies" in text


def test_an_unknown_stage_cost_makes_the_held_cost_unknown():
    manifest = {"llm": {"generator": "x:y", "usage": {"stages": {}},
                        "pipeline": {"stages": {"a": _stage("input", 2, 0, None), "b": _stage("a", 2, 0, 0.5)}}}}
    assert "Cost of the 4 answers this build holds: unknown" in llm_section(manifest)


def test_without_a_pipeline_the_session_figures_stand():
    usage = {"stages": {"gen": {"openai:gpt-4o": {"requests": 3, "paid": {"replies": 3, "cost_usd": 0.3},
                                                  "held": {"answers": 3, "from_cache": 0, "cost_usd": 0.3}}}},
             "paid_this_run": {"replies": 3, "cost_usd": 0.3}, "held": {"answers": 3, "cost_usd": 0.3}}
    text = llm_section({"llm": {"generator": "openai:gpt-4o", "usage": usage}})
    assert "answers held" in text and "Cost of the 3 answers this build holds: $0.3000" in text
