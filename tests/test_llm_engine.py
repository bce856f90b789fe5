"""The LLM engine against local servers speaking the OpenAI and Anthropic wire formats, through
the real SDK clients."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radcorpora.llm.batch import BatchRunner
from radcorpora.llm.errors import ComplianceError, redact
from radcorpora.llm.limits import RunnerLimits
from radcorpora.llm.request import ImagePart, LLMRequest, Message
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.llm.structured import TagParser
from radcorpora.llm.usage import load_prices
from radcorpora.llm.verify import Verdict, agreement, cohen_kappa, route
from radcorpora.testing.fake_llm_server import FakeProviderServer, Fault

KEY = "sk-test-SECRETKEY0123456789"


def tagged(model, system, messages):
    last = messages[-1]["content"]
    text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if p.get("type") == "text")
    return f"<think>thinking about {text[:40]}</think><answer>answer to {text[:20]}</answer>", "private reasoning"


@pytest.fixture
def server(monkeypatch):
    with FakeProviderServer(tagged) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        yield srv


def requests(n: int, prefix: str = "q", licence: str = "public") -> list[LLMRequest]:
    return [LLMRequest(id=f"{prefix}{i}", stage="test", messages=(Message.user(f"{prefix} question {i}"),),
                       licence_class=licence) for i in range(n)]


def session(tmp_path: Path, **limits) -> LLMSession:
    defaults = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}
    return LLMSession(LLMSettings(cache_path=str(tmp_path / "cache.sqlite"),
                                  limits=RunnerLimits(**{**defaults, **limits})))


@pytest.mark.parametrize("spec", ["openai:gpt-4o", "anthropic:claude-sonnet-4-5"])
def test_answers_parse_keep_reasoning_apart_and_rerun_is_free(server, tmp_path, spec):
    first = session(tmp_path).run(spec, requests(6), TagParser())
    assert [r.ok for r in first] == [True] * 6
    assert first[2].parsed["answer"] == "answer to q question 2"
    assert first[2].response.reasoning == "private reasoning"
    assert "private reasoning" not in first[2].response.content
    calls = server.calls
    again = session(tmp_path)
    reordered = again.run(spec, list(reversed(requests(6)))[:4], TagParser())
    assert server.calls == calls, "a rerun, reordered and on a subset, must send nothing"
    assert all(r.cached for r in reordered)
    assert [r.parsed for r in reordered] == [r.parsed for r in reversed(first[2:])]


def test_images_go_in_each_providers_format(server, tmp_path):
    image = ImagePart(media_type="image/png", data=b"\x89PNG-bytes", width=10, height=10)
    request = LLMRequest(id="img", stage="test", messages=(Message.user(image, "what is shown?"),))
    session(tmp_path).run("openai:gpt-4o", [request])
    sent = server.request_bodies[-1]["messages"][0]["content"]
    assert sent[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image.base64()}"}}
    session(tmp_path).run("anthropic:claude-sonnet-4-5", [request])
    sent = server.request_bodies[-1]["messages"][0]["content"]
    assert sent[0] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image.base64()}}


def test_429_retry_after_is_honoured(server, tmp_path):
    server.faults.append(Fault(status=429, headers={"retry-after": "0.4"}))
    start = time.monotonic()
    (result,) = session(tmp_path).run("openai:gpt-4o", requests(1))
    assert result.ok and result.attempts == 2
    assert time.monotonic() - start >= 0.4


def test_server_errors_retry_then_fail_into_the_ledger(server, tmp_path):
    server.faults.extend([Fault(status=500), Fault(status=503), Fault(status=503)])
    s = session(tmp_path, max_attempts=2)
    first, second = s.run("openai:gpt-4o", requests(1, "a") + requests(1, "b"))[:2]
    oks = sorted([first.ok, second.ok])
    assert oks == [False, True]
    assert s.ledger.counts() == {"server": 1}
    entry = s.ledger.entries[0]
    assert entry["attempts"] == 2 and entry["status"] == 503
    # failed requests are retried alone: the next run sends exactly one request
    calls = server.calls
    rerun = session(tmp_path).run("openai:gpt-4o", requests(1, "a") + requests(1, "b"))
    assert all(r.ok for r in rerun) and server.calls == calls + 1


def test_timeouts_and_malformed_replies(server, tmp_path):
    server.faults.append(Fault(delay_s=1.5))
    s = session(tmp_path, timeout_s=0.3, max_attempts=1)
    (result,) = s.run("openai:gpt-4o", requests(1))
    assert not result.ok and result.error.kind == "timeout"
    server.faults.append(Fault(malformed=True))
    (result,) = session(tmp_path).run("anthropic:claude-sonnet-4-5", requests(1, "m"))
    assert result.ok and result.attempts == 2


def test_unparseable_reply_gets_one_repair_then_the_ledger(monkeypatch, tmp_path):
    replies = iter(["no tags at all", "<think>ok</think><answer>fixed</answer>"])

    def flaky(model, system, messages):
        return next(replies, "still no tags"), None

    with FakeProviderServer(flaky) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        (fixed,) = session(tmp_path).run("openai:gpt-4o", requests(1), TagParser())
        assert fixed.ok and fixed.repaired and fixed.parsed["answer"] == "fixed"
        assert "could not be used" in srv.request_bodies[-1]["messages"][-1]["content"]
        s = session(tmp_path)
        (broken,) = s.run("openai:gpt-4o", requests(1, "z"), TagParser())
        assert not broken.ok and broken.error.kind == "parse"
        assert s.ledger.counts() == {"parse": 1}


def test_concurrency_bound_is_held(monkeypatch, tmp_path):
    with FakeProviderServer(tagged, latency_s=0.15) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        results = session(tmp_path, concurrency=3).run("openai:gpt-4o", requests(12))
        assert all(r.ok for r in results)
        assert srv.max_in_flight == 3


def test_rpm_limit_is_held_without_429s(monkeypatch, tmp_path):
    with FakeProviderServer(tagged, rpm_limit=240) as srv:  # 4 per second, paced
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        start = time.monotonic()
        results = session(tmp_path, concurrency=8, rpm=240).run("openai:gpt-4o", requests(9))
        elapsed = time.monotonic() - start
        assert all(r.ok for r in results)
        assert srv.refused_429 == 0
        assert elapsed >= 8 / 4 - 0.1  # 9 requests at 4/s after the first


@pytest.mark.parametrize("spec", ["openai:gpt-4o", "anthropic:claude-sonnet-4-5"])
def test_batch_lifecycle_lands_in_the_cache_at_batch_prices(server, tmp_path, spec):
    settings = LLMSettings(cache_path=str(tmp_path / "cache.sqlite"), batch=True, batch_poll_s=0.01)
    s = LLMSession(settings)
    results = s.run(spec, requests(5), TagParser())
    assert all(r.ok for r in results) and len(server.batches) == 1
    model = s.meter.summary()["models"][spec]
    assert model["batch"] == 5 and model["from_cache"] == 0
    online = sum(load_prices().cost(spec.split(":")[1], r.response.usage) for r in results)
    assert model["cost_usd"] == pytest.approx(online * 0.5, abs=1e-6)  # the batch discount
    calls = server.calls
    again = LLMSession(settings).run(spec, requests(5), TagParser())
    assert all(r.cached for r in again) and server.calls == calls and len(server.batches) == 1


def test_batch_resumes_after_a_crash_instead_of_resubmitting(server, tmp_path, monkeypatch):
    settings = LLMSettings(cache_path=str(tmp_path / "cache.sqlite"), batch=True, batch_poll_s=0.01)

    async def crash(self, batch_id, keys):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(BatchRunner, "_collect", crash)
        with pytest.raises(KeyboardInterrupt):
            LLMSession(settings).run("openai:gpt-4o", requests(4))
    assert len(server.batches) == 1
    logs: list[str] = []
    results = LLMSession(settings, log=logs.append).run("openai:gpt-4o", requests(4))
    assert all(r.ok for r in results)
    assert len(server.batches) == 1 and any("resuming batch" in line for line in logs)


def test_cost_totals_match_prices_times_reported_usage(server, tmp_path):
    s = session(tmp_path)
    s.run("openai:gpt-4o", requests(3))
    # independently: the fake server bills len(json(messages))//4 in and len(text)//4 out
    tokens_in = tokens_out = 0
    for body in server.request_bodies:
        content, reasoning = tagged(body["model"], None, body["messages"])
        tokens_in += len(json.dumps(body["messages"])) // 4
        tokens_out += len(content) // 4 + len(reasoning) // 4
    expected = (tokens_in * 2.50 + tokens_out * 10.00) / 1e6  # gpt-4o list prices per 1M tokens
    usage = s.meter.summary()
    assert usage["models"]["openai:gpt-4o"]["input_tokens"] == tokens_in
    assert usage["total_cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert usage["total_cost_usd_this_run"] == pytest.approx(expected, abs=1e-6)
    again = session(tmp_path)
    again.run("openai:gpt-4o", requests(3))
    assert again.meter.summary()["total_cost_usd_this_run"] == 0.0  # all cached: nothing paid now


def test_credentialed_items_need_an_approved_provider(server, tmp_path):
    with pytest.raises(ComplianceError, match="credentialed"):
        session(tmp_path).run("openai:gpt-4o", requests(2) + requests(1, "mimic", licence="credentialed"))
    assert server.calls == 0
    approved = LLMSession(LLMSettings(cache_path=str(tmp_path / "c.sqlite"), approve_credentialed=["openai"]))
    assert all(r.ok for r in approved.run("openai:gpt-4o", requests(1, "mimic", licence="credentialed")))
    offline = session(tmp_path).run("offline", requests(1, "mimic", licence="credentialed"))
    assert offline[0].ok  # nothing leaves the machine


def test_keys_never_reach_cache_ledger_or_errors(server, tmp_path):
    server.faults.append(Fault(status=401))
    s = session(tmp_path)
    (result,) = s.run("openai:gpt-4o", requests(1))
    assert result.error.kind == "auth"
    s.run("openai:gpt-4o", requests(3, "ok"))
    s.close()
    assert KEY not in json.dumps(s.ledger.entries) and KEY not in str(result.error)
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("cache.sqlite*"))
    assert KEY.encode() not in blob
    assert redact(f"failed with key {KEY}") == "failed with key ***"


def test_killed_run_resumes_and_pays_only_for_the_rest(monkeypatch, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from radcorpora.llm.session import LLMSession, LLMSettings\n"
        "from radcorpora.llm.limits import RunnerLimits\n"
        "from radcorpora.llm.request import LLMRequest, Message\n"
        "reqs = [LLMRequest(id=f'k{i}', stage='t', messages=(Message.user(f'kill question {i}'),)) for i in range(30)]\n"
        "LLMSession(LLMSettings(cache_path=sys.argv[1], limits=RunnerLimits(concurrency=2))).run('openai:gpt-4o', reqs)\n")
    with FakeProviderServer(tagged, latency_s=0.1) as srv:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": srv.openai_base_url, "PATH": "/usr/bin:/bin"}
        cache = tmp_path / "cache.sqlite"
        proc = subprocess.Popen([sys.executable, str(script), str(cache)], env=env)
        deadline = time.monotonic() + 30
        while srv.answered < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        with sqlite3.connect(cache) as db:
            kept = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        assert 0 < kept < 30
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        before = srv.calls
        reqs = [LLMRequest(id=f"k{i}", stage="t", messages=(Message.user(f"kill question {i}"),)) for i in range(30)]
        results = LLMSession(LLMSettings(cache_path=str(cache))).run("openai:gpt-4o", reqs)
        assert all(r.ok for r in results)
        assert srv.calls - before == 30 - kept


def test_agreement_and_routing():
    yes, no = Verdict(consistent=True), Verdict(consistent=False)
    verdicts = {"a": {"m1": yes, "m2": yes}, "b": {"m1": no, "m2": no}, "c": {"m1": yes, "m2": no},
                "d": {"m1": yes, "m2": yes}}
    report = agreement(verdicts)
    assert report["outcomes"] == {"disagree": 1, "fail": 1, "pass": 2}
    assert report["percent_agreement"] == 75.0
    # kappa by hand: po = 3/4; p(m1 yes) = 3/4, p(m2 yes) = 1/2 -> pe = 3/8 + 1/8 = 1/2 -> (3/4 - 1/2) / (1/2)
    assert report["cohen_kappa"] == pytest.approx(0.5)
    assert cohen_kappa([True, False], [True, False]) == 1.0
    assert route({"m1": yes}) == "pass" and route({"m1": yes, "m2": no}) == "disagree"


def test_tpm_bucket_waits_for_tokens_and_reconciles_with_usage():
    import asyncio

    from radcorpora.llm.limits import RateLimiter

    async def scenario() -> tuple[float, float]:
        limiter = RateLimiter(rpm=None, tpm=6000)  # 100 tokens/s, 1,000 tokens of burst
        start = time.monotonic()
        await limiter.acquire(1000)
        await limiter.acquire(150)  # the bucket is empty: 1.5 s
        waited = time.monotonic() - start
        limiter.reconcile(estimated=1000, actual=100)  # the first reply used far less than estimated
        start = time.monotonic()
        await limiter.acquire(800)
        return waited, time.monotonic() - start

    waited, after_refund = asyncio.run(scenario())
    assert 1.4 <= waited <= 2.5
    assert after_refund < 0.2


def test_price_overrides(tmp_path):
    override = tmp_path / "prices.yaml"
    override.write_text("batch_discount: 0.4\nmodels:\n  my-local-model: {input: 1.0, output: 2.0}\n  gpt-4o: {input: 5.0, output: 20.0}\n")
    table = load_prices(override)
    from radcorpora.llm.request import Usage

    usage = Usage(input_tokens=1_000_000, output_tokens=500_000)
    assert table.cost("my-local-model", usage) == pytest.approx(2.0)
    assert table.cost("gpt-4o-2024-08-06", usage) == pytest.approx(15.0)  # dated snapshot priced as gpt-4o
    assert table.cost("gpt-4o", usage, batch=True) == pytest.approx(6.0)
    assert table.cost("unknown-model", usage) is None
    assert table.price_for("claude-sonnet-4-5") is not None  # packaged entries kept
