"""Answer-cache scope (keys on the model and request, not the endpoint's port, unless asked) and
`estimate` reading the cache as a build would (requests to send, cached, cost of the rest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.demo.pubmedvision import write_demo_pubmedvision
from radcorpora.llm.cache import AnswerCache
from radcorpora.llm.request import LLMRequest, LLMResponse, Message
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.testing.fake_llm_server import FakeProviderServer

KEY = "sk-test-scope-0123456789"


def requests(n: int) -> list[LLMRequest]:
    return [LLMRequest(id=f"s{i}", stage="scope", messages=(Message.user(f"scope question {i}"),)) for i in range(n)]


def run(cache: Path, base_url: str, scope: str = "model") -> LLMSession:
    session = LLMSession(LLMSettings(cache_path=str(cache), base_url=base_url, cache_scope=scope))
    results = session.run("openai:local-model", requests(3))
    assert all(r.ok for r in results)
    session.close()
    return session


def test_a_server_on_another_port_answers_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cache = tmp_path / "cache.sqlite"
    with FakeProviderServer() as a, FakeProviderServer() as b:
        assert a.base_url != b.base_url
        run(cache, a.openai_base_url)
        assert a.calls == 3
        moved = run(cache, b.openai_base_url)
        assert b.calls == 0 and moved.sent == 0
        pinned = run(cache, b.openai_base_url, scope="endpoint")
        assert b.calls == 3 and pinned.sent == 3


def test_answers_cached_under_the_older_endpoint_key_are_still_read(monkeypatch, tmp_path):
    """Caches written before the change keyed answers with the endpoint: read, and copied under the
    new key, not paid for again."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cache = tmp_path / "cache.sqlite"
    with FakeProviderServer() as server:
        endpoint = server.openai_base_url
        with AnswerCache(cache) as store:
            for r in requests(3):
                old_key = r.cache_key("openai", endpoint, "local-model")
                store.put(old_key, LLMResponse(content=f"old answer {r.id}", model="local-model", provider="openai"))
        session = LLMSession(LLMSettings(cache_path=str(cache), base_url=endpoint))
        results = session.run("openai:local-model", requests(3))
        assert server.calls == 0 and [r.response.content for r in results] == ["old answer s0", "old answer s1",
                                                                             "old answer s2"]
        session.close()
        with AnswerCache(cache) as store:
            assert all(r.cache_key("openai", None, "local-model") in store for r in requests(3))


@pytest.fixture(scope="module")
def pubmedvision(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scope-sources")
    write_demo_pubmedvision(root / "pubmedvision")
    return root / "pubmedvision"


def estimate(runner: CliRunner, source: Path, cache: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["estimate", "rad-ace-cot", "--source", str(source), "--llm", "offline",
                                 "--cache", str(cache), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def test_estimate_after_a_build_counts_its_requests_as_cached(pubmedvision, tmp_path):
    runner = CliRunner()
    cache = tmp_path / "cache.sqlite"
    empty = estimate(runner, pubmedvision, tmp_path / "empty.sqlite")
    (stage,) = empty["stages"]
    assert stage["requests"] > 0 and stage["to_send"] == stage["requests"] and stage["already_cached"] == 0
    result = runner.invoke(app, ["build", "rad-ace-cot", "--source", str(pubmedvision), "--out", str(tmp_path / "b"),
                                 "--llm", "offline", "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    sent = json.loads((tmp_path / "b/build/manifest.json").read_text())["llm"]["requests_sent"]
    assert sent == stage["requests"]  # the estimate's plan is what the build sent
    after = estimate(runner, pubmedvision, cache)
    (stage,) = after["stages"]
    assert stage["to_send"] == 0 and stage["already_cached"] == stage["requests"]
    assert stage["estimated_input_tokens"] == 0 and after["total"]["to_send"] == 0
    table = runner.invoke(app, ["estimate", "rad-ace-cot", "--source", str(pubmedvision), "--llm", "offline",
                                "--cache", str(cache)])
    assert table.exit_code == 0 and "to send" in table.output and "cached" in table.output
