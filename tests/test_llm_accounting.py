"""Usage and cost: what a run paid and what the build holds, per (stage, model), checked against
what the local wire-format server billed, through the real openai and anthropic SDK clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from radcorpora.llm.limits import RunnerLimits
from radcorpora.llm.request import LLMRequest, Message
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.llm.structured import TagParser
from radcorpora.testing.fake_llm_server import FakeProviderServer, Fault

KEY = "sk-test-SECRETKEY0123456789"
PRICE = {"gpt-4o": (2.50, 10.00), "claude-sonnet-4-5": (3.00, 15.00)}  # list prices per 1M tokens (in, out)
TOKENS = ("input_tokens", "output_tokens")


def _text(messages) -> str:
    last = messages[-1]["content"]
    return last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if p.get("type") == "text")


def first_bad_then_repaired(model, system, messages):
    """Questions containing 'bad' get an unparseable first reply; the repair request is answered
    in the right format."""
    text = _text(messages)
    if "could not be used" in text:
        return "<think>fixed it</think><answer>repaired</answer>", None
    if "bad" in text:
        return "sorry, no tags here", None
    return f"<think>about {text[:30]}</think><answer>fine</answer>", "hidden reasoning"


@pytest.fixture
def server(monkeypatch):
    with FakeProviderServer(first_bad_then_repaired) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        yield srv


def settings(tmp_path: Path, **extra) -> LLMSettings:
    extra.setdefault("limits", RunnerLimits(backoff_base_s=0.01, backoff_max_s=0.02))
    return LLMSettings(cache_path=str(tmp_path / "cache.sqlite"), **extra)


def make(texts: list[str], stage: str = "gen") -> list[LLMRequest]:
    return [LLMRequest(id=f"{stage}-{i}", stage=stage, messages=(Message.user(t),)) for i, t in enumerate(texts)]


def usd(model: str, billed: dict[str, int], batch: bool = False) -> float:
    rate_in, rate_out = PRICE[model]
    return (billed["input_tokens"] * rate_in + billed["output_tokens"] * rate_out) / 1e6 * (0.5 if batch else 1.0)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def server_text_replies(srv: FakeProviderServer, start: int = 0) -> dict[str, int]:
    """What the server billed for replies that carried text (the ones an answer can be made of)."""
    chosen = [b for b in srv.billed[start:] if b.text]
    return {"replies": len(chosen), "input_tokens": sum(b.input_tokens for b in chosen),
            "output_tokens": sum(b.output_tokens for b in chosen)}


# 4 good questions, 2 that need a repair, and duplicates of one of each (same text, other ids)
TEXTS = ["good one", "good two", "good three", "good four", "bad five", "bad six", "good one", "bad six"]


@pytest.mark.parametrize("spec", ["openai:gpt-4o", "anthropic:claude-sonnet-4-5"])
def test_paid_and_held_match_what_the_server_billed(server, tmp_path, spec):
    model = spec.split(":")[1]
    server.faults.append(Fault(empty=True))  # one billed reply without text: retried, paid, not held
    s = LLMSession(settings(tmp_path))
    results = s.run(spec, make(TEXTS), TagParser())
    assert all(r.ok for r in results)
    assert [r.repaired for r in results] == [False] * 4 + [True, True, False, True]
    billed = server.billed_totals()
    # independently: 6 distinct requests + 2 repairs + 1 empty reply, each billed once
    assert billed["replies"] == 9 and server.calls == 9

    usage = s.meter.summary()
    row = usage["stages"]["gen"][spec]
    assert row["requests"] == 8 and row["failed"] == 0
    paid = row["paid"]
    assert (paid["replies"], paid["repairs"], paid["billed_errors"]) == (9, 2, 1)
    assert {k: paid[k] for k in TOKENS} == {k: billed[k] for k in TOKENS}
    assert paid["cost_usd"] == pytest.approx(usd(model, billed), abs=1e-6)
    assert usage["paid_this_run"]["cost_usd"] == pytest.approx(usd(model, billed), abs=1e-6)

    kept = server_text_replies(server)  # every text reply is part of exactly one kept answer
    held = row["held"]
    assert (held["answers"], held["from_cache"], held["repaired"]) == (6, 0, 2)
    assert {k: held[k] for k in TOKENS} == {k: kept[k] for k in TOKENS}
    assert held["cost_usd"] == pytest.approx(usd(model, kept), abs=1e-6)
    assert paid["cost_usd"] > held["cost_usd"]  # the empty reply was paid but is not held
    # the deprecated per-model view agrees with the new figures
    assert usage["total_cost_usd"] == held["cost_usd"] and usage["total_cost_usd_this_run"] == paid["cost_usd"]

    # a rerun reads everything from the cache: nothing paid, the same answers held at their recorded cost
    calls = server.calls
    again = LLMSession(settings(tmp_path))
    rerun = again.run(spec, make(TEXTS), TagParser())
    assert all(r.ok and r.cached for r in rerun) and server.calls == calls
    row = again.meter.summary()["stages"]["gen"][spec]
    assert row["paid"]["replies"] == 0 and row["paid"]["cost_usd"] == 0.0
    assert (row["held"]["answers"], row["held"]["from_cache"], row["held"]["repaired"]) == (6, 6, 2)
    assert {k: row["held"][k] for k in TOKENS} == {k: kept[k] for k in TOKENS}
    assert row["held"]["cost_usd"] == pytest.approx(usd(model, kept), abs=1e-6)


def test_cached_answers_are_held_at_the_cost_recorded_when_bought(server, tmp_path):
    LLMSession(settings(tmp_path)).run("openai:gpt-4o", make(["good a", "bad b"]), TagParser())
    kept = server_text_replies(server)
    doubled = tmp_path / "prices.yaml"
    doubled.write_text("models:\n  gpt-4o: {input: 5.0, output: 20.0}\n")
    later = LLMSession(settings(tmp_path, prices_path=str(doubled)))
    later.run("openai:gpt-4o", make(["good a", "bad b"]), TagParser())
    held = later.meter.summary()["held"]
    assert held["answers"] == 2 and held["cost_usd"] == pytest.approx(usd("gpt-4o", kept), abs=1e-6)
    later.run("openai:gpt-4o", make(["good c"]), TagParser())  # bought now: today's (doubled) prices
    new = server_text_replies(server, start=len(server.billed) - 1)
    assert later.meter.summary()["paid_this_run"]["cost_usd"] == pytest.approx(2 * usd("gpt-4o", new), abs=1e-6)


def test_a_verifier_on_the_generators_model_counts_as_verification(server, tmp_path):
    s = LLMSession(settings(tmp_path))
    s.run("openai:gpt-4o", make(["good g1", "good g2", "bad g3"], stage="cot"), TagParser())
    before_verify = server.billed_totals()
    s.run("openai:gpt-4o", make(["good v1", "good v2"], stage="verify"), TagParser())
    verify_billed = delta(server.billed_totals(), before_verify)
    stages = s.meter.summary()["stages"]
    assert set(stages) == {"cot", "verify"}
    assert stages["cot"]["openai:gpt-4o"]["paid"]["replies"] == before_verify["replies"] == 4  # 3 + 1 repair
    verify = stages["verify"]["openai:gpt-4o"]
    assert verify["paid"]["replies"] == verify_billed["replies"] == 2
    assert {k: verify["paid"][k] for k in TOKENS} == {k: verify_billed[k] for k in TOKENS}
    assert verify["held"]["cost_usd"] == pytest.approx(usd("gpt-4o", verify_billed), abs=1e-6)


def test_failed_requests_are_paid_but_not_held(server, tmp_path):
    server.faults.extend([Fault(empty=True), Fault(empty=True)])
    s = LLMSession(settings(tmp_path, limits=RunnerLimits(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02)))
    (result,) = s.run("anthropic:claude-sonnet-4-5", make(["good lonely"]), TagParser())
    assert not result.ok and result.error.kind == "malformed"
    row = s.meter.summary()["stages"]["gen"]["anthropic:claude-sonnet-4-5"]
    billed = server.billed_totals()
    assert billed["replies"] == 2
    assert (row["failed"], row["paid"]["replies"], row["paid"]["billed_errors"]) == (1, 2, 2)
    assert row["paid"]["cost_usd"] == pytest.approx(usd("claude-sonnet-4-5", billed), abs=1e-6)
    assert row["held"]["answers"] == 0 and row["held"]["cost_usd"] == 0.0


@pytest.mark.parametrize("spec", ["openai:gpt-4o", "anthropic:claude-sonnet-4-5"])
def test_batch_answers_are_paid_at_the_batch_rate_and_repairs_online(server, tmp_path, spec):
    model = spec.split(":")[1]
    s = LLMSession(settings(tmp_path, batch=True, batch_poll_s=0.01))
    results = s.run(spec, make(["good x", "good y", "bad z", "good x"]), TagParser())
    assert all(r.ok for r in results) and results[2].repaired
    batch_billed, online_billed = server.billed_totals(batch=True), server.billed_totals(batch=False)
    assert (batch_billed["replies"], online_billed["replies"]) == (3, 1)  # the repair goes online
    row = s.meter.summary()["stages"]["gen"][spec]
    paid = row["paid"]
    assert (paid["replies"], paid["batch"], paid["repairs"]) == (4, 3, 1)
    assert paid["input_tokens"] == batch_billed["input_tokens"] + online_billed["input_tokens"]
    expected = usd(model, batch_billed, batch=True) + usd(model, online_billed)
    assert paid["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert row["held"]["answers"] == 3 and row["held"]["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert row["held"]["from_cache"] == 0  # bought by this run, through the batch
