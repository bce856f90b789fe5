"""Providers: one class per wire format, each turning an LLMRequest into its SDK call.

- `openai:MODEL`    Chat Completions through the openai SDK; any OpenAI-compatible server (vLLM,
                    DeepSeek, ...) by `OPENAI_BASE_URL` or `base_url`.
- `azure:DEPLOYMENT` Azure OpenAI (`AZURE_OPENAI_ENDPOINT`, `AZURE_OPENAI_API_KEY`, `OPENAI_API_VERSION`).
- `anthropic:MODEL` Messages through the anthropic SDK (`ANTHROPIC_BASE_URL` honoured by the SDK).
- `offline[:NAME]`  NOT an LLM: a deterministic stand-in for demos and tests. Each builder
                    registers what it answers for its stages; it never touches the network.

The SDKs' own retries are switched off (`max_retries=0`): the runner owns retries, so they are
counted, bounded and paced, and a 429 is never retried twice over (the SDK would also read
retry-after-ms, sleeping outside our pacer).
Keys are read from the environment by the SDKs and never stored on our objects or in errors.

One SDK client per provider object, with a connection pool sized to the runner's concurrency and,
where aiohttp is installed, the SDK's aiohttp transport (`http_client="auto"`): against a fast local
server (vLLM) the client's CPU is the bottleneck, and the default httpx pool costs about twice as
much per request. Online calls go through the SDK's own request path (auth, headers, base URL,
Azure deployment routing, error classes) with the body we render and the reply read as JSON, so
the SDK does not re-transform the body or re-validate the reply into its typed models; the body is
the same one `batch_body` puts in a batch file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any, Literal, Protocol

from radcorpora.llm.errors import (
    LLMError,
    ProviderConfigError,
    parse_retry_after,
    retry_after_is_exact,
)
from radcorpora.llm.request import ImagePart, LLMRequest, LLMResponse, TextPart, Usage

DEFAULT_TIMEOUT_S = 600.0
HttpClientKind = Literal["auto", "aiohttp", "httpx"]


class Provider(Protocol):
    name: str
    model: str
    endpoint: str
    approved_for_credentialed: bool

    async def complete(self, request: LLMRequest) -> LLMResponse: ...

    def batch_body(self, request: LLMRequest) -> dict[str, Any]: ...

    def parse_reply(self, body: dict[str, Any], *, batch: bool = False) -> LLMResponse: ...

    async def close(self) -> None: ...


def _sdk_error(exc: Exception, sdk: Any) -> LLMError:
    """Map an SDK exception to our classification, keeping Retry-After."""
    if isinstance(exc, sdk.APITimeoutError):
        return LLMError("timeout", f"request timed out: {exc}")
    if isinstance(exc, sdk.APIConnectionError):
        return LLMError("connection", f"connection failed: {exc}")
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        headers = getattr(exc.response, "headers", None)
        message = f"HTTP {status}: {exc.message}"
        if status == 429:
            return LLMError("rate_limit", message, status=status, retry_after=parse_retry_after(headers),
                            retry_after_exact=retry_after_is_exact(headers))
        if status in (401, 403):
            return LLMError("auth", message, status=status)
        if status >= 500 or status in (408, 409, 529):
            return LLMError("server", message, status=status, retry_after=parse_retry_after(headers))
        return LLMError("client", message, status=status)
    if isinstance(exc, sdk.APIResponseValidationError):
        return LLMError("malformed", f"reply does not match the API schema: {exc}")
    raise exc


def _http_client(sdk: Any, kind: HttpClientKind, max_connections: int | None) -> Any:
    """The SDK's HTTP client: aiohttp transport when asked for (or, for "auto", when installed),
    else the SDK's default httpx client; pool sized to `max_connections` when given."""
    options: dict[str, Any] = {}
    limits = getattr(sdk, "DEFAULT_CONNECTION_LIMITS", None)
    if max_connections is not None and limits is not None:
        options["limits"] = type(limits)(max_connections=max_connections, max_keepalive_connections=max_connections,
                                         keepalive_expiry=limits.keepalive_expiry)
    if kind in ("auto", "aiohttp"):
        aiohttp_client = getattr(sdk, "DefaultAioHttpClient", None)
        try:
            if aiohttp_client is None:
                raise RuntimeError(f"{sdk.__name__} {sdk.__version__} has no aiohttp transport")
            return aiohttp_client(**options)
        except (RuntimeError, ImportError) as exc:
            if kind == "aiohttp":
                raise ProviderConfigError(f"http_client 'aiohttp' is not available: {exc}") from None
    return sdk.DefaultAsyncHttpxClient(**options)


def _data_url(part: ImagePart) -> str:
    return f"data:{part.media_type};base64,{part.base64()}"


class OpenAIProvider:
    """Chat Completions (api.openai.com, Azure, vLLM, DeepSeek, any compatible server)."""

    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, approved_for_credentialed: bool = False,
                 azure: bool = False, max_connections: int | None = None, http_client: HttpClientKind = "auto"):
        import openai

        self._sdk = openai
        self.model = model
        self.approved_for_credentialed = approved_for_credentialed
        if azure:
            self.name = "azure"
            endpoint = base_url or os.environ.get("AZURE_OPENAI_ENDPOINT")
            if not endpoint:
                raise ProviderConfigError("azure: set AZURE_OPENAI_ENDPOINT (and AZURE_OPENAI_API_KEY, OPENAI_API_VERSION)")
            if not (api_key or os.environ.get("AZURE_OPENAI_API_KEY")):
                raise ProviderConfigError("azure: AZURE_OPENAI_API_KEY is not set")
            self.client = openai.AsyncAzureOpenAI(azure_endpoint=endpoint, api_key=api_key, timeout=timeout,
                                                  max_retries=0,
                                                  api_version=os.environ.get("OPENAI_API_VERSION", "2024-10-21"),
                                                  http_client=_http_client(openai, http_client, max_connections))
            self.endpoint = endpoint_for("azure", endpoint)
        else:
            if not (api_key or os.environ.get("OPENAI_API_KEY")):
                raise ProviderConfigError("openai: OPENAI_API_KEY is not set (use any non-empty value for a "
                                          "local OpenAI-compatible server that needs no key)")
            self.endpoint = endpoint_for("openai", base_url)
            self.client = openai.AsyncOpenAI(api_key=api_key, base_url=self.endpoint, timeout=timeout, max_retries=0,
                                             http_client=_http_client(openai, http_client, max_connections))
        # api.openai.com reasoning models refuse `max_tokens`; compatible servers may not know the new name.
        self._max_tokens_field = "max_completion_tokens" if "api.openai.com" in self.endpoint or azure else "max_tokens"

    def batch_body(self, request: LLMRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        for message in request.messages:
            if all(isinstance(p, TextPart) for p in message.parts):
                messages.append({"role": message.role, "content": message.text()})
                continue
            content = [{"type": "text", "text": p.text} if isinstance(p, TextPart)
                       else {"type": "image_url", "image_url": {"url": _data_url(p)}} for p in message.parts]
            messages.append({"role": message.role, "content": content})
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                self._max_tokens_field: request.sampling.max_tokens}
        for field in ("temperature", "top_p", "seed"):
            value = getattr(request.sampling, field)
            if value is not None:
                body[field] = value
        if request.output.kind == "json":
            body["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": request.output.schema_name or "reply",
                                                        "schema": request.output.json_schema}}
                if request.output.json_schema else {"type": "json_object"})
        return body

    async def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            body = await self.client.post("/chat/completions", cast_to=object, body=self.batch_body(request))
        except self._sdk.OpenAIError as exc:
            raise _sdk_error(exc, self._sdk) from None
        return self.parse_reply(body)

    @staticmethod
    def _usage(body: Any) -> Usage | None:
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return None
        completion_details = usage.get("completion_tokens_details") or {}
        prompt_details = usage.get("prompt_tokens_details") or {}
        return Usage(input_tokens=usage.get("prompt_tokens") or 0,
                     output_tokens=usage.get("completion_tokens") or 0,
                     reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
                     cached_input_tokens=prompt_details.get("cached_tokens") or 0)

    def parse_reply(self, body: dict[str, Any], *, batch: bool = False) -> LLMResponse:
        try:
            choice = body["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise LLMError("malformed", f"reply has no choices[0].message: {str(body)[:200]}",
                           billed=self._usage(body)) from None
        content = message.get("content")
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        usage = self._usage(body)
        if content is None or not isinstance(content, str):
            raise LLMError("malformed", f"reply has no text content (finish_reason={choice.get('finish_reason')!r})",
                           billed=usage)
        return LLMResponse(
            content=content,
            reasoning=reasoning if isinstance(reasoning, str) else None,
            model=body.get("model") or self.model,
            provider=self.name,
            finish_reason=choice.get("finish_reason"),
            usage=usage or Usage(),
            batch=batch,
        )

    async def close(self) -> None:
        await self.client.close()


class AnthropicProvider:
    """Anthropic Messages; thinking blocks go to `reasoning`, text blocks to `content`."""

    name = "anthropic"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, approved_for_credentialed: bool = False,
                 max_connections: int | None = None, http_client: HttpClientKind = "auto"):
        import anthropic

        self._sdk = anthropic
        if not (api_key or os.environ.get("ANTHROPIC_API_KEY")):
            raise ProviderConfigError("anthropic: ANTHROPIC_API_KEY is not set")
        self.model = model
        self.approved_for_credentialed = approved_for_credentialed
        self.endpoint = endpoint_for("anthropic", base_url)
        self.client = anthropic.AsyncAnthropic(api_key=api_key, base_url=self.endpoint, timeout=timeout, max_retries=0,
                                               http_client=_http_client(anthropic, http_client, max_connections))

    def batch_body(self, request: LLMRequest) -> dict[str, Any]:
        messages = []
        for message in request.messages:
            content = [{"type": "text", "text": p.text} if isinstance(p, TextPart) else
                       {"type": "image", "source": {"type": "base64", "media_type": p.media_type, "data": p.base64()}}
                       for p in message.parts]
            messages.append({"role": message.role, "content": content})
        body: dict[str, Any] = {"model": self.model, "max_tokens": request.sampling.max_tokens, "messages": messages}
        if request.system:
            body["system"] = request.system
        for field in ("temperature", "top_p"):
            value = getattr(request.sampling, field)
            if value is not None:
                body[field] = value
        return body

    async def complete(self, request: LLMRequest) -> LLMResponse:
        # The rendered body goes as is (sampling fields included: newer SDKs no longer list them
        # as arguments, while the models that accept them still read them from the body).
        try:
            body = await self.client.post("/v1/messages", cast_to=object, body=self.batch_body(request))
        except self._sdk.AnthropicError as exc:
            raise _sdk_error(exc, self._sdk) from None
        return self.parse_reply(body)

    @staticmethod
    def _usage(body: Any) -> Usage | None:
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return None
        cache_read = usage.get("cache_read_input_tokens") or 0
        cache_write = usage.get("cache_creation_input_tokens") or 0
        return Usage(input_tokens=(usage.get("input_tokens") or 0) + cache_read + cache_write,
                     output_tokens=usage.get("output_tokens") or 0,
                     cached_input_tokens=cache_read)

    def parse_reply(self, body: dict[str, Any], *, batch: bool = False) -> LLMResponse:
        blocks = body.get("content") if isinstance(body, dict) else None
        if not isinstance(blocks, list):
            raise LLMError("malformed", f"reply has no content blocks: {str(body)[:200]}", billed=self._usage(body))
        usage = self._usage(body)
        if not any(isinstance(b, dict) and b.get("type") == "text" for b in blocks):
            raise LLMError("malformed", f"reply has no text block (stop_reason={body.get('stop_reason')!r})",
                           billed=usage)
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        thinking = "".join(b.get("thinking", "") for b in blocks if b.get("type") == "thinking")
        return LLMResponse(
            content=text,
            reasoning=thinking or None,
            model=body.get("model") or self.model,
            provider=self.name,
            finish_reason=body.get("stop_reason"),
            usage=usage or Usage(),
            batch=batch,
        )

    async def close(self) -> None:
        await self.client.close()


OfflineResponder = Callable[[LLMRequest], str]


def _echo(request: LLMRequest) -> str:
    digest = hashlib.sha256(json.dumps(request.canonical("offline", "", ""), sort_keys=True).encode()).hexdigest()
    return f"offline reply {digest[:12]}"


class OfflineProvider:
    """A deterministic stand-in (NOT an LLM) for demos and tests: answers by a function per stage.

    Replies depend only on the request, so builds stay byte-reproducible; token counts are a
    characters/4 approximation so usage reports have something to add up; the price is zero.
    """

    name = "offline"
    endpoint = "offline"
    approved_for_credentialed = True  # nothing leaves the machine

    def __init__(self, model: str = "stand-in", responders: dict[str, OfflineResponder] | None = None):
        self.model = model
        self.responders = dict(responders or {})

    def register(self, stage: str, responder: OfflineResponder) -> None:
        self.responders[stage] = responder

    def batch_body(self, request: LLMRequest) -> dict[str, Any]:
        raise LLMError("client", "the offline provider has no batch API; run without --batch")

    async def complete(self, request: LLMRequest) -> LLMResponse:
        text = self.responders.get(request.stage, _echo)(request)
        return LLMResponse(content=text, model=self.model, provider=self.name, finish_reason="stop",
                           usage=Usage(input_tokens=request.text_chars() // 4 + 85 * len(request.images()),
                                       output_tokens=len(text) // 4))

    def parse_reply(self, body: dict[str, Any], *, batch: bool = False) -> LLMResponse:
        return LLMResponse.model_validate(body)

    async def close(self) -> None:
        return None


def endpoint_for(provider: str, base_url: str | None = None) -> str:
    """The endpoint a provider would call (part of every cache key), without creating a client."""
    if provider == "offline":
        return "offline"
    if provider == "anthropic":
        return (base_url or os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com").rstrip("/")
    if provider == "azure":
        return (base_url or os.environ.get("AZURE_OPENAI_ENDPOINT") or "").rstrip("/")
    return (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")


def parse_llm_spec(spec: str) -> tuple[str, str]:
    """'openai:gpt-4o' -> ('openai', 'gpt-4o'); 'offline' -> ('offline', 'stand-in')."""
    provider, _, model = spec.partition(":")
    provider = provider.strip().lower()
    if provider == "offline":
        return provider, model or "stand-in"
    if provider not in ("openai", "anthropic", "azure"):
        raise ProviderConfigError(f"unknown provider {provider!r} in --llm {spec!r}; use openai:MODEL, "
                                  "anthropic:MODEL, azure:DEPLOYMENT or offline")
    if not model:
        raise ProviderConfigError(f"--llm {spec!r} names no model (e.g. openai:gpt-4o)")
    return provider, model


def make_provider(spec: str, *, approved_for_credentialed: bool = False, timeout: float = DEFAULT_TIMEOUT_S,
                  base_url: str | None = None, max_connections: int | None = None,
                  http_client: HttpClientKind = "auto") -> Provider:
    """`max_connections`: the HTTP pool size (the runner's concurrency)."""
    provider, model = parse_llm_spec(spec)
    if provider == "offline":
        return OfflineProvider(model)
    if provider == "anthropic":
        return AnthropicProvider(model, base_url=base_url, timeout=timeout,
                                 approved_for_credentialed=approved_for_credentialed,
                                 max_connections=max_connections, http_client=http_client)
    return OpenAIProvider(model, base_url=base_url, timeout=timeout, azure=provider == "azure",
                          approved_for_credentialed=approved_for_credentialed,
                          max_connections=max_connections, http_client=http_client)
