"""LLM runner figures for docs/benchmarks.md.

1. Throughput under an RPM limit: the real openai client against the local wire-format server
   with injected latency and the same RPM enforced server-side; achieved requests/min as a share
   of the limit, and how many 429s came back.
2. Runner overhead per cached request, and the replay time of N cached requests (default 100k).

    python benchmarks/bench_llm_runner.py --rpm 600 --requests 300 --replay 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from radcorpora.llm.limits import RunnerLimits
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"throughput": throughput(args.rpm, args.requests, args.latency, args.concurrency, work),
                  "replay": replay(args.replay, work),
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
