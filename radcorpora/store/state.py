"""Build state on disk: which build a folder holds (its fingerprint) and which chunks are done.

A build is split into chunks; each chunk writes its own shards atomically and then a done-marker
(`build/.state/<chunk>.json`) holding its shards' checksums, rejects, counts and validation
findings. A restarted build skips chunks whose marker and shards are intact, so a killed build
finishes with the same files, with no lost and no duplicated rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from radcorpora.schemas.common import Reject
from radcorpora.store import atomic, source_index
from radcorpora.store.local_paths import read_local
from radcorpora.store.shards import file_sha256

STATE_DIR = "build/.state"
FINGERPRINT_FILE = "fingerprint.json"
COMMAND_FILE = "command.txt"  # the command that started the build (to resume it)
LLM_STORE = "build/llm"  # the LLM pipeline's stored outputs, one JSONL per node (kept by --overwrite; never pushed)
DERIVED_DIR = "derived"  # under STATE_DIR: see derived_once


class BuildStateError(RuntimeError):
    """The output folder holds a different build (or is not a folder); the message says how to proceed."""


@dataclass(frozen=True)
class ChunkSpec:
    chunk_id: str
    size: int  # items, for progress
    payload: Any  # builder-specific, picklable


class ShardInfo(BaseModel):
    rows: int
    sha256: str
    bytes: int | None = None  # its size as written: the end of a build trusts the writer's hash of a file this size

class ChunkResult(BaseModel):
    chunk_id: str
    shards: dict[str, ShardInfo] = Field(default_factory=dict)  # relpath -> info
    rejects: list[Reject] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    violations: dict[str, list[str]] = Field(default_factory=dict)  # check name -> examples (row checks)
    violation_counts: dict[str, int] = Field(default_factory=dict)
    checked: dict[str, int] = Field(default_factory=dict)
    sources: dict[str, tuple[int, int, str]] = Field(default_factory=dict)  # file -> size, mtime_ns, sha256


def check_out_dir(out: Path) -> None:
    """`--out` must be a folder or not exist, nothing on its path may be a file, and we must be
    able to write there: a file is created and removed in the nearest existing folder (a real
    write, since permission bits say nothing for root or on read-only mounts)."""
    out = Path(out)
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == out else f"lies under {parent}, which is a file"
            raise BuildStateError(f"{out}: the output folder {what}; choose a folder path")
    existing = next((p for p in (out, *out.parents) if p.is_dir()), None)
    try:
        if existing is None:
            raise OSError("no existing folder on its path")
        handle, probe = tempfile.mkstemp(prefix=".radcorpora-write-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise BuildStateError(f"{out}: cannot write the output folder here ({existing}: {reason}); "
                              "choose a folder you can write to") from None


def check_out_corpus(out: Path, corpus: str, overwrite: bool) -> None:
    """A folder holding another corpus' build is refused before any source is scanned."""
    if overwrite:
        return
    for recorded in (out / "build" / "manifest.json", out / STATE_DIR / FINGERPRINT_FILE):
        try:
            held = json.loads(recorded.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        held = held.get("corpus") if isinstance(held, dict) else None
        if held and held != corpus:
            raise BuildStateError(f"{out} holds a {held} build, and this is a {corpus} build: use a new --out folder, "
                                  "or --overwrite to replace it")
        return


def prepare_out_dir(out: Path, fingerprint: dict[str, Any], overwrite: bool, command: str = "") -> str:
    """Returns 'fresh', 'resume' or 'complete'. Refuses to mix two different builds. `command`
    is kept with the state, so a folder left by a killed build can say how to resume it."""
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "build" / "manifest.json"
    state_fp = out / STATE_DIR / FINGERPRINT_FILE
    previous: dict[str, Any] | None = None
    if manifest.exists():
        # the manifest's copy names local files relative to their folders (it is pushed); the
        # fingerprint as computed on this machine is in build/local.json
        previous = read_local(out).get("fingerprint") or json.loads(manifest.read_text()).get("fingerprint")
    elif state_fp.exists():
        previous = json.loads(state_fp.read_text())
        held = {p.name for p in (out / STATE_DIR).iterdir()} - {DERIVED_DIR, COMMAND_FILE}
        stored = (out / LLM_STORE).is_dir() and any((out / LLM_STORE).iterdir())
        if not (out / "data").exists() and held == {FINGERPRINT_FILE} and not stored:
            previous = None  # stopped before anything was written (a refusal, a bad option): start over
            shutil.rmtree(out / STATE_DIR)
            for folder in (out / LLM_STORE, out / "build", out):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        # the LLM pipeline's stored outputs are keyed by request and input content: a rebuild of the
        # same corpus with other settings reuses what still matches and never a stale line
        keep = {LLM_STORE.split("/")[1]} if previous is not None and previous.get("corpus") == fingerprint.get("corpus") \
            else set()
        for target in (out / "data", out / "README.md", *((out / "build").iterdir() if (out / "build").is_dir() else ())):
            if target.name in keep and target.parent == out / "build":
                continue
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        previous = None
    elif previous is None and any(out.iterdir()):
        stray = sorted(p.name for p in out.iterdir())[:5]
        raise BuildStateError(f"{out} is not empty and holds no radcorpora build ({', '.join(stray)}...); "
                              "choose an empty folder or pass --overwrite")
    if previous is not None and previous.get("corpus") != fingerprint.get("corpus"):
        raise BuildStateError(f"{out} holds a {previous.get('corpus')} build, and this is a {fingerprint.get('corpus')} "
                              "build: use a new --out folder, or --overwrite to replace it")
    if previous is not None and previous != fingerprint:
        changed = changed_keys(previous, fingerprint)
        old_sources = set((previous.get("sources") or {}).get("present") or [])
        new_sources = set((fingerprint.get("sources") or {}).get("present") or [])
        if "radcorpora" in changed:  # other code: its rows may differ for the same sources and settings
            what = f"by radcorpora {previous.get('radcorpora')} (this is {fingerprint.get('radcorpora')})"
        elif old_sources != new_sources and all(k.startswith("sources") for k in changed):
            moves = [f"{word}: {', '.join(sorted(names))}" for word, names in
                     (("added", new_sources - old_sources), ("removed", old_sources - new_sources)) if names]
            what = f"from other sources ({'; '.join(moves)})"
            changed = [k for k in changed if k != "sources.rows"]
        elif all(k.startswith("sources") for k in changed):
            what = "from sources whose content changed"
        else:
            what = "from different settings"
        raise BuildStateError(f"{out} holds a build made {what} (changed: {', '.join(changed)}); "
                              "use a new --out folder, or --overwrite to rebuild it")
    if previous is not None and manifest.exists() and not (out / STATE_DIR).exists():
        changed = source_index.changed_files(source_index.read_index(out), limit=6)
        if changed:
            shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
            raise BuildStateError(f"{out} holds a build made from sources whose content changed since ({shown}); "
                                  "use a new --out folder, or --overwrite to rebuild it")
        if not _failed_llm_requests(manifest):
            return "complete"
        for name in ("data", "README.md"):  # a rerun asks the failed requests again (answers are cached)
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    atomic.remove_stale_tmp(out)
    atomic.write_json(state_fp, fingerprint)
    atomic.write_text(out / STATE_DIR / COMMAND_FILE, command)
    return "resume" if previous is not None else "fresh"


RETRY_FREE_FAILURES = frozenset({"parse"})  # a reply that failed its checks after a repair fails again from the cache


def _failed_llm_requests(manifest: Path) -> int:
    """LLM requests a finished build could not get answered for a reason a rerun may not meet
    again (timeouts, server errors, rate limits, refusals): its rerun retries them."""
    try:
        failures = (json.loads(manifest.read_text()).get("llm") or {}).get("failures") or {}
        return sum(int(n) for kind, n in failures.items() if kind not in RETRY_FREE_FAILURES)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def chunk_done(out: Path, chunk_id: str) -> ChunkResult | None:
    marker = out / STATE_DIR / f"{chunk_id}.json"
    if not marker.exists():
        return None
    result = ChunkResult.model_validate_json(marker.read_text())
    for relpath, info in result.shards.items():
        shard = out / relpath
        if not shard.exists() or file_sha256(shard) != info.sha256:
            return None
    for path, (size, mtime, _) in result.sources.items():  # a source read by this chunk changed: redo it
        if source_index.stat_key(path) != (size, mtime):
            return None
    return result


def mark_done(out: Path, result: ChunkResult) -> None:
    atomic.write_text(out / STATE_DIR / f"{result.chunk_id}.json", result.model_dump_json())


def derived_once(out: Path, source: Path, variant: str, make: Callable[[], bytes],
                 usable: Callable[[bytes], bool] = lambda data: True) -> bytes:
    """Bytes derived from one source file that several chunks need (a DICOM converted to PNG for
    both VinDr configs): made once per build and kept with its state until the build finishes, so
    a resumed build does not make them again. Keyed by the file's path, size and mtime and the
    variant (the conversion and its settings); a kept copy that is empty or fails `usable` is made
    again. Kept copies are not fsynced (thousands of crops would each wait for the disk): a power
    loss can only leave one empty or unusable, and it is then made again."""
    stat = source_index.stat_key(source)
    if stat is None:
        return make()  # let the maker raise its own, clearer error
    key = hashlib.sha256(json.dumps([str(source), *stat, variant]).encode()).hexdigest()
    kept = out / STATE_DIR / DERIVED_DIR / key[:2] / key
    try:
        data = kept.read_bytes()
        if data and usable(data):
            return data
    except OSError:
        pass
    data = make()
    atomic.write_bytes(kept, data, durable=False)
    return data


def clear_state(out: Path) -> None:
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
