"""The one reader of a build folder: manifest, dataset card (through huggingface_hub's
`DatasetCard`), shard sets per config and split, and rows. Validators, publish, exports and the
reference models all read builds through here, the way a Hub user would see the same files.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
MANIFEST = "build/manifest.json"
CARD = "README.md"


class BuildFolderError(ValueError):
    """The folder is not a readable radcorpora build; the message names the file at fault."""


def read_manifest(build: Path) -> dict[str, Any]:
    path = Path(build) / MANIFEST
    if not Path(build).is_dir():
        raise BuildFolderError(f"{build}: not a folder")
    if not path.exists():
        state = Path(build) / "build" / ".state"
        if (state / "fingerprint.json").exists():  # see store.state: a build that has not finished
            try:
                command = (state / "command.txt").read_text(encoding="utf-8").strip()
            except OSError:
                command = ""
            raise BuildFolderError(f"{build}: an unfinished build (stopped before it finished, or still running); "
                                   "resume it by running its build command again"
                                   + (f": {command}" if command else " with the same options"))
        raise BuildFolderError(f"{path}: build manifest missing (is {build} a radcorpora build?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildFolderError(f"{path}: unreadable manifest ({exc})") from exc


def read_card_yaml(build: Path) -> dict[str, Any]:
    """The card's YAML header as a dict, parsed by huggingface_hub as the Hub parses it."""
    from huggingface_hub import DatasetCard

    path = Path(build) / CARD
    if not path.exists():
        raise BuildFolderError(f"{path}: dataset card missing")
    try:
        card = DatasetCard(path.read_text(encoding="utf-8"))
    except Exception as exc:  # huggingface_hub raises ValueError or yaml errors for a broken header
        raise BuildFolderError(f"{path}: card header does not parse ({exc})") from exc
    data = card.data.to_dict()
    if not data:
        raise BuildFolderError(f"{path}: no YAML front matter")
    return data


def config_shards(build: Path, config: str) -> dict[str, list[Path]]:
    """split -> shard files of one config, sorted."""
    shards: dict[str, list[Path]] = {}
    for path in sorted((Path(build) / "data" / config).glob("*.parquet")):
        match = SHARD_RE.match(path.name)
        if match:
            shards.setdefault(match["split"], []).append(path)
    return shards


def configs_on_disk(build: Path) -> list[str]:
    data = Path(build) / "data"
    return sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []


_FOOTERS: OrderedDict[tuple[str, int, int, int, int], pq.FileMetaData] = OrderedDict()
FOOTERS_KEPT = 256


def shard_footer(path: Path) -> pq.FileMetaData:
    """A shard's Parquet footer, parsed once per file version: a build's end reads each shard's
    schema, ids, row count and rule columns in four places, and parsing a footer of many small
    row groups (~0.7 ms) cost more than reading the ids. Keyed by the file's path, size, inode,
    mtime and ctime, so a rewritten file is parsed again. Raises what pyarrow raises."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    footer = _FOOTERS.get(key)
    if footer is None:
        footer = pq.read_metadata(path)
        _FOOTERS[key] = footer
        if len(_FOOTERS) > FOOTERS_KEPT:
            _FOOTERS.popitem(last=False)
    return footer


def open_shard(path: Path) -> pq.ParquetFile:
    """A Parquet file, or a BuildFolderError naming the shard when it is truncated or not Parquet."""
    try:
        return pq.ParquetFile(path, metadata=shard_footer(path))
    except (OSError, pa.ArrowException) as exc:
        raise BuildFolderError(f"{path}: not a readable Parquet shard ({exc})") from exc


def shard_schema(path: Path) -> pa.Schema:
    """A shard's Arrow schema (as `pq.read_schema` gives it). Raises what pyarrow raises."""
    return shard_footer(path).schema.to_arrow_schema()


def read_columns(path: Path, columns: list[str]) -> pa.Table:
    """Some columns of one shard, as `pq.read_table(path, columns=...)` gives them (a nested leaf
    such as `lineage.source_id` comes back as a top-level column named `source_id`), read
    through `ParquetFile`: about half of `read_table`'s time on shards of many small row groups,
    since it skips the dataset layer (and its import); on one thread and without pre-buffering,
    which for a few small columns cost more than the read (0.3 against 1.3 ms for a shard's ids).
    Raises what pyarrow raises."""
    table = pq.ParquetFile(path, metadata=shard_footer(path), pre_buffer=False).read(columns=columns, use_threads=False)
    out_names, arrays = [], []
    for name in columns:
        top, *rest = name.split(".")
        array = table.column(top)
        for child in rest:
            array = pa.chunked_array([chunk.field(child) for chunk in array.chunks], type=array.type.field(child).type)
        out_names.append(rest[-1] if rest else top)
        arrays.append(array)
    return pa.table(arrays, names=out_names)


def iter_batches(path: Path, batch_size: int = 1024, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    try:
        yield from open_shard(path).iter_batches(batch_size=batch_size, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise BuildFolderError(f"{path}: shard cannot be read to the end ({exc})") from exc


def iter_rows(path: Path, batch_size: int = 64, columns: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) from one shard, streamed in small batches."""
    row_number = 0
    for batch in iter_batches(path, batch_size, columns):
        for row in batch.to_pylist():
            yield row_number, row
            row_number += 1


@dataclass(frozen=True)
class ShardRef:
    config: str
    split: str
    path: Path

    def rel(self, build: Path) -> str:
        return str(self.path.relative_to(build))


def all_shards(build: Path, configs: list[str] | None = None) -> list[ShardRef]:
    """Every shard of the given configs (default: all on disk), in a stable order."""
    refs = []
    for config in configs if configs is not None else configs_on_disk(build):
        for split, paths in sorted(config_shards(build, config).items()):
            refs += [ShardRef(config, split, p) for p in paths]
    return refs
