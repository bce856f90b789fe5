"""LLM runner figures for docs/benchmarks.md.

1. Throughput under an RPM limit: the real openai client against the local wire-format server
   with injected latency and the same RPM enforced server-side; achieved requests/min as a share
   of the limit, and how many 429s came back.
2. Runner overhead per cached request, and the replay time of N cached requests (default 100k).
3. Set above the server's limit: the client at twice a per-second (sliding-window) server limit,
   the adaptive pace side by side with the old rule (fixed pace; each 429 holds every sender for
   its whole Retry-After), with the server's Retry-After in whole seconds and with retry-after-ms.

    python benchmarks/bench_llm_runner.py --rpm 600 --requests 300 --replay 100000 --over-rps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import radcorpora.llm.limits as limits_module
from radcorpora.llm.limits import Pacer, RunnerLimits
from radcorpora.llm.request import LLMRequest, Message
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.testing.fake_llm_server import FakeProviderServer, echo_responder


def make_requests(n: int, tag: str) -> list[LLMRequest]:
    return [LLMRequest(id=f"{tag}{i}", stage="bench", messages=(Message.user(f"{tag} benchmark question number {i}"),))
            for i in range(n)]


def throughput(rpm: int, n: int, latency: float, concurrency: int, work: Path) -> dict:
    with FakeProviderServer(echo_responder, latency_s=latency, rpm_limit=rpm) as server:
        os.environ["OPENAI_API_KEY"] = "sk-bench-not-a-real-key"
        os.environ["OPENAI_BASE_URL"] = server.openai_base_url
        session = LLMSession(LLMSettings(cache_path=str(work / "throughput.sqlite"),
                                         limits=RunnerLimits(concurrency=concurrency, rpm=rpm)))
        start = time.perf_counter()
        results = session.run("openai:gpt-4o-mini", make_requests(n, "t"))
        wall = time.perf_counter() - start
        # steady-state rate: from the first to the last request the server saw
        span = server.call_times[-1] - server.call_times[0]
        achieved = (len(server.call_times) - 1) / span * 60 if span > 0 else float("inf")
        return {"requests": n, "rpm_limit": rpm, "latency_s": latency, "concurrency": concurrency,
                "wall_s": round(wall, 2), "achieved_rpm": round(achieved, 1),
                "share_of_limit": round(achieved / rpm, 3), "server_429s": server.refused_429,
                "failed": sum(not r.ok for r in results)}


class LegacyPacer(Pacer):
    """The rule before the adaptive pace: the configured pace, never lowered, and every 429 holds
    every sender for its whole Retry-After (the reference for the side-by-side ratio)."""

    def succeeded(self, sent_at: float, now: float) -> None:
        return

    def refused(self, sent_at: float, now: float, retry_after: float | None, exact: bool = False) -> None:
        self.refusals += 1
        self.hold_until = max(self.hold_until, now + (retry_after if retry_after is not None else 1.0))


def over_limit(rps: int, n: int, latency: float, concurrency: int, work: Path, legacy: bool, exact: bool) -> dict:
    """The client set to twice the server's per-second limit; admitted/s as a share of it."""
    original = limits_module.Pacer
    if legacy:
        limits_module.Pacer = LegacyPacer
    try:
        with FakeProviderServer(echo_responder, latency_s=latency, rps_limit=rps, retry_after_ms=exact) as server:
            os.environ["OPENAI_API_KEY"] = "sk-bench-not-a-real-key"
            os.environ["OPENAI_BASE_URL"] = server.openai_base_url
            tag = f"o{int(legacy)}{int(exact)}"
            session = LLMSession(LLMSettings(cache_path=str(work / f"{tag}.sqlite"),
                                             limits=RunnerLimits(concurrency=concurrency, rpm=2 * rps * 60)))
            start = time.perf_counter()
            results = session.run("openai:gpt-4o-mini", make_requests(n, tag))
            wall = time.perf_counter() - start
            admits = server.admit_times
            achieved = (len(admits) - 1) / (admits[-1] - admits[0])
    finally:
        limits_module.Pacer = original
    return {"rule": "old (fixed pace, hold all)" if legacy else "adaptive", "retry_after": "ms" if exact else "s",
            "requests": n, "server_rps_limit": rps, "client_rpm": 2 * rps * 60, "wall_s": round(wall, 2),
            "admitted_per_s": round(achieved, 2), "share_of_limit": round(achieved / rps, 3),
            "server_429s": server.refused_429, "failed": sum(not r.ok for r in results), **session.pacing}


def replay(n: int, work: Path) -> dict:
    settings = LLMSettings(cache_path=str(work / "replay.sqlite"), limits=RunnerLimits(concurrency=64))
    requests = make_requests(n, "r")
    LLMSession(settings).run("offline", requests)  # fill the cache
    session = LLMSession(settings)
    start = time.perf_counter()
    results = session.run("offline", requests)
    wall = time.perf_counter() - start
    assert all(r.cached for r in results)
    return {"cached_requests": n, "replay_s": round(wall, 2), "overhead_ms_per_cached_request": round(wall / n * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--replay", type=int, default=100_000)
    parser.add_argument("--over-rps", type=int, default=10, help="server per-second limit for part 3 (0: skip)")
    parser.add_argument("--only-over", action="store_true", help="run part 3 only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result: dict = {}
        if not args.only_over:
            result["throughput"] = throughput(args.rpm, args.requests, args.latency, args.concurrency, work)
            result["replay"] = replay(args.replay, work)
        if args.over_rps:
            result["over_limit"] = [over_limit(args.over_rps, args.requests, args.latency, args.concurrency, work,
                                               legacy, exact) for exact in (False, True) for legacy in (True, False)]
        result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
