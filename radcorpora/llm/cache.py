"""Persistent per-request answer cache (SQLite) and the batch jobs that feed it.

One row per answered request, keyed by `LLMRequest.cache_key`. Each answer is committed as it
arrives (WAL journal), so a killed run keeps everything answered before the kill. Only answers
are stored: never keys, never request bodies (images are referenced by hash in the key).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from radcorpora.llm.request import LLMResponse

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    stage TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    keys TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    info TEXT
);
"""


def default_cache_path() -> Path:
    """`$RADCORPORA_CACHE_DIR/llm-cache.sqlite`, else under `$XDG_CACHE_HOME` or `~/.cache`."""
    root = os.environ.get("RADCORPORA_CACHE_DIR")
    if root:
        return Path(root) / "llm-cache.sqlite"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "radcorpora" / "llm-cache.sqlite"


class AnswerCache:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def get(self, key: str) -> LLMResponse | None:
        row = self._db.execute("SELECT response FROM answers WHERE key = ?", (key,)).fetchone()
        return LLMResponse.model_validate_json(row[0]) if row else None

    def get_many(self, keys: list[str]) -> dict[str, LLMResponse]:
        found: dict[str, LLMResponse] = {}
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            marks = ",".join("?" * len(part))
            for key, text in self._db.execute(f"SELECT key, response FROM answers WHERE key IN ({marks})", part):
                found[key] = LLMResponse.model_validate_json(text)
        return found

    def put(self, key: str, response: LLMResponse, stage: str | None = None) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers (key, response, stage, created) VALUES (?, ?, ?, ?)",
                         (key, response.model_dump_json(), stage, time.time()))

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    # ------------------------------------------------------------------ batch jobs

    def record_batch(self, batch_id: str, provider: str, endpoint: str, model: str, keys: list[str],
                     status: str, info: dict[str, Any] | None = None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO batches (batch_id, provider, endpoint, model, keys, status, created, info) "
            "VALUES (?, ?, ?, ?, ?, ?, COALESCE((SELECT created FROM batches WHERE batch_id = ?), ?), ?)",
            (batch_id, provider, endpoint, model, json.dumps(keys), status, batch_id, time.time(),
             json.dumps(info or {})))

    def open_batches(self, provider: str, endpoint: str, model: str) -> list[tuple[str, list[str]]]:
        """Batches submitted but not yet collected, oldest first: resumed instead of resubmitted."""
        rows = self._db.execute(
            "SELECT batch_id, keys FROM batches WHERE provider = ? AND endpoint = ? AND model = ? "
            "AND status = 'submitted' ORDER BY created", (provider, endpoint, model)).fetchall()
        return [(batch_id, json.loads(keys)) for batch_id, keys in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
