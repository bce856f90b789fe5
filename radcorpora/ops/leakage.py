"""The leakage join: every patient, study and image that sits in a training split of one build
(or config) and an evaluation split of another. Exact identities (namespaced patient, study and
source image ids, image sha256) are joined on (key, location) as Arrow tables (group-by and hash
join, no Python object per index line); near-duplicate images by pHash through the neighbour
search of ops.phash on numpy arrays. Python objects are made only for the cases found.

Memory stays flat in the number of images: the builds' indexes are read a batch at a time; each
exact kind is partitioned by a hash of its key into parts of about PART_LINES lines, spilled to a
temporary folder and joined one part at a time (a key's lines all land in one part, so the parts'
cases together are the whole join's). pHashes are not partitioned by key (near ones differ): the
neighbour search takes each side's distinct hashes (8 bytes a hash) in blocks of HASH_BLOCK, block
against block, and only the lines of the hashes in a pair found are read again. Within one build
only different configs are compared (a config's own splits are the builder's business)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from radcorpora.ops.phash import choose_tolerance, near_pairs
from radcorpora.schemas.identity import (
    FAMILY,
    INDEX_BATCH_LINES,
    KINDS,
    family,
    index_batches,
    patient_key,
    source_key,
    split_role,
    study_key,
)

Loc = tuple[int, str, str]  # (build number, config, split)
# (task, jobs) -> the task's results in job order: the builtin `map`, or the engine's executors
TaskMap = Callable[[Callable[[Any], Any], list[Any]], Iterable[Any]]
EXACT_KINDS = ("patient", "study", "source_id", "sha256")
PART_LINES = 1 << 17  # lines joined at once (a part's join holds ~0.5 KB a line at its peak)
MAX_PARTS = 256  # parts of a kind; past PART_LINES x MAX_PARTS lines (33M) parts grow
MIN_PROBES = 1 << 16  # probing hashes worth a task of their own (a task sorts the left side again)
MAX_OPEN = 512  # spill files open at once: the kinds share a pass over the index while they fit
HASH_BLOCK = 1 << 20  # distinct pHashes of a side searched at once (8 MB; ~60 MB with the search's arrays)


@dataclass(frozen=True)
class BuildRows:
    """One build's identity index as the join reads it: its (config, split) locations (from the
    shard names), each shard's first row number within its split (shards in order), and its lines
    in batches (IDENTITY_SCHEMA columns): the join reads them three times (exact keys, pHashes,
    the lines of the pHash pairs found)."""

    name: str
    locs: list[tuple[str, str]]
    offsets: dict[str, int]
    lines: int
    batches: Callable[[list[str]], Iterator[pa.RecordBatch]]
    keep: Any = None  # what must live while `batches` is read (a temporary index file's folder)


def _where(shard: str) -> tuple[str, str]:
    """(config, split) of a shard name: data/<config>/<split>-NNNNN-of-NNNNN.parquet."""
    return shard.split("/")[1], shard.rsplit("/", 1)[-1].rsplit("-", 3)[0]


def build_rows(name: str, index: pa.Table | Path | str, rows: dict[str, int], keep: Any = None) -> BuildRows:
    """A build's identity index (an IDENTITY_SCHEMA table, or the Parquet file holding one;
    `rows`: shard -> its row count) with each row numbered within its split, shards in order, as
    the report and `mix --resolve` number them."""
    offsets: dict[str, int] = {}
    seen: dict[tuple[str, str], int] = {}
    for shard in sorted(rows):
        where = _where(shard)
        offsets[shard] = seen.get(where, 0)
        seen[where] = offsets[shard] + rows[shard]
    if isinstance(index, pa.Table):
        table = index
        lines = table.num_rows

        def batches(columns: list[str]) -> Iterator[pa.RecordBatch]:
            return iter(table.select(columns).to_batches(max_chunksize=INDEX_BATCH_LINES))
    else:
        path = Path(index)
        lines = pq.ParquetFile(path).metadata.num_rows

        def batches(columns: list[str]) -> Iterator[pa.RecordBatch]:
            return index_batches(path, columns)

    return BuildRows(name, sorted(seen), offsets, lines, batches, keep)


# -- keys, a column at a time --------------------------------------------------------------------

# printable ASCII without whitespace at either end: where Arrow's RE2 and Python's `re` (`$` before
# a final newline, Unicode `\d` and case folding, str.strip's whitespace) agree; other values go
# through the schema's own Python functions (rare: one call each, not one per line)
_SIMPLE = r"^[!-~]([ -~]*[!-~])?$"
_NAMESPACED = r"^(?P<ns>[a-z0-9-]+):(?P<id>.+)$"
_IMAGE_SUFFIX = r"(?i)\.(jpe?g|png|dcm|dicom|tiff?)$"
_SCALAR = {"patient": patient_key, "study": study_key, "source_id": source_key}


def _flat(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _families(source: pa.Array) -> pa.Array:
    """family() of each source_dataset, called once per distinct value."""
    encoded = pc.dictionary_encode(source)
    names = [family(v) for v in encoded.dictionary.to_pylist()] + [family(None)]
    return pc.take(pa.array(names, pa.string()), pc.fill_null(encoded.indices, len(names) - 1))


def _bare(ns: pa.Array, value: pa.Array) -> pa.Array:
    value = pc.utf8_trim_whitespace(value)
    return pc.if_else(pc.equal(ns, "mimic"), pc.replace_substring_regex(value, r"^[ps]([0-9]+)$", r"\1"), value)


def identity_keys(kind: str, source: pa.Array, value: pa.Array) -> pa.Array:
    """The keys of one kind for a column of source datasets and a column of ids, exactly as
    schemas.identity.patient_key / study_key / source_key give them one at a time (null: none)."""
    value = _flat(value).cast(pa.string())
    if kind == "sha256":
        return pc.if_else(pc.equal(value, ""), pa.scalar(None, pa.string()), value)
    source = _flat(source).cast(pa.string())
    ns, text = _families(source), value
    simple = pc.fill_null(pc.match_substring_regex(value, _SIMPLE), False)
    if kind == "patient":
        named = pc.extract_regex(value, _NAMESPACED)
        known = pa.array(sorted(set(FAMILY.values())))
        use = pc.fill_null(pc.and_(named.is_valid(), pc.is_in(pc.struct_field(named, [0]), value_set=known)), False)
        ns = pc.if_else(use, pc.struct_field(named, [0]), ns)
        text = pc.if_else(use, pc.struct_field(named, [1]), text)
    if kind == "source_id":
        bare = pc.replace_substring_regex(pc.utf8_trim_whitespace(text), _IMAGE_SUFFIX, "")
    else:
        bare = _bare(ns, text)
    keys = pc.if_else(simple, pc.binary_join_element_wise(ns, bare, ":"), pa.scalar(None, pa.string()))
    other = np.flatnonzero(pc.and_(pc.invert(simple), pc.is_valid(value)).to_numpy(zero_copy_only=False))
    if len(other):  # the few values Arrow's regexes might read otherwise than Python's
        at = pa.array(other)
        scalar = _SCALAR[kind]
        fixed = [scalar(s, v) for s, v in zip(source.take(at).to_pylist(), value.take(at).to_pylist())]
        mask = np.zeros(len(value), dtype=bool)
        mask[other] = True
        keys = pc.replace_with_mask(keys, pa.array(mask), pa.array(fixed, pa.string()))
    return keys


# -- where lines are, and a batch of them at a time ---------------------------------------------


@dataclass(frozen=True)
class _Places:
    """Every build's training and evaluation locations, numbered in sorted (build, config, split)
    order."""

    locs: list[Loc]
    role: np.ndarray  # per loc: True = train, False = eval
    group: np.ndarray  # per loc: (build, config) number; two locs may be compared when theirs differ


def _places(builds: list[BuildRows]) -> _Places:
    every = sorted({(number, config, split) for number, build in enumerate(builds) for config, split in build.locs
                    if split_role(split) is not None})
    groups = sorted({(b, c) for b, c, _ in every})
    group_of = {g: k for k, g in enumerate(groups)}
    return _Places(every, np.array([split_role(s) == "train" for _, _, s in every], dtype=bool),
                   np.array([group_of[(b, c)] for b, c, _ in every], dtype=np.int64))


def _stream(builds: list[BuildRows], places: _Places, columns: list[str]) -> Iterator[pa.Table]:
    """Every build's lines at a training or evaluation location, a batch at a time: `loc` (its
    number in `places`), `row` (numbered within its split) and `columns`. Python works per shard
    name in a batch, not per line."""
    number_of = {loc: k for k, loc in enumerate(places.locs)}
    for number, build in enumerate(builds):
        for batch in build.batches(["shard", "row", *columns]):
            if not batch.num_rows:
                continue
            shard = pc.dictionary_encode(pc.fill_null(batch.column(0), ""))
            names = shard.dictionary.to_pylist()
            loc_of = np.array([number_of.get((number, *_where(n)), -1) if n.count("/") >= 2 else -1
                               for n in names], dtype=np.int32)
            offset_of = np.array([build.offsets.get(n, 0) for n in names], dtype=np.int64)
            codes = shard.indices.to_numpy(zero_copy_only=False)
            loc = loc_of[codes]
            row = batch.column(1).to_numpy(zero_copy_only=False) + offset_of[codes]
            table = pa.table({"loc": loc, "row": row, **{c: batch.column(c) for c in columns}})
            keep = loc >= 0
            yield table if keep.all() else table.filter(pa.array(keep))


# -- parts ---------------------------------------------------------------------------------------

_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads any uint64 values evenly (numpy's uint64 products wrap)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX[0]
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX[1]
    return x ^ (x >> np.uint64(31))


def _string_hash(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each string (no nulls) from its length and its first, middle and last 8
    bytes, read straight from the Arrow buffers (one gather each, through an overlapping view of
    the bytes): the same for a key in every batch and run, so its part is; spread enough for ids,
    which differ at their ends or middles."""
    values = _flat(values).cast(pa.large_binary())
    n = len(values)
    if not n:
        return np.zeros(0, np.uint64)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset:values.offset + n + 1]
    data = values.buffers()[2]
    body = np.frombuffer(data, dtype=np.uint8)[:offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    padded = np.concatenate([body, np.zeros(8, np.uint8)])
    words = np.ndarray(shape=(len(body) + 1,), dtype="<u8", buffer=padded, strides=(1,))  # words[k]: bytes k..k+7
    starts, lengths = offsets[:-1], np.diff(offsets)
    short = lengths < 8
    keep = np.where(short, (np.uint64(1) << (lengths.astype(np.uint64) * np.uint64(8))) - np.uint64(1),
                    np.uint64(0xFFFFFFFFFFFFFFFF))
    out = lengths.astype(np.uint64)
    for at in (starts, starts + np.maximum(lengths - 8, 0) // 2, np.maximum(starts + lengths - 8, starts)):
        out = _mix(out ^ (words[at] & keep))
    return out


def _part_count(lines: int, part_lines: int) -> int:
    """Parts of about `part_lines` lines (one, kept in memory, when all fit)."""
    return 1 if lines <= part_lines else min(MAX_PARTS, -(-lines // part_lines))


class _Spill:
    """Lines partitioned into `parts`: one part stays in memory; more go to one Arrow IPC stream
    file per part under `folder`, read back (memory-mapped) and deleted one at a time."""

    def __init__(self, folder: Path, parts: int):
        self.folder, self.parts = folder, parts
        self._memory: list[pa.Table] = []
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}

    def add(self, table: pa.Table, part: np.ndarray | None) -> None:
        if not table.num_rows:
            return
        if self.parts == 1:
            self._memory.append(table)
            return
        order = np.argsort(part, kind="stable")
        table, part = table.take(pa.array(order)), part[order]
        bounds = np.searchsorted(part, np.arange(self.parts + 1))
        for k in np.flatnonzero(np.diff(bounds)):
            writer = self._writers.get(int(k))
            if writer is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                writer = self._writers[int(k)] = pa.ipc.new_stream(str(self.folder / f"{k:05d}.arrow"), table.schema)
            writer.write_table(table.slice(int(bounds[k]), int(bounds[k + 1] - bounds[k])))

    def held(self) -> pa.Table | None:
        """The lines of a single part (kept in memory), or None when spilled or empty."""
        table = pa.concat_tables(self._memory) if self._memory else None
        self._memory = []
        return table

    def files(self) -> list[Path]:
        """The spilled parts' files, written out (each is read by `read_part`)."""
        for writer in self._writers.values():
            writer.close()
        paths = [self.folder / f"{k:05d}.arrow" for k in sorted(self._writers)]
        self._writers = {}
        return paths


def read_part(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


# -- the join ------------------------------------------------------------------------------------


def _numbered(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Each value (no nulls) as the number of its distinct value, and for each number the place of
    a value that has it. By sorting: a hash table of 400k sha256 strings (dictionary_encode,
    group_by) holds ~150 MB, the sort ~40 MB."""
    if len(values) == 0:
        return pa.array([], pa.int64()), np.zeros(0, np.int64)
    order = pc.sort_indices(values).to_numpy()
    ordered = values.take(order)
    new = np.ones(len(values), dtype=bool)
    new[1:] = pc.not_equal(ordered.slice(1), ordered.slice(0, len(values) - 1)).to_numpy(zero_copy_only=False)
    del ordered
    numbers = np.empty(len(values), dtype=np.int64)
    numbers[order] = np.cumsum(new) - 1
    return pa.array(numbers), order[new]


def _sides(places: _Places, table: pa.Table, key: str) -> tuple[pa.Table, pa.Table]:
    """Distinct (key, loc) of the training lines and of the evaluation lines."""
    distinct = table.group_by([key, "loc"], use_threads=False).aggregate([])
    train = pa.array(places.role[distinct["loc"].to_numpy()])
    return distinct.filter(train), distinct.filter(pc.invert(train))


def _compared(places: _Places, pairs: pa.Table) -> pa.Table:
    """The (train loc, eval loc) pairs that count: another build, or another config of one."""
    keep = places.group[pairs["tloc"].to_numpy()] != places.group[pairs["eloc"].to_numpy()]
    return pairs.filter(pa.array(keep))


def _rows_of(ids: pa.Array, table: pa.Table, on: list[str], wanted: pa.Table) -> dict[tuple, tuple[list, list]]:
    """(on values...) -> (rows sorted, their ids) for the lines of `table` matching `wanted` on `on`
    (`line` indexes `ids`): Python objects for the reported lines only."""
    if wanted.num_rows == 0:
        return {}
    hit = table.select([*on, "row", "line"]).join(wanted.select(on).group_by(on, use_threads=False).aggregate([]),
                                                 keys=on, join_type="left semi", use_threads=False)
    hit = hit.group_by([*on, "row"], use_threads=False).aggregate([("line", "min")])
    hit = hit.sort_by([(c, "ascending") for c in on] + [("row", "ascending")])
    names = ids.take(hit["line_min"]).to_pylist()
    out: dict[tuple, tuple[list, list]] = {}
    for values in zip(*(hit[c].to_pylist() for c in on), hit["row"].to_pylist(), names):
        rows, found = out.setdefault(tuple(values[:-2]), ([], []))
        rows.append(values[-2])
        found.append(values[-1])
    return out


_VALUE = {"patient": "patient_id", "study": "study_id", "source_id": "source_id", "sha256": "sha256"}


def _exact(builds: list[BuildRows], places: _Places, spill: Path, part_lines: int,
           run: TaskMap) -> list[tuple[tuple, dict[str, Any]]]:
    """The cases of the exact kinds: keys computed a batch at a time and spilled by their hash,
    as many kinds a pass over the index as MAX_OPEN spill files allow (all four up to 128 parts)."""
    parts = _part_count(sum(b.lines for b in builds), part_lines)
    per_pass = max(1, MAX_OPEN // parts)
    out = []
    for first in range(0, len(EXACT_KINDS), per_pass):
        kinds = EXACT_KINDS[first:first + per_pass]
        spills = {kind: _Spill(spill / kind, parts) for kind in kinds}
        columns = sorted({"id", "source_dataset", *(_VALUE[kind] for kind in kinds)})
        for batch in _stream(builds, places, columns):
            for kind in kinds:
                value = _VALUE[kind]
                keys = _flat(batch[value]) if kind == "sha256" else \
                    identity_keys(kind, batch["source_dataset"], batch[value])
                valid = pc.fill_null(pc.not_equal(keys, ""), False)  # no key: null or empty
                lines = pa.table({"key": keys, "loc": batch["loc"], "row": batch["row"], "id": batch["id"]})
                lines = lines.filter(valid)
                spills[kind].add(lines, (_string_hash(lines["key"]) % np.uint64(parts)).astype(np.int64)
                                 if parts > 1 else None)
        jobs = []
        for kind in kinds:
            held = spills[kind].held()
            if held is not None:
                out += _exact_part(places, held, kind)
            jobs += [(places, path, kind) for path in spills[kind].files()]
        for found in run(_exact_task, jobs):
            out += found
    return out


def _exact_task(job: tuple[_Places, Path | pa.Table, str]) -> list[tuple[tuple, dict[str, Any]]]:
    """One spilled part's cases: a task for the executors (module level, so it pickles). The part
    file is deleted once read (`inline` may have read it already)."""
    places, part, kind = job
    if isinstance(part, Path):
        lines = read_part(part)
        part.unlink()
    else:
        lines = part
    return _exact_part(places, lines, kind)


def inline(job: tuple) -> tuple:
    """A join task's job with its spilled files' contents in place of their paths (a part file is
    deleted once read): for executors whose workers cannot read this machine's temporary folder
    (Ray nodes)."""
    out = []
    for item in job:
        if isinstance(item, Path) and item.suffix == ".arrow":
            table = read_part(item).combine_chunks()  # a copy: the mapping is closed with the file
            item.unlink()
            item = table
        elif isinstance(item, Path):
            item = np.load(item)
        out.append(item)
    return tuple(out)


def _exact_part(places: _Places, lines: pa.Table, kind: str) -> list[tuple[tuple, dict[str, Any]]]:
    # each distinct key as a number (group-by and join on integers hold far less memory than on
    # strings); the strings are looked up again for the cases found
    keys = lines["key"].combine_chunks()
    numbers, place = _numbered(keys)
    table = pa.table({"key": numbers, "loc": lines["loc"], "row": lines["row"],
                      "line": pa.array(np.arange(lines.num_rows, dtype=np.int64))})
    train, held_out = _sides(places, table, "key")
    pairs = train.rename_columns(["key", "tloc"]).join(held_out.rename_columns(["key", "eloc"]), keys="key",
                                                       join_type="inner", use_threads=False)
    pairs = _compared(places, pairs)
    wanted = pa.concat_tables([pairs.select(["key", "tloc"]).rename_columns(["key", "loc"]),
                               pairs.select(["key", "eloc"]).rename_columns(["key", "loc"])])
    rows = _rows_of(lines["id"].combine_chunks(), table, ["key", "loc"], wanted)
    order = list(KINDS).index(kind)
    out = []
    names = keys.take(pa.array(place[pairs["key"].to_numpy()])).to_pylist()
    for name, code, tloc, eloc in zip(names, pairs["key"].to_pylist(), pairs["tloc"].to_pylist(),
                                      pairs["eloc"].to_pylist()):
        tl, el = places.locs[tloc], places.locs[eloc]
        out.append(((order, tl, el, name), {"kind": kind, "train": (tl, name, rows[(code, tloc)]),
                                            "eval": (el, name, rows[(code, eloc)])}))
    return out


def _near(builds: list[BuildRows], places: _Places, max_distance: int, spill: Path, hash_block: int,
          run: TaskMap, split: int) -> list[tuple[tuple, dict[str, Any]]]:
    """Near-duplicate cases, in three passes over the lines: the distinct pHashes of each side (8
    bytes a hash: all the neighbour search needs; past `hash_block` of them, in blocks spilled to
    disk and searched block against block), the pairs within the distance, then the lines of the
    hashes in a pair only (what the cases report)."""
    sides = {role: _HashBlocks(spill / f"phash-{role}", hash_block) for role in ("train", "eval")}
    for batch in _stream(builds, places, ["sha256", "phash"]):
        hashes, train = _hashed(places, batch)
        sides["train"].add(hashes[train])
        sides["eval"].add(hashes[~train])
    # one band scheme for every block pair, chosen for the whole search (its work is their sum)
    tolerance = choose_tolerance(sides["train"].total, sides["eval"].total, max_distance)
    lefts, rights = sides["train"].blocks(), sides["eval"].blocks()
    if len(lefts) * len(rights) < split and isinstance(rights[0], np.ndarray) and len(rights[0]) >= 2 * MIN_PROBES:
        # one block pair: the probing side in `split` pieces, each searched against the whole left
        pieces = min(split, len(rights[0]) // MIN_PROBES)
        rights = np.array_split(rights[0], pieces)
    jobs = [(left, right, max_distance, tolerance) for left in lefts for right in rights]
    found = list(run(_pairs_task, jobs) if len(jobs) > 1 else map(_pairs_task, jobs))
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.uint64)
    if not len(pairs):
        return []
    a, b = pairs[:, 0], pairs[:, 1]
    wanted = pa.array(np.union1d(a, b), pa.uint64())
    parts = []
    for batch in _stream(builds, places, ["id", "sha256", "phash"]):
        wanted_here = pc.fill_null(pc.is_in(batch["phash"], value_set=wanted), False)
        parts.append(batch.filter(pc.and_(_with_phash(batch), wanted_here)))
    return _near_cases(places, pa.concat_tables(parts), a, b, np.bitwise_count(a ^ b).astype(np.int64))


class _HashBlocks:
    """The distinct hashes of one side, gathered a batch at a time: in memory up to `size` of
    them, past that in sorted blocks of `size` on disk (a hash may then sit in two blocks: its
    pairs are found twice and counted once)."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size = folder, size
        self._held: list[np.ndarray] = []
        self._count = 0
        self._files: list[Path] = []
        self._saved = 0  # hashes in the blocks on disk

    def add(self, hashes: np.ndarray) -> None:
        if not len(hashes):
            return
        self._held.append(np.unique(hashes))
        self._count += len(self._held[-1])
        if len(self._held) > 16 or self._count > self.size:  # merge the batches' lists
            self._held = [np.unique(np.concatenate(self._held))]
            self._count = len(self._held[0])
        while self._count > self.size:
            whole = self._held[0]
            self.folder.mkdir(parents=True, exist_ok=True)
            self._files.append(self.folder / f"{len(self._files):05d}.npy")
            np.save(self._files[-1], whole[:self.size])
            self._saved += self.size
            self._held = [whole[self.size:]]
            self._count = len(self._held[0])

    @property
    def total(self) -> int:
        return self._saved + (len(self._held[0]) if len(self._held) == 1 else sum(len(h) for h in self._held))

    def blocks(self) -> list[np.ndarray | Path]:
        """The blocks: one array when they fit in one, else files (each read by its task)."""
        held = np.unique(np.concatenate(self._held)) if self._held else np.zeros(0, np.uint64)
        self._held = []
        if not self._files:
            return [held]
        if len(held):
            self._files.append(self.folder / f"{len(self._files):05d}.npy")
            np.save(self._files[-1], held)
        return list(self._files)


def _pairs_task(job: tuple[np.ndarray | Path, np.ndarray | Path, int, int]) -> np.ndarray:
    """The (training hash, evaluation hash) pairs within the distance of one block pair: a task
    for the executors."""
    left, right, max_distance, tolerance = job
    left, right = (np.load(side) if isinstance(side, Path) else side for side in (left, right))
    i, j, _ = near_pairs(left, right, max_distance, tolerance)
    return np.stack([left[i], right[j]], axis=1)


def _with_phash(batch: pa.Table) -> pa.Array:
    """Lines with a pHash and an image's sha256 (an undecodable image is compared by sha256 only)."""
    return pc.and_(pc.is_valid(batch["phash"]), pc.fill_null(pc.not_equal(batch["sha256"], ""), False))


def _hashed(places: _Places, batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The pHashes of a batch's lines that have one and an image's sha256, and whether each line is
    at a training location."""
    lines = batch.select(["phash", "loc"]).filter(_with_phash(batch))
    return lines["phash"].to_numpy(), places.role[lines["loc"].to_numpy()]


def _near_cases(places: _Places, lines: pa.Table, a: np.ndarray, b: np.ndarray,
                d: np.ndarray) -> list[tuple[tuple, dict[str, Any]]]:
    """The cases of the pHash pairs (a: training side's hash, b: evaluation side's, d: distance)
    from every line of those hashes: a pair at a training and an evaluation location, where some
    image on each side has other bytes than some image on the other (the same bytes are sha256's
    case). Per (hash, loc): how many distinct images, and the only one where there is one; a
    side's rows are those whose image differs from the other side's only one."""
    image, _ = _numbered(lines["sha256"].combine_chunks())  # each distinct image as a number
    table = pa.table({"phash": lines["phash"], "loc": lines["loc"], "row": lines["row"],
                      "line": pa.array(np.arange(lines.num_rows, dtype=np.int64)), "image": image})
    # per (hash, loc): distinct images and the least, by one sort (numpy: no hash tables)
    ph, loc, img = (table[c].to_numpy() for c in ("phash", "loc", "image"))
    order = np.lexsort((img, loc, ph))
    ph, loc, img = ph[order], loc[order], img[order]
    del order
    group = np.ones(len(ph), dtype=bool)
    group[1:] = (ph[1:] != ph[:-1]) | (loc[1:] != loc[:-1])
    other = group.copy()
    other[1:] |= img[1:] != img[:-1]
    starts = np.flatnonzero(group)
    per = pa.table({"phash": ph[starts], "loc": loc[starts],
                    "n": np.add.reduceat(other.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64),
                    "one": img[starts]})
    del ph, loc, img, group, other
    train_mask = pa.array(places.role[per["loc"].to_numpy()])
    train, held_out = per.filter(train_mask), per.filter(pc.invert(train_mask))
    pairs = pa.table({"thash": pa.array(a, pa.uint64()), "ehash": pa.array(b, pa.uint64()),
                      "distance": pa.array(d, pa.int64())})
    pairs = pairs.join(train.rename_columns(["thash", "tloc", "tn", "tone"]), keys="thash", join_type="inner",
                       use_threads=False)
    pairs = pairs.join(held_out.rename_columns(["ehash", "eloc", "en", "eone"]), keys="ehash", join_type="inner",
                       use_threads=False)
    pairs = _compared(places, pairs)
    same = pc.and_(pc.and_(pc.equal(pairs["tn"], 1), pc.equal(pairs["en"], 1)), pc.equal(pairs["tone"], pairs["eone"]))
    pairs = pairs.filter(pc.invert(same))
    # a side's rows: its lines whose image is not the far side's only image
    ids = lines["id"].combine_chunks()
    sides = []
    for me, far in (("t", "e"), ("e", "t")):
        side = pairs.select([f"{me}hash", f"{me}loc", f"{far}n", f"{far}one"]).rename_columns(
            ["phash", "loc", "far_n", "far_one"])
        side = side.group_by(["phash", "loc", "far_n", "far_one"], use_threads=False).aggregate([])
        hit = table.join(side, keys=["phash", "loc"], join_type="inner", use_threads=False)
        keep = pc.or_(pc.greater(hit["far_n"], 1), pc.not_equal(hit["image"], hit["far_one"]))
        sides.append(hit.filter(keep))
    rows = [_rows_of(ids, hit, ["phash", "loc", "far_n", "far_one"], hit) for hit in sides]
    order = list(KINDS).index("phash")
    out = []
    for a_, b_, dist, tloc, eloc, tn, tone, en, eone in zip(*(pairs[c].to_pylist() for c in (
            "thash", "ehash", "distance", "tloc", "eloc", "tn", "tone", "en", "eone"))):
        tl, el = places.locs[tloc], places.locs[eloc]
        tkey, ekey = f"{a_:016x}", f"{b_:016x}"
        out.append(((order, tl, el, tkey + ekey), {"kind": "phash", "distance": int(dist),
                                                   "train": (tl, tkey, rows[0][(a_, tloc, en, eone)]),
                                                   "eval": (el, ekey, rows[1][(b_, eloc, tn, tone)])}))
    return out


def find_cases(builds: list[BuildRows], max_distance: int, part_lines: int | None = None,
               spill: Path | None = None, hash_block: int | None = None,
               map_tasks: TaskMap | None = None, workers: int = 1) -> list[dict[str, Any]]:
    """One dict per (kind, key, training side, evaluation side), sorted by kind, then sides. Parts
    past the first, and pHash blocks past the first, are spilled under `spill` (default: the
    system's temporary folder) and joined as tasks by `map_tasks` (default: one after another
    here; give it processes on this machine, which read the spilled files), `workers` of them at
    once (a single pHash block pair is then cut into as many tasks)."""
    run = map_tasks or map
    part_lines, hash_block = part_lines or PART_LINES, hash_block or HASH_BLOCK
    places = _places(builds)
    found: list[tuple[tuple, dict[str, Any]]] = []
    if places.locs and any(b.lines for b in builds):
        with tempfile.TemporaryDirectory(prefix="radcorpora-leakage-", dir=spill) as folder:
            found += _exact(builds, places, Path(folder), part_lines, run)
            found += _near(builds, places, max_distance, Path(folder), hash_block, run,
                           workers if map_tasks else 1)
    found.sort(key=lambda item: item[0])

    def side(where: tuple[Loc, str, tuple[list, list]]) -> dict[str, Any]:
        loc, key, (rows, ids) = where
        return {"build": builds[loc[0]].name, "config": loc[1], "split": loc[2], "key": key, "rows": list(rows),
                "ids": list(ids)}

    return [{**case, "train": side(case["train"]), "eval": side(case["eval"])} for _, case in found]


def case_key(case: dict[str, Any]) -> str:
    """The identity a case is about: its key (a pHash case: both hashes)."""
    if case["kind"] == "phash":
        return f"{case['train']['key']}~{case['eval']['key']}"
    return case["train"]["key"]


def count_by_pair(cases: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, int]]:
    """(training build, evaluation build) -> kind -> distinct identities (patients, studies,
    images, near-duplicate hash pairs), in the order the cases come."""
    seen: dict[tuple[str, str], dict[str, set[str]]] = {}
    for case in cases:
        pair = (case["train"]["build"], case["eval"]["build"])
        seen.setdefault(pair, {kind: set() for kind in KINDS})[case["kind"]].add(case_key(case))
    return {pair: {kind: len(keys) for kind, keys in kinds.items()} for pair, kinds in seen.items()}
