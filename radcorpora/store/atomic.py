"""Atomic file writes: write to a temporary sibling, fsync, rename. A killed process leaves
either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def tmp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def commit(tmp: Path, path: Path, durable: bool = True) -> None:
    if durable:
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Whole or not at all under `path`; `durable=False` skips the fsync, for a cache whose entries
    are checked when read back (a power loss may leave one empty, never half of another)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    tmp.write_bytes(data)
    commit(tmp, path, durable)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows))


def replace_folder(folder: Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling with `write(tmp)`, then put it in place of `folder`: a killed
    process leaves the old folder or the new one (plus a `.partial` sibling to be overwritten)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def remove_stale_tmp(folder: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    removed = 0
    if folder.exists():
        for tmp in folder.rglob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
