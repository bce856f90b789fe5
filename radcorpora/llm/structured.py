"""Turning reply text into values: tagged sections or JSON validated by a pydantic model.

A parser raises ParseError with a message fit to send back to the model in the one repair
attempt the runner makes.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class ParseError(ValueError):
    """The reply is not in the required format; the message says what is wrong."""


class Parser(Protocol[T]):  # type: ignore[misc]
    """Reads a reply; may also offer `for_request(request) -> Parser` when its checks depend on
    the request (the runner then parses each reply, and its one repair, with that parser)."""

    def __call__(self, text: str) -> T: ...

    def format_hint(self) -> str: ...


class TagParser:
    """`<think>...</think><answer>...</answer>`-style replies: each tag once, in order, non-empty,
    nothing but whitespace outside the tags."""

    def __init__(self, tags: tuple[str, ...] = ("think", "answer")):
        self.tags = tags

    def format_hint(self) -> str:
        return "".join(f"<{t}>...</{t}>" for t in self.tags)

    def __call__(self, text: str) -> dict[str, str]:
        found: dict[str, str] = {}
        position = 0
        stripped = text.strip()
        for tag in self.tags:
            opens = [m.start() for m in re.finditer(f"<{tag}>", stripped)]
            closes = [m.start() for m in re.finditer(f"</{tag}>", stripped)]
            if len(opens) != 1 or len(closes) != 1:
                raise ParseError(f"expected exactly one <{tag}> and one </{tag}>, found {len(opens)} and {len(closes)}")
            start, end = opens[0] + len(tag) + 2, closes[0]
            if opens[0] < position or end < start:
                raise ParseError(f"tags out of order: the sections must come as {self.format_hint()}")
            between = stripped[position:opens[0]]
            if between.strip():
                raise ParseError(f"text outside the tags before <{tag}>: {between.strip()[:60]!r}")
            body = stripped[start:end].strip()
            if not body:
                raise ParseError(f"<{tag}> is empty")
            found[tag] = body
            position = end + len(tag) + 3
        if stripped[position:].strip():
            raise ParseError(f"text after </{self.tags[-1]}>: {stripped[position:].strip()[:60]!r}")
        return found


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@functools.cache
def json_schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema, made once per model (pydantic builds it anew on every call: a
    tenth of a millisecond, per request of a stage that asks for structured output)."""
    return model.model_json_schema()


class JsonParser(Generic[M]):
    """A JSON object (bare or in a ``` fence) validated by a pydantic model."""

    def __init__(self, model: type[M]):
        self.model = model

    def format_hint(self) -> str:
        return f"a single JSON object with the fields {list(self.model.model_fields)}"

    def json_schema(self) -> dict[str, Any]:
        return json_schema_of(self.model)

    def __call__(self, text: str) -> M:
        body = text.strip()
        fenced = _FENCE.match(body)
        if fenced:
            body = fenced.group(1)
        if not body.startswith("{"):
            start, end = body.find("{"), body.rfind("}")
            if start < 0 or end < start:
                raise ParseError("no JSON object in the reply")
            body = body[start:end + 1]
        try:
            return self.model.model_validate(json.loads(body))
        except json.JSONDecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ParseError(f"JSON does not fit: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
