"""What one LLM call asks and what it answered, provider-neutral.

A request is rendered to a canonical JSON form whose hash is the cache key: messages (images by
content hash, not bytes), provider, model, sampling parameters and the expected output format;
the endpoint only with cache scope "endpoint" (by default a local server restarted on another
port answers from the cache; the endpoint stays in the build's provenance). The row it belongs to (`id`) and its licence class are not part of the key, so the same
question asked for two rows, or in another build, is paid once.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from radcorpora.schemas.common import LicenceClass


class TextPart(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """Image bytes sent with a message; keyed and logged by hash only."""

    model_config = ConfigDict(frozen=True)
    type: Literal["image"] = "image"
    media_type: str  # image/png, image/jpeg, ...
    data: bytes = Field(repr=False)
    width: int | None = None
    height: int | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


Part = TextPart | ImagePart


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: Literal["user", "assistant"]
    parts: tuple[TextPart | ImagePart, ...]

    @classmethod
    def user(cls, *parts: Part | str) -> Message:
        return cls(role="user", parts=tuple(TextPart(text=p) if isinstance(p, str) else p for p in parts))

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls(role="assistant", parts=(TextPart(text=text),))

    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if isinstance(p, TextPart))


class Sampling(BaseModel):
    """Sampling parameters; None means the provider default (and is left out of the request)."""

    model_config = ConfigDict(frozen=True)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = 2048
    seed: int | None = None


class OutputFormat(BaseModel):
    """How the reply is parsed: free text, tagged sections, or JSON for a named schema."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["text", "tags", "json"] = "text"
    tags: tuple[str, ...] = ()
    schema_name: str | None = None
    json_schema: dict[str, Any] | None = None


class LLMRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str  # the row / item this call is for (not part of the cache key)
    stage: str  # e.g. "cot", "verify"; for ledgers and usage
    system: str | None = None
    messages: tuple[Message, ...]
    sampling: Sampling = Sampling()
    output: OutputFormat = OutputFormat()
    licence_class: LicenceClass = "public"
    prompt_id: str | None = None
    hints: dict[str, str] = Field(default_factory=dict)  # read only by the offline stand-in; not in the key

    def canonical(self, provider: str, endpoint: str | None, model: str) -> dict[str, Any]:
        """The request as the cache sees it: image bytes replaced by their hashes. `endpoint` None:
        keyed on the model, not where it is served (cache scope "model", the default)."""
        where = {} if endpoint is None else {"endpoint": endpoint}
        return {
            "provider": provider,
            **where,
            "model": model,
            "system": self.system,
            "messages": [
                {"role": m.role, "parts": [
                    {"type": "text", "text": p.text} if isinstance(p, TextPart)
                    else {"type": "image", "media_type": p.media_type, "sha256": p.sha256}
                    for p in m.parts]}
                for m in self.messages
            ],
            "sampling": self.sampling.model_dump(exclude_none=True),
            "output": self.output.model_dump(exclude_none=True),
        }

    def cache_key(self, provider: str, endpoint: str | None, model: str) -> str:
        text = json.dumps(self.canonical(provider, endpoint, model), sort_keys=True, ensure_ascii=False,
                          separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def images(self) -> list[ImagePart]:
        return [p for m in self.messages for p in m.parts if isinstance(p, ImagePart)]

    def text_chars(self) -> int:
        return len(self.system or "") + sum(len(m.text()) for m in self.messages)


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0  # part of output_tokens where the provider reports it
    cached_input_tokens: int = 0  # part of input_tokens served from the provider's prompt cache

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in Usage.model_fields})


class LLMResponse(BaseModel):
    """One answer. `reasoning` holds a reasoning model's separate thinking, never mixed into `content`."""

    content: str
    reasoning: str | None = None
    model: str
    provider: str
    finish_reason: str | None = None
    usage: Usage = Usage()
    batch: bool = False  # answered through a batch API (priced at the batch rate)
    # What this reply cost when it was bought (set by the runner from the price table before the
    # answer is cached; None: unpriced, or cached by an older version, then priced at today's rates).
    cost_usd: float | None = None
