"""A local HTTP server speaking the providers' wire formats, for tests, benchmarks and dry runs.

It answers OpenAI Chat Completions, Files and Batches, and Anthropic Messages and Message Batches,
so the real SDK clients are exercised end to end on 127.0.0.1. Faults are injected per request
(429 with Retry-After, 5xx, slow replies, malformed bodies); an RPM limit (paced bucket) or a
per-second limit (sliding window, 429 with Retry-After and optionally retry-after-ms) can be
enforced; in-flight and total counts are kept for assertions.
This is test equipment, not a model: replies come from a `responder` function.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


# (model, system, messages as sent) -> (content, reasoning or None)
class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # many concurrent clients connect at once; the default backlog of 5 resets them
    daemon_threads = True


Responder = Callable[[str, str | None, list[dict[str, Any]]], tuple[str, str | None]]


def echo_responder(model: str, system: str | None, messages: list[dict[str, Any]]) -> tuple[str, str | None]:
    last = messages[-1]["content"]
    text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if isinstance(p, dict))
    return f"echo: {text[:200]}", None


@dataclass
class Fault:
    """What to do instead of answering one request: an HTTP status (with headers), a delay before
    answering, or a 200 reply whose body is not what the API promises."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    malformed: bool = False  # a body of the wrong shape, with no usage: nothing billed
    empty: bool = False  # a well-formed, billed reply with no text (cut off at max_tokens)


@dataclass
class Billed:
    """One reply the server charged for, with the token counts it reported."""

    api: str  # "openai" | "anthropic"
    model: str
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int = 0
    batch: bool = False
    text: bool = True  # False: the reply had no text (an `empty` fault)


class FakeProviderServer:
    def __init__(self, responder: Responder = echo_responder, latency_s: float = 0.0, rpm_limit: int | None = None,
                 batch_polls_before_done: int = 1, rps_limit: int | None = None, retry_after_ms: bool = False):
        """`rpm_limit`: a token bucket of one second's worth refilled at RPM/60 (429 `retry-after: 1`).
        `rps_limit`: at most that many admitted requests in any one-second span (a sliding window);
        its 429s say `retry-after` in whole seconds, rounded up as HTTP has it, and with
        `retry_after_ms` also `retry-after-ms`, the exact wait until a slot frees."""
        self.responder = responder
        self.latency_s = latency_s
        self.rpm_limit = rpm_limit
        self.rps_limit = rps_limit
        self.retry_after_ms = retry_after_ms
        self._admitted: deque[float] = deque()  # admission times within the last second (rps_limit)
        self.batch_polls_before_done = batch_polls_before_done
        self.faults: deque[Fault] = deque()
        self.lock = threading.Lock()
        self.calls = 0  # completions / messages calls answered or refused
        self.answered = 0
        self.refused_429 = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.request_bodies: list[dict[str, Any]] = []
        self.billed: list[Billed] = []  # every reply charged for, online and batch, in order
        self.call_times: list[float] = []
        self.admit_times: list[float] = []  # calls not refused by a limit
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._bucket_level = max(1.0, (rpm_limit or 0) / 60.0)
        self._bucket_stamp = time.monotonic()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    def __enter__(self) -> FakeProviderServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ------------------------------------------------------------------ behaviour

    def _admit(self) -> tuple[bool, dict[str, str]]:
        """(admitted, headers of the 429 if not): the per-second window, then the RPM bucket."""
        if self.rps_limit:
            now = time.monotonic()
            while self._admitted and self._admitted[0] <= now - 1.0:
                self._admitted.popleft()
            if len(self._admitted) >= self.rps_limit:
                wait = self._admitted[0] + 1.0 - now
                headers = {"retry-after": str(max(1, math.ceil(wait)))}
                if self.retry_after_ms:
                    headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                return False, headers
            self._admitted.append(now)
        return (True, {}) if self._admit_rpm() else (False, {"retry-after": "1"})

    def _admit_rpm(self) -> bool:
        """Provider-style pacing: a bucket of one second's worth of requests, refilled at RPM/60."""
        if not self.rpm_limit:
            return True
        rate = self.rpm_limit / 60.0
        capacity = max(1.0, rate)
        now = time.monotonic()
        self._bucket_level = min(capacity, self._bucket_level + (now - self._bucket_stamp) * rate)
        self._bucket_stamp = now
        if self._bucket_level >= 1.0:
            self._bucket_level -= 1.0
            return True
        return False

    def billed_totals(self, model: str | None = None, batch: bool | None = None) -> dict[str, int]:
        """Replies charged for and their tokens, as this server counted them."""
        with self.lock:
            chosen = [b for b in self.billed
                      if (model is None or b.model == model) and (batch is None or b.batch == batch)]
        return {"replies": len(chosen), "input_tokens": sum(b.input_tokens for b in chosen),
                "output_tokens": sum(b.output_tokens for b in chosen),
                "reasoning_tokens": sum(b.reasoning_tokens for b in chosen), "batch": sum(b.batch for b in chosen)}

    def _bill(self, kind: str, model: str, reply: dict[str, Any], batch: bool, text: bool) -> None:
        usage = reply["usage"]
        if kind == "openai":
            entry = Billed(kind, model, usage["prompt_tokens"], usage["completion_tokens"],
                           usage["completion_tokens_details"]["reasoning_tokens"], batch, text)
        else:
            entry = Billed(kind, model, usage["input_tokens"], usage["output_tokens"], 0, batch, text)
        with self.lock:
            self.billed.append(entry)

    def _answer(self, kind: str, body: dict[str, Any], batch: bool = False) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            self.calls += 1
            self.request_bodies.append(body)
            fault = self.faults.popleft() if self.faults else None
            admitted, refusal = self._admit()
            self.call_times.append(time.monotonic())
            if not admitted:
                self.refused_429 += 1
                return 429, refusal, {"error": {"type": "rate_limit_error", "message": "rate limit"}}
            self.admit_times.append(self.call_times[-1])
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay = self.latency_s + (fault.delay_s if fault else 0.0)
            if delay:
                time.sleep(delay)
            if fault and fault.status:
                if fault.status == 429:
                    with self.lock:
                        self.refused_429 += 1
                return fault.status, fault.headers, {"error": {"type": "error", "message": f"injected {fault.status}"}}
            if fault and fault.malformed:
                return 200, {}, {"unexpected": "shape"}
            reply = self._reply(kind, body)
            if fault and fault.empty:
                if kind == "openai":
                    reply["choices"][0]["message"]["content"] = None
                    reply["choices"][0]["finish_reason"] = "length"
                else:
                    reply["content"] = [b for b in reply["content"] if b["type"] != "text"]
                    reply["stop_reason"] = "max_tokens"
                self._bill(kind, body.get("model", ""), reply, batch, text=False)
                return 200, {}, reply
            self._bill(kind, body.get("model", ""), reply, batch, text=True)
            with self.lock:
                self.answered += 1
            return 200, {}, reply
        finally:
            with self.lock:
                self.in_flight -= 1

    def _reply(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model", "")
        if kind == "openai":
            messages = body["messages"]
            system = next((m["content"] for m in messages if m["role"] == "system"), None)
            content, reasoning = self.responder(model, system, [m for m in messages if m["role"] != "system"])
            prompt_tokens = len(json.dumps(messages)) // 4
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if reasoning is not None:
                message["reasoning_content"] = reasoning
            reasoning_tokens = len(reasoning or "") // 4
            return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                    "model": model, "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content) // 4 + reasoning_tokens,
                              "total_tokens": prompt_tokens + len(content) // 4 + reasoning_tokens,
                              "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
                              "prompt_tokens_details": {"cached_tokens": 0}}}
        content, reasoning = self.responder(model, body.get("system"), body["messages"])
        blocks = ([{"type": "thinking", "thinking": reasoning, "signature": "fake"}] if reasoning else []) + [
            {"type": "text", "text": content}]
        return {"id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant", "model": model,
                "content": blocks, "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": len(json.dumps(body["messages"])) // 4,
                          "output_tokens": (len(content) + len(reasoning or "")) // 4}}

    # ------------------------------------------------------------------ batches

    def _openai_batch(self, batch_id: str) -> dict[str, Any]:
        batch = self.batches[batch_id]
        batch["polls"] += 1
        if batch["polls"] > self.batch_polls_before_done and batch["status"] != "completed":
            out, err = [], []
            for line in self.files[batch["input_file_id"]].decode().splitlines():
                item = json.loads(line)
                status, _, reply = self._answer("openai", item["body"], batch=True)
                entry = {"id": f"batch_req_{uuid.uuid4().hex[:8]}", "custom_id": item["custom_id"],
                         "response": {"status_code": status, "request_id": "req", "body": reply}, "error": None}
                (out if status == 200 else err).append(json.dumps(entry))
            batch["output_file_id"] = self._store_file("\n".join(out).encode()) if out else None
            batch["error_file_id"] = self._store_file("\n".join(err).encode()) if err else None
            batch["status"] = "completed"
            batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        return {k: v for k, v in batch.items() if k != "polls"}

    def _anthropic_batch(self, batch_id: str, poll: bool = True) -> dict[str, Any]:
        batch = self.batches[batch_id]
        if poll:
            batch["polls"] += 1
        if batch["polls"] > self.batch_polls_before_done and batch["processing_status"] != "ended":
            lines = []
            for item in batch["requests"]:
                status, _, reply = self._answer("anthropic", item["params"], batch=True)
                result = ({"type": "succeeded", "message": reply} if status == 200 else
                          {"type": "errored", "error": {"type": "error", "error": reply.get("error")}})
                lines.append(json.dumps({"custom_id": item["custom_id"], "result": result}))
            batch["results"] = "\n".join(lines).encode()
            batch["processing_status"] = "ended"
            batch["results_url"] = f"{self.base_url}/v1/messages/batches/{batch_id}/results"
            batch["ended_at"] = "2026-01-01T00:00:00Z"
        return {k: v for k, v in batch.items() if k not in ("polls", "requests", "results")}

    def _store_file(self, data: bytes) -> str:
        file_id = f"file-{uuid.uuid4().hex[:12]}"
        self.files[file_id] = data
        return file_id

    # ------------------------------------------------------------------ HTTP plumbing

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def _send(self, status: int, headers: dict[str, str], payload: Any, raw: bool = False) -> None:
                data = payload if raw else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/octet-stream" if raw else "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                raw = self._body()
                if path == "/v1/chat/completions":
                    self._send(*server._answer("openai", json.loads(raw)))
                elif path == "/v1/messages":
                    self._send(*server._answer("anthropic", json.loads(raw)))
                elif path == "/v1/files":
                    message = BytesParser().parsebytes(
                        f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode() + raw)
                    data = next(p.get_payload(decode=True) for p in message.get_payload()
                                if p.get_param("name", header="content-disposition") == "file")
                    file_id = server._store_file(data)
                    self._send(200, {}, {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                                         "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})
                elif path == "/v1/batches":
                    body = json.loads(raw)
                    batch_id = f"batch_{uuid.uuid4().hex[:12]}"
                    server.batches[batch_id] = {
                        "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
                        "completion_window": body["completion_window"], "status": "validating", "created_at": int(time.time()),
                        "output_file_id": None, "error_file_id": None, "polls": 0,
                        "request_counts": {"total": 0, "completed": 0, "failed": 0}}
                    self._send(200, {}, {k: v for k, v in server.batches[batch_id].items() if k != "polls"})
                elif path == "/v1/messages/batches":
                    body = json.loads(raw)
                    batch_id = f"msgbatch_{uuid.uuid4().hex[:12]}"
                    server.batches[batch_id] = {
                        "id": batch_id, "type": "message_batch", "processing_status": "in_progress", "polls": 0,
                        "request_counts": {"processing": len(body["requests"]), "succeeded": 0, "errored": 0,
                                           "canceled": 0, "expired": 0},
                        "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z", "ended_at": None,
                        "cancel_initiated_at": None, "archived_at": None, "results_url": None,
                        "requests": body["requests"]}
                    self._send(200, {}, server._anthropic_batch(batch_id, poll=False))
                else:
                    self._send(404, {}, {"error": {"message": f"no route {path}"}})

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path.startswith("/v1/files/") and path.endswith("/content"):
                    self._send(200, {}, server.files[parts[2]], raw=True)
                elif path.startswith("/v1/batches/"):
                    self._send(200, {}, server._openai_batch(parts[2]))
                elif path.startswith("/v1/messages/batches/") and path.endswith("/results"):
                    self._send(200, {}, server.batches[parts[3]]["results"], raw=True)
                elif path.startswith("/v1/messages/batches/"):
                    self._send(200, {}, server._anthropic_batch(parts[3]))
                else:
                    self._send(404, {}, {"error": {"message": f"no route {path}"}})

        return Handler


def tagged_responder(model: str, system: str | None, messages: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A reply in `<think>...</think><answer>...</answer>` form, for parse-path benchmarks."""
    text, _ = echo_responder(model, system, messages)
    return f"<think>reading {text[6:60]}</think><answer>{text[6:40]}</answer>", None


def main(argv: list[str] | None = None) -> None:
    """Serve in this process (for a client measured in another one): prints the base URL, then
    serves until stdin closes or the process is terminated.

        python -m radcorpora.testing.fake_llm_server --responder tagged --latency 0
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--responder", choices=("echo", "tagged"), default="echo")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    responder = tagged_responder if args.responder == "tagged" else echo_responder
    with FakeProviderServer(responder, latency_s=args.latency) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()  # returns when the parent closes the pipe or exits


if __name__ == "__main__":
    main()
