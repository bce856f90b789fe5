"""Persistent per-request answer cache (SQLite) and the batch jobs that feed it.

One row per answered request, keyed by `LLMRequest.cache_key`. Only answers are stored: never
keys, never request bodies (images are referenced by hash in the key).

Durability: answers are buffered and written in one transaction (WAL journal) when `commit_every_n`
are pending or the oldest pending one is `commit_window_s` old (checked on every `put`, and every
0.25 s by a running LLMRunner), and always by `commit()`, which the runner calls before `run`
returns (also on errors and KeyboardInterrupt) and `close()` calls. So every answer a run returned
is durable, and a run killed outright (SIGKILL) loses at most the answers of its last
`commit_window_s` + 0.25 s (defaults: 0.5 s), which the next run asks for again. A committed answer
survives a killed process; with synchronous=NORMAL the last commits before a power loss or OS crash
may be rolled back, never corrupted. Reads through this object see buffered answers too.
Batch-job records are committed at once (a submitted batch must never be submitted twice).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from radcorpora.llm.errors import CacheFileError
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
    def __init__(self, path: Path | str, *, commit_window_s: float = 0.25, commit_every_n: int = 1000):
        self.path = Path(path)
        self.commit_window_s = commit_window_s
        self.commit_every_n = commit_every_n
        self._pending: dict[str, tuple[str, str, str | None, float]] = {}  # key -> row, not yet committed
        self._pending_since = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
            except sqlite3.Error:
                self._db.close()
                raise
        except (OSError, sqlite3.Error) as exc:  # a file of something else, a folder, no room to make one
            if "locked" in str(exc):  # another build holds it past the timeout: the file itself is fine
                raise CacheFileError(f"{self.path}: the answer cache is in use by another process ({exc}); "
                                     "wait for it, or give --cache another file") from None
            raise CacheFileError(f"{self.path}: not an answer cache (SQLite) and none can be made there ({exc}); "
                                 "give --cache a new file") from None

    def get(self, key: str) -> LLMResponse | None:
        pending = self._pending.get(key)
        if pending is not None:
            return LLMResponse.model_validate_json(pending[1])
        row = self._db.execute("SELECT response FROM answers WHERE key = ?", (key,)).fetchone()
        return LLMResponse.model_validate_json(row[0]) if row else None

    def get_many(self, keys: list[str]) -> dict[str, LLMResponse]:
        self.commit()
        found: dict[str, LLMResponse] = {}
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            marks = ",".join("?" * len(part))
            for key, text in self._db.execute(f"SELECT key, response FROM answers WHERE key IN ({marks})", part):
                found[key] = LLMResponse.model_validate_json(text)
        return found

    def put(self, key: str, response: LLMResponse, stage: str | None = None) -> None:
        now = time.time()
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending[key] = (key, response.model_dump_json(), stage, now)
        if len(self._pending) >= self.commit_every_n or time.monotonic() - self._pending_since >= self.commit_window_s:
            self.commit()

    def commit_if_due(self) -> None:
        if self._pending and time.monotonic() - self._pending_since >= self.commit_window_s:
            self.commit()

    def commit(self) -> None:
        """Write every buffered answer in one transaction."""
        if not self._pending:
            return
        rows = list(self._pending.values())
        with self._db:  # BEGIN ... COMMIT, rolled back on error
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO answers (key, response, stage, created) VALUES (?, ?, ?, ?)",
                                 rows)
        self._pending.clear()

    def __contains__(self, key: str) -> bool:
        if key in self._pending:
            return True
        return self._db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        self.commit()
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    # ------------------------------------------------------------------ batch jobs

    def record_batch(self, batch_id: str, provider: str, endpoint: str, model: str, keys: list[str],
                     status: str, info: dict[str, Any] | None = None) -> None:
        self.commit()  # answers landed before this record are durable before it is
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
        try:
            self.commit()
        finally:
            self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
