"""Credentialed (PhysioNet) data goes only to providers approved for it by name; answers already in
the cache need no approval. Through the real SDK clients against the local wire-format server."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from radcorpora.llm.errors import ComplianceError
from radcorpora.llm.request import LLMRequest, Message
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.llm.structured import TagParser
from radcorpora.testing.fake_llm_server import FakeProviderServer

KEY = "sk-test-SECRETKEY0123456789"
CLAUDE = "anthropic:claude-sonnet-4-5"


def replies(model, system, messages):
    last = messages[-1]["content"]
    text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if p.get("type") == "text")
    if "untagged" in text and "could not be used" not in text:
        return "no tags", None
    return f"<think>on {text[:20]}</think><answer>ok</answer>", None


@pytest.fixture
def server(monkeypatch):
    with FakeProviderServer(replies) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        yield srv


def session(tmp_path: Path, approve) -> LLMSession:
    return LLMSession(LLMSettings(cache_path=str(tmp_path / "cache.sqlite"), approve_credentialed=approve))


def mimic(n: int, prefix: str = "mimic") -> list[LLMRequest]:
    return [LLMRequest(id=f"{prefix}{i}", stage="t", messages=(Message.user(f"{prefix} report {i}"),),
                       licence_class="credentialed") for i in range(n)]


def test_openai_approved_while_anthropic_is_not(server, tmp_path):
    s = session(tmp_path, ["openai"])
    assert all(r.ok for r in s.run("openai:gpt-4o", mimic(2)))
    assert server.calls == 2
    with pytest.raises(ComplianceError) as refused:
        s.run(CLAUDE, mimic(2))
    message = str(refused.value)
    assert "'anthropic'" in message and "--approve-credentialed anthropic" in message
    assert server.calls == 2, "nothing may be sent once the run is refused"
    assert all(r.ok for r in s.run("offline", mimic(2)))  # nothing leaves the machine


def test_cached_credentialed_answers_need_no_approval(server, tmp_path):
    session(tmp_path, ["anthropic"]).run(CLAUDE, mimic(3))
    calls = server.calls
    later = session(tmp_path, ["openai"])  # anthropic no longer approved
    results = later.run(CLAUDE, list(reversed(mimic(3))))
    assert all(r.ok and r.cached for r in results) and server.calls == calls
    with pytest.raises(ComplianceError, match="1 item"):  # one new credentialed request among cached ones
        later.run(CLAUDE, mimic(4))
    assert server.calls == calls


def test_a_repair_that_would_need_sending_is_refused_not_sent(server, tmp_path):
    session(tmp_path, ["anthropic"]).run(CLAUDE, mimic(1, "untagged"))  # no parser: the bad reply is cached
    calls = server.calls
    s = session(tmp_path, [])
    (result,) = s.run(CLAUDE, mimic(1, "untagged"), TagParser())
    assert not result.ok and result.error.kind == "refused" and "anthropic" in str(result.error)
    assert server.calls == calls and s.ledger.counts() == {"refused": 1}


def test_settings_names_and_the_older_bool(server, tmp_path):
    assert LLMSettings(approve_credentialed=["OpenAI", "azure"]).approve_credentialed == ["azure", "openai"]
    assert LLMSettings(approve_credentialed="anthropic").approves("anthropic")
    assert not LLMSettings(approve_credentialed=["openai"]).approves("azure")
    assert LLMSettings(approve_credentialed=False).approve_credentialed == []
    with pytest.raises(ValidationError, match="not a provider"):
        LLMSettings(approve_credentialed=["opnai"])
    legacy = session(tmp_path, True)  # True: whichever provider is used
    assert all(r.ok for r in legacy.run(CLAUDE, mimic(1, "legacy")))
