"""Provider batch APIs (about half the online price, answers within 24 h), landing in the cache.

OpenAI: a JSONL file of /v1/chat/completions bodies is uploaded (purpose "batch"), a batch is
created, polled, and its output and error files are fetched. Anthropic: a Message Batch of
`{custom_id, params}` is created, polled until `ended`, and its results streamed. The custom id is
the request's cache key. Submitted batch ids are recorded in the cache database before polling,
so a restarted run collects the batches it already paid for instead of submitting again.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from radcorpora.llm.errors import LLMError
from radcorpora.llm.providers import AnthropicProvider, OpenAIProvider, Provider, _sdk_error
from radcorpora.llm.request import LLMRequest
from radcorpora.llm.runner import CallResult, LLMRunner, Parser, cached_answers, check_compliance

OPENAI_DONE = {"completed", "failed", "expired", "cancelled"}
MAX_BATCH_REQUESTS = 50_000  # OpenAI's per-batch limit; Anthropic allows 100,000


class BatchRunner:
    """Like LLMRunner.run, through the provider's batch API. Replies that fail to parse get their
    one repair attempt online (a second day-long wait for one line would stall the build)."""

    def __init__(self, runner: LLMRunner, poll_interval_s: float = 30.0, max_wait_s: float = 26 * 3600,
                 log: Callable[[str], None] | None = None):
        self.runner = runner
        self.provider: Provider = runner.provider
        self.cache = runner.cache
        self.poll_interval_s = poll_interval_s
        self.max_wait_s = max_wait_s
        self.log = log or (lambda message: None)
        self.batch_errors: dict[str, LLMError] = {}
        self.landed: set[str] = set()
        self.by_key: dict[str, LLMRequest] = {}

    async def run(self, requests: Sequence[LLMRequest], parser: Parser | None = None) -> list[CallResult]:
        if not isinstance(self.provider, (OpenAIProvider, AnthropicProvider)):
            raise LLMError("client", f"{self.provider.name} has no batch API; run without --batch")
        keys_of = [self.runner.key_of(request) for request in requests]
        by_key = self.by_key
        for key, request in zip(keys_of, requests):
            by_key.setdefault(key, request)
        cached_answers(self.cache, by_key, self.provider, self.runner.cache_scope)  # answers under older keys too
        missing = {k for k in by_key if k not in self.cache}
        check_compliance([by_key[k] for k in sorted(missing)], self.provider)  # cached answers need no approval
        for batch_id, keys in self.cache.open_batches(self.provider.name, self.provider.endpoint, self.provider.model):
            if missing & set(keys):
                self.log(f"resuming batch {batch_id}")
                await self._collect(batch_id, keys)
                missing = {k for k in missing if k not in self.cache and k not in self.batch_errors}
        pending = sorted(missing)
        for start in range(0, len(pending), MAX_BATCH_REQUESTS):
            keys = pending[start:start + MAX_BATCH_REQUESTS]
            batch_id = await self._submit(keys, by_key)
            await self._collect(batch_id, keys)
        # Everything answered is now cached: the online runner reads it back (no calls), repairs
        # unparseable replies, and accounts usage. Keys the batch failed on are not retried online.
        results = await self.runner.run([r for r, k in zip(requests, keys_of) if k not in self.batch_errors], parser,
                                        bought_now=frozenset(self.landed))
        failed = [CallResult(request=r, key=k, error=self.batch_errors[k], attempts=1)
                  for r, k in zip(requests, keys_of) if k in self.batch_errors]
        for result in failed:
            self.runner.ledger.add(result)
        merged = {id(r.request): r for r in (*results, *failed)}
        return [merged[id(r)] for r in requests]

    # ------------------------------------------------------------------ submit / collect

    async def _submit(self, keys: list[str], by_key: dict[str, LLMRequest]) -> str:
        provider = self.provider
        try:
            if isinstance(provider, OpenAIProvider):
                lines = [json.dumps({"custom_id": k, "method": "POST", "url": "/v1/chat/completions",
                                     "body": provider.batch_body(by_key[k])}) for k in keys]
                upload = await provider.client.files.create(
                    file=("radcorpora-batch.jsonl", io.BytesIO("\n".join(lines).encode()), "application/jsonl"),
                    purpose="batch")
                batch = await provider.client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                             completion_window="24h")
            else:
                assert isinstance(provider, AnthropicProvider)
                batch = await provider.client.messages.batches.create(
                    requests=[{"custom_id": k, "params": provider.batch_body(by_key[k])} for k in keys])
        except (provider._sdk.OpenAIError if isinstance(provider, OpenAIProvider) else provider._sdk.AnthropicError) as exc:
            raise _sdk_error(exc, provider._sdk) from None
        self.cache.record_batch(batch.id, provider.name, provider.endpoint, provider.model, keys, "submitted")
        self.log(f"submitted batch {batch.id} ({len(keys)} requests)")
        return batch.id

    async def _collect(self, batch_id: str, keys: list[str]) -> None:
        provider = self.provider
        deadline = time.monotonic() + self.max_wait_s
        while True:
            if isinstance(provider, OpenAIProvider):
                batch = await provider.client.batches.retrieve(batch_id)
                done = batch.status in OPENAI_DONE
            else:
                batch = await provider.client.messages.batches.retrieve(batch_id)
                done = batch.processing_status == "ended"
            if done:
                break
            if time.monotonic() > deadline:
                raise LLMError("batch", f"batch {batch_id} not finished after {self.max_wait_s:g} s; rerun to keep waiting")
            await asyncio.sleep(self.poll_interval_s)
        if isinstance(provider, OpenAIProvider):
            entries = await self._openai_entries(batch)
            status = batch.status
        else:
            entries = [entry.model_dump() async for entry in await provider.client.messages.batches.results(batch_id)]
            status = "ended"
        seen = set()
        for entry in entries:
            key = entry.get("custom_id")
            if key not in keys:
                continue
            seen.add(key)
            self._land(key, entry)
        for key in set(keys) - seen:
            self.batch_errors[key] = LLMError("batch", f"batch {batch_id} ({status}) returned no result for this request")
        self.cache.record_batch(batch_id, provider.name, provider.endpoint, provider.model, keys, "collected",
                                {"status": status})

    async def _openai_entries(self, batch: Any) -> list[dict[str, Any]]:
        client = self.provider.client  # type: ignore[attr-defined]
        entries: list[dict[str, Any]] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            entries.extend(json.loads(line) for line in content.text.splitlines() if line.strip())
        return entries

    def _land(self, key: str, entry: dict[str, Any]) -> None:
        provider = self.provider
        try:
            if isinstance(provider, OpenAIProvider):
                response = entry.get("response") or {}
                if entry.get("error") or response.get("status_code") != 200:
                    detail = entry.get("error") or (response.get("body") or {}).get("error")
                    raise LLMError("batch", f"batch item failed: HTTP {response.get('status_code')}: {detail}")
                answer = provider.parse_reply(response["body"], batch=True)
            else:
                result = entry.get("result") or {}
                if result.get("type") != "succeeded":
                    raise LLMError("batch", f"batch item {result.get('type')}: {result.get('error')}")
                answer = provider.parse_reply(result["message"], batch=True)
        except LLMError as exc:
            if exc.billed is not None:
                self.runner.meter.paid(self._stage(key), provider.name, provider.model, exc.billed, batch=True,
                                       kind="billed_error")
            self.batch_errors[key] = exc
            return
        # paid when it lands (a batch resumed from an earlier run is paid by the run that collects it)
        answer.cost_usd = self.runner.meter.paid(self._stage(key), provider.name, provider.model, answer.usage,
                                                 batch=True)
        self.cache.put(key, answer, "batch")
        self.landed.add(key)

    def _stage(self, key: str) -> str:
        request = self.by_key.get(key)
        return request.stage if request is not None else "batch"
