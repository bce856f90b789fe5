"""The adaptive request pace (limits.Pacer): its rules on a fake clock (no sleeping) against
simulated servers, then once through the real SDK against the local server's per-second limit."""

from __future__ import annotations

import heapq
import math
from collections import deque

import pytest

from radcorpora.llm.errors import parse_retry_after, retry_after_is_exact
from radcorpora.llm.limits import Pacer, RunnerLimits
from radcorpora.llm.request import LLMRequest, Message
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.testing.fake_llm_server import FakeProviderServer

LIMIT = 10  # requests per second the simulated servers admit


class SlidingWindow:
    """At most `n` admissions in any one-second span; Retry-After rounded up to whole seconds
    (or exact, as retry-after-ms)."""

    def __init__(self, n: int, exact: bool = False, blocked: tuple[float, float] | None = None):
        self.n, self.exact, self.blocked, self.log = n, exact, blocked, deque()

    def admit(self, t: float) -> tuple[bool, float | None]:
        if self.blocked and self.blocked[0] <= t < self.blocked[1]:  # a spent quota: everything refused
            return False, float(math.ceil(self.blocked[1] - t))
        while self.log and self.log[0] <= t - 1:
            self.log.popleft()
        if len(self.log) < self.n:
            self.log.append(t)
            return True, None
        wait = self.log[0] + 1 - t
        return False, (wait if self.exact else float(max(1, math.ceil(wait))))


def simulate(server: SlidingWindow, pace: float | None, n: int, *, legacy: bool = False, latency: float = 0.5,
             concurrency: int = 16) -> tuple[Pacer, list[float], int]:
    """Event-driven run of `n` requests as the runner makes them: each takes a concurrency slot,
    waits for the pacer, is answered after `latency` or refused at once, and a refused one waits
    its Retry-After before queueing again. `legacy`: the old rule (fixed pace; every 429 holds
    every sender for its whole Retry-After). Returns the pacer, admission times, refusals."""
    pacer = Pacer(pace, 0.0)
    t, events, seq, ready, free, done = 0.0, [], 0, deque(range(n)), concurrency, 0
    admitted, refusals, waking, paused_until = [], 0, None, 0.0

    def at(when: float, kind: str, data: object = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (when, seq, kind, data))

    while done < n:
        while ready and free:
            wait = max(pacer.delay(t), paused_until - t)
            if wait > 1e-12:
                if waking is None or waking > t + wait:
                    waking = t + wait
                    at(waking, "wake")
                break
            item, sent, free = ready.popleft(), pacer.book(t), free - 1
            ok, retry_after = server.admit(t)
            if ok:
                admitted.append(t)
                at(t + latency, "ok", sent)
            else:
                refusals += 1
                at(t + 0.002, "429", (item, sent, retry_after))
        t, _, kind, data = heapq.heappop(events)
        if kind == "wake":
            waking = None
        elif kind == "ok":
            pacer.succeeded(data, t)
            free, done = free + 1, done + 1
        elif kind == "429":
            item, sent, retry_after = data
            free += 1
            if legacy:
                paused_until = max(paused_until, t + retry_after)
            else:
                pacer.refused(sent, t, retry_after, server.exact)
            at(t + retry_after, "ready", item)
        else:
            ready.append(data)
    return pacer, admitted, refusals


def share(admitted: list[float]) -> float:
    """Admissions per second over the run, as a share of the limit."""
    return (len(admitted) - 1) / (admitted[-1] - admitted[0]) / LIMIT


def test_twice_the_limit_settles_under_it_instead_of_stalling():
    _, old, old_refusals = simulate(SlidingWindow(LIMIT), 2 * LIMIT, 600, legacy=True)
    pacer, new, refusals = simulate(SlidingWindow(LIMIT), 2 * LIMIT, 600)
    # the old rule idles a second after each full window: 10 admitted per 1.5 s
    assert share(old) == pytest.approx(2 / 3, abs=0.03)
    assert share(new) >= 0.9
    assert pacer.cuts >= 2 and LIMIT * 0.8 <= pacer.rate <= LIMIT * 1.1
    assert refusals < old_refusals and refusals <= 0.06 * 600


def test_exact_waits_are_held_and_refuse_less():
    pacer, admitted, refusals = simulate(SlidingWindow(LIMIT, exact=True), 2 * LIMIT, 600)
    assert share(admitted) >= 0.9 and pacer.holds == 0 and refusals <= 0.05 * 600


def test_a_spent_quota_costs_a_few_refusals_then_the_pace_comes_back():
    server = SlidingWindow(LIMIT, blocked=(5.0, 25.0))  # 20 s of refusals, Retry-After 20
    pacer, admitted, refusals = simulate(server, LIMIT, 500)
    during = [a for a in admitted if 5.0 <= a < 25.0]
    assert during == [] and pacer.holds >= 1
    assert refusals <= 20  # the old rule: 1 + what was in flight; a storm would be hundreds
    after = [a for a in admitted if 35.0 <= a < 45.0]
    assert len(after) >= 0.85 * 10 * LIMIT  # probed back up within ten seconds


def test_without_a_configured_pace_the_first_429_sets_one():
    pacer, admitted, _ = simulate(SlidingWindow(LIMIT), None, 400)
    assert pacer.rate is not None and pacer.rate <= LIMIT * 1.1 and share(admitted) >= 0.85


def test_refusals_of_requests_sent_before_the_cut_cut_nothing_more():
    pacer = Pacer(20.0, 0.0)
    sent = [pacer.book(i * 0.05) for i in range(10)]  # 10 sends at 20/s, all within the last second
    pacer.refused(sent[8], 0.5, 1.0)  # one refused: admitted 9 of 10 in the last second
    # 9 admitted per second is below the pace of 20: cut to 9 x 0.95 = 8.55, but never below half: 10
    assert pacer.cuts == 1 and pacer.rate == pytest.approx(10.0)
    rate = pacer.rate
    pacer.refused(sent[9], 0.51, 1.0)  # sent before the cut
    assert pacer.cuts == 1 and pacer.rate == rate and pacer.holds == 0
    late = [pacer.book(0.6 + i * 0.1) for i in range(3)]
    for s in late:  # refused at the lowered pace, within the episode: strikes, then a hold
        pacer.refused(s, s + 0.01, 1.0)
    assert pacer.cuts == 1 and pacer.holds == 1 and pacer.delay(0.9) == pytest.approx(1.5 - 0.9)


def test_successes_probe_back_up_to_the_ceiling_and_no_further():
    pacer = Pacer(10.0, 0.0)
    for i in range(10):
        pacer.book(i * 0.1)
    pacer.refused(0.9, 1.0, 1.0)
    low = pacer.rate
    assert low < 10.0
    t = 1.0
    for _ in range(2000):
        t += 1 / pacer.rate
        pacer.succeeded(pacer.book(t), t)
    assert pacer.rate == 10.0 and low < 10.0


def test_retry_after_ms_takes_precedence_and_is_marked_exact():
    headers = {"retry-after": "1", "retry-after-ms": "250"}
    assert parse_retry_after(headers) == pytest.approx(0.25) and retry_after_is_exact(headers)
    assert parse_retry_after({"retry-after": "2"}) == 2.0 and not retry_after_is_exact({"retry-after": "2"})


@pytest.mark.parametrize("exact", [False, True])
def test_a_per_second_limit_through_the_sdk_lowers_the_pace(monkeypatch, tmp_path, exact):
    """Set to twice the server's per-second limit: every request is answered, 429s came back,
    and the pace was cut for them (counts, not times)."""
    with FakeProviderServer(rps_limit=5, retry_after_ms=exact, latency_s=0.05) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        session = LLMSession(LLMSettings(cache_path=str(tmp_path / "cache.sqlite"),
                                         limits=RunnerLimits(concurrency=8, rpm=10 * 60)))
        requests = [LLMRequest(id=f"p{i}", stage="pace", messages=(Message.user(f"pace question {i}"),))
                    for i in range(20)]
        results = session.run("openai:gpt-4o", requests)
        assert all(r.ok for r in results)
        assert server.answered == 20 and server.refused_429 >= 1
        assert session.pacing["refusals"] == server.refused_429 == session.sent - 20
        assert session.pacing["cuts"] >= 1
