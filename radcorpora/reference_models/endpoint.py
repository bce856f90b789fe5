"""A served model (vLLM, SGLang, TGI, any OpenAI-compatible server) as an evaluation `Generator`:
the same LLaVA histories the in-process model is asked, sent as chat-completions messages whose
`<image>` placeholders become image parts (PNG, base64 data URLs) in the same places, greedy
(temperature 0), answered concurrently. Nothing is loaded here: no torch needed."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

IMAGE = "<image>"


class EndpointError(RuntimeError):
    """The endpoint could not be reached or refused a request; the message says which and why."""


def data_url(image: Any) -> str:
    """A PIL image as a PNG data URL (lossless: the server sees the pixels the in-process model sees)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(history: Sequence[dict[str, str]], images: Sequence[Any] | None) -> list[dict[str, Any]]:
    """LLaVA turns -> chat-completions messages, split exactly as the in-process chat messages are
    (collate.to_messages): each `<image>` of a human turn an image part where it stands, the text
    around it trimmed of the newline that joins it; images None: withheld (placeholders dropped)."""
    messages: list[dict[str, Any]] = []
    pool = list(images or [])
    for turn in history:
        role = "user" if turn["from"] == "human" else "assistant"
        parts: list[dict[str, Any]] = []
        for i, piece in enumerate(turn["value"].split(IMAGE)):
            if i > 0 and images is not None and pool:
                parts.append({"type": "image_url", "image_url": {"url": data_url(pool.pop(0))}})
            text = piece.strip("\n") if i > 0 else piece.rstrip("\n")
            if text:
                parts.append({"type": "text", "text": text})
        if role == "assistant":  # plain text: every server takes it
            messages.append({"role": role, "content": "".join(p["text"] for p in parts if p["type"] == "text")})
        else:
            messages.append({"role": role, "content": parts or [{"type": "text", "text": ""}]})
    return messages


class EndpointGenerator:
    """Greedy answers from `served_model` behind `base_url` (".../v1"). `api_key`: default the
    OPENAI_API_KEY environment variable, else "EMPTY" (what vLLM accepts when started without a key)."""

    def __init__(self, base_url: str, served_model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout_s: float = 300.0, max_retries: int = 2):
        from openai import OpenAI

        if not base_url.startswith(("http://", "https://")):
            raise EndpointError(f"--endpoint {base_url!r}: expected an http(s) URL such as http://localhost:8000/v1")
        self.base_url, self.served_model, self.concurrency = base_url.rstrip("/"), served_model, max(1, concurrency)
        self.name = f"endpoint {self.base_url} ({served_model})"
        self.client = OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                             timeout=timeout_s, max_retries=max_retries)

    def _one(self, messages: list[dict[str, Any]], max_new_tokens: int) -> str:
        import openai

        try:
            reply = self.client.chat.completions.create(model=self.served_model, messages=messages,  # type: ignore[arg-type]
                                                        max_tokens=max_new_tokens, temperature=0.0)
        except openai.APIConnectionError as exc:
            raise EndpointError(f"{self.base_url}: cannot connect ({exc})") from None
        except openai.APIStatusError as exc:
            raise EndpointError(f"{self.base_url}: HTTP {exc.status_code} for model {self.served_model!r}: "
                                f"{str(exc.message)[:300]}") from None
        if not reply.choices:
            raise EndpointError(f"{self.base_url}: a reply with no choices")
        return (reply.choices[0].message.content or "").strip()

    def answer(self, histories: Sequence[Sequence[dict[str, str]]], images: Sequence[Sequence[Any] | None],
               max_new_tokens: int) -> list[str]:
        batch = [chat_messages(h, p) for h, p in zip(histories, images)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batch) or 1)) as pool:
            return list(pool.map(lambda m: self._one(m, max_new_tokens), batch))
