"""Client CPU per request against a zero-latency local OpenAI-compatible server (the local vLLM
case, where the client is the bottleneck): fresh requests (SDK call, parse, cache write, limiter,
accounting, ledger) side by side with the same requests answered from the cache.

The server runs in ANOTHER process (`python -m radcorpora.testing.fake_llm_server`), so only the
client's own CPU is counted (`time.process_time()` of this process).

    python benchmarks/bench_llm_client.py --requests 10000 --concurrency 64
    python benchmarks/bench_llm_client.py --requests 2000 --profile fresh   # cProfile the fresh pass
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from radcorpora.llm.limits import RunnerLimits
from radcorpora.llm.request import LLMRequest, Message
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.llm.structured import TagParser


def make_requests(n: int, tag: str) -> list[LLMRequest]:
    return [LLMRequest(id=f"{tag}{i}", stage="bench", messages=(Message.user(f"{tag} benchmark question number {i}"),))
            for i in range(n)]


def timed(session: LLMSession, spec: str, requests: list[LLMRequest], profile: bool) -> tuple[float, float, list, str]:
    profiler = cProfile.Profile() if profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    results = session.run(spec, requests, TagParser())
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    report = ""
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(45)
        report = out.getvalue()
    return cpu, wall, results, report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--spec", default="openai:bench-local-model", help="openai:MODEL or anthropic:MODEL")
    parser.add_argument("--http-client", choices=("auto", "aiohttp", "httpx"), default="auto")
    parser.add_argument("--profile", choices=("fresh", "cached"), default=None)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "radcorpora.testing.fake_llm_server", "--responder", "tagged"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        os.environ["OPENAI_API_KEY"] = "sk-bench-not-a-real-key"
        os.environ["OPENAI_BASE_URL"] = base_url + "/v1"
        os.environ["ANTHROPIC_API_KEY"] = "sk-bench-not-a-real-key"
        os.environ["ANTHROPIC_BASE_URL"] = base_url
        requests = make_requests(args.requests, "c")
        with tempfile.TemporaryDirectory() as tmp:
            settings = LLMSettings(cache_path=str(Path(tmp) / "client.sqlite"),
                                   limits=RunnerLimits(concurrency=args.concurrency), http_client=args.http_client)
            fresh = LLMSession(settings)
            fresh_cpu, fresh_wall, results, fresh_report = timed(fresh, args.spec, requests, args.profile == "fresh")
            assert all(r.ok and not r.cached for r in results), "fresh pass must send every request"
            assert fresh.sent == args.requests, (fresh.sent, fresh.ledger.counts())
            fresh.close()
            cached = LLMSession(settings)
            cached_cpu, cached_wall, results, cached_report = timed(cached, args.spec, requests, args.profile == "cached")
            assert all(r.ok and r.cached for r in results) and cached.sent == 0
            cached.close()
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    n = args.requests
    print(json.dumps({
        "requests": n, "concurrency": args.concurrency, "llm": args.spec, "http_client": args.http_client,
        "fresh": {"client_cpu_s": round(fresh_cpu, 2), "wall_s": round(fresh_wall, 2),
                  "client_cpu_ms_per_request": round(fresh_cpu / n * 1000, 3)},
        "cached": {"client_cpu_s": round(cached_cpu, 2), "wall_s": round(cached_wall, 2),
                   "client_cpu_ms_per_request": round(cached_cpu / n * 1000, 3)},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }, indent=2))
    if fresh_report or cached_report:
        print(fresh_report or cached_report)


if __name__ == "__main__":
    main()
