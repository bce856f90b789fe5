"""Chunked, resumable, parallel execution shared by every builder.

A build is split into chunks; each chunk writes its own shards atomically and then a done-marker
(`build/.state/<chunk>.json`) holding its rejects and counts. A restarted build skips chunks whose
marker and shards are intact, so a killed build finishes with the same files, with no lost and no
duplicated rows. Chunk contents depend only on their inputs, never on worker count or order.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from radcorpora.publish import atomic
from radcorpora.publish.shards import file_sha256
from radcorpora.schemas.common import Reject

STATE_DIR = "build/.state"
FINGERPRINT_FILE = "fingerprint.json"


class BuildStateError(RuntimeError):
    """The output folder holds a different build; the message says how to proceed."""


@dataclass(frozen=True)
class ChunkSpec:
    chunk_id: str
    size: int  # items, for progress
    payload: Any  # builder-specific, picklable


class ShardInfo(BaseModel):
    rows: int
    sha256: str


class ChunkResult(BaseModel):
    chunk_id: str
    shards: dict[str, ShardInfo] = Field(default_factory=dict)  # relpath -> info
    rejects: list[Reject] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)


def prepare_out_dir(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> str:
    """Returns 'fresh', 'resume' or 'complete'. Refuses to mix two different builds."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "build" / "manifest.json"
    state_fp = out / STATE_DIR / FINGERPRINT_FILE
    previous: dict[str, Any] | None = None
    if manifest.exists():
        previous = json.loads(manifest.read_text()).get("fingerprint")
    elif state_fp.exists():
        previous = json.loads(state_fp.read_text())
    if overwrite:
        for name in ("data", "build", "README.md"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        previous = None
    elif previous is None and any(out.iterdir()):
        stray = sorted(p.name for p in out.iterdir())[:5]
        raise BuildStateError(f"{out} is not empty and holds no radcorpora build ({', '.join(stray)}...); "
                              "choose an empty folder or pass --overwrite")
    if previous is not None and previous != fingerprint:
        changed = _changed_keys(previous, fingerprint)
        raise BuildStateError(f"{out} holds a build made with different settings (changed: {', '.join(changed)}); "
                              "use a new --out folder, or --overwrite to rebuild it")
    if previous is not None and manifest.exists() and not (out / STATE_DIR).exists():
        return "complete"
    atomic.remove_stale_tmp(out)
    atomic.write_json(state_fp, fingerprint)
    return "resume" if previous is not None else "fresh"


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def _chunk_done(out: Path, chunk_id: str) -> ChunkResult | None:
    marker = out / STATE_DIR / f"{chunk_id}.json"
    if not marker.exists():
        return None
    result = ChunkResult.model_validate_json(marker.read_text())
    for relpath, info in result.shards.items():
        shard = out / relpath
        if not shard.exists() or file_sha256(shard) != info.sha256:
            return None
    return result


def _mark_done(out: Path, result: ChunkResult) -> None:
    atomic.write_text(out / STATE_DIR / f"{result.chunk_id}.json", result.model_dump_json())


def make_progress(console: Any = None, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def run_chunks(
    specs: Sequence[ChunkSpec],
    worker: Callable[[ChunkSpec, Path], ChunkResult],
    out: Path,
    workers: int = 1,
    progress: Progress | None = None,
    description: str = "building",
) -> list[ChunkResult]:
    """Run every chunk not already done; results come back in spec order."""
    results: dict[str, ChunkResult] = {}
    pending: list[ChunkSpec] = []
    for spec in specs:
        done = _chunk_done(out, spec.chunk_id)
        if done is not None:
            results[spec.chunk_id] = done
        else:
            pending.append(spec)
    task = None
    if progress is not None:
        task = progress.add_task(description, total=sum(s.size for s in specs),
                                 completed=sum(s.size for s in specs if s.chunk_id in results))

    def finished(spec: ChunkSpec, result: ChunkResult) -> None:
        _mark_done(out, result)
        results[spec.chunk_id] = result
        if progress is not None and task is not None:
            progress.advance(task, spec.size)

    if workers <= 1 or len(pending) <= 1:
        for spec in pending:
            finished(spec, worker(spec, out))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(worker, spec, out): spec for spec in pending}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    return [results[s.chunk_id] for s in specs]


def clear_state(out: Path) -> None:
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
