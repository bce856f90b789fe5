"""The leakage join: every patient, study and image that sits in a training split of one build
(or config) and an evaluation split of another. Exact identities (namespaced patient, study and
source image ids, image sha256) are joined on (key, location) as Arrow tables (group-by and hash
join, no Python object per index line); near-duplicate images by pHash through the neighbour
search of ops.phash on numpy arrays. Python objects are made only for the cases found.

Memory stays flat in the number of images: the builds' indexes are read a batch at a time and
each kind of identity is partitioned by its key (a hash of it; for pHashes, of each band, since
two hashes within the distance agree exactly on at least one of distance + 1 bands) into parts
of about PART_LINES lines, spilled to a temporary folder, then joined one part at a time. A key's
lines all land in one part, so the parts' cases together are the whole join's (a pHash pair is
reported only by the part of the first band the two agree on). Within one build only different
configs are compared (a config's own splits are the builder's business)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from radcorpora.ops.phash import bands, near_pairs
from radcorpora.schemas.identity import (
    FAMILY,
    KINDS,
    family,
    patient_key,
    source_key,
    split_role,
    study_key,
)

Loc = tuple[int, str, str]  # (build number, config, split)
EXACT_KINDS = ("patient", "study", "source_id", "sha256")
PART_LINES = 1 << 17  # lines joined at once (a part's join holds ~0.5 KB a line at its peak)
MAX_PARTS = 256  # spill files open at once, per kind; past PART_LINES x MAX_PARTS lines parts grow
BATCH_LINES = 1 << 16  # index lines read at a time
_READ = ["shard", "row", "id", "source_dataset", "source_id", "patient_id", "study_id", "sha256", "phash"]


@dataclass(frozen=True)
class BuildRows:
    """One build's identity index as the join reads it: its (config, split) locations (from the
    shard names), each shard's first row number within its split (shards in order), and its lines
    in batches (IDENTITY_SCHEMA columns), read again for each kind of identity."""

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
            return iter(table.select(columns).to_batches(max_chunksize=BATCH_LINES))
    else:
        path = Path(index)
        lines = pq.ParquetFile(path).metadata.num_rows

        def batches(columns: list[str]) -> Iterator[pa.RecordBatch]:
            return pq.ParquetFile(path).iter_batches(batch_size=BATCH_LINES, columns=columns)

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
    """A 64-bit polynomial hash of each string's bytes (no nulls), computed on the Arrow buffers:
    a key's part, the same in every batch and run."""
    values = _flat(values).cast(pa.large_binary())
    n = len(values)
    if not n:
        return np.zeros(0, np.uint64)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset:values.offset + n + 1]
    data = values.buffers()[2]
    body = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    starts = offsets[:-1] - offsets[0]
    place = np.arange(len(body), dtype=np.int64) - np.repeat(starts, lengths)
    powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, _MIX[2], dtype=np.uint64))
    terms = np.append(body.astype(np.uint64) * powers[place], np.uint64(0))  # a last 0: reduceat's bound
    out = np.add.reduceat(terms, starts) if len(body) else np.zeros(n, np.uint64)
    out[lengths == 0] = 0
    return _mix(out + lengths.astype(np.uint64))


def _band_part(phash: np.ndarray, band: int, spec: list[tuple[int, int]], parts: int) -> np.ndarray:
    """The part holding the hashes whose band `band` has this value."""
    shift, width = spec[band]
    value = (phash >> np.uint64(shift)) & np.uint64((1 << width) - 1 if width < 64 else (1 << 64) - 1)
    salt = np.uint64(((band + 1) * int(_MIX[2])) % (1 << 64))
    return (_mix(value + salt) % np.uint64(parts)).astype(np.int64)


def _part_count(lines: int, copies: int, part_lines: int) -> int:
    return 1 if lines <= part_lines else min(MAX_PARTS, -(-lines * copies // part_lines))


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

    def tables(self) -> Iterator[tuple[int, pa.Table]]:
        if self.parts == 1:
            if self._memory:
                yield 0, pa.concat_tables(self._memory)
            self._memory = []
            return
        for writer in self._writers.values():
            writer.close()
        for k in sorted(self._writers):
            path = self.folder / f"{k:05d}.arrow"
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_stream(source).read_all()
            yield k, table
            del table
            path.unlink()
        self._writers = {}


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


def _exact(builds: list[BuildRows], places: _Places, kind: str, spill: Path,
           part_lines: int) -> list[tuple[tuple, dict[str, Any]]]:
    """The cases of one exact kind: keys computed a batch at a time and spilled by their hash."""
    value = _VALUE[kind]
    parts = _Spill(spill / kind, _part_count(sum(b.lines for b in builds), 1, part_lines))
    columns = ["id", value] if kind == "sha256" else ["id", "source_dataset", value]
    for batch in _stream(builds, places, columns):
        keys = _flat(batch[value]) if kind == "sha256" else identity_keys(kind, batch["source_dataset"], batch[value])
        valid = pc.fill_null(pc.not_equal(keys, ""), False)  # no key: null or empty
        lines = pa.table({"key": keys, "loc": batch["loc"], "row": batch["row"], "id": batch["id"]}).filter(valid)
        parts.add(lines, (_string_hash(lines["key"]) % np.uint64(parts.parts)).astype(np.int64)
                  if parts.parts > 1 else None)
    out = []
    for _, lines in parts.tables():
        out += _exact_part(places, lines, kind)
    return out


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


def _near(builds: list[BuildRows], places: _Places, max_distance: int, spill: Path,
          part_lines: int) -> list[tuple[tuple, dict[str, Any]]]:
    """Near-duplicate cases. Two pHashes within the distance agree exactly on at least one of
    distance + 1 bands, so each line is spilled to the part of each of its bands' values; a part
    then holds every line of each hash in it, and a pair is kept only by the part of the first
    band the two hashes agree on (each pair once)."""
    spec = bands(max_distance, 0)
    parts = _Spill(spill / "phash", _part_count(sum(b.lines for b in builds), len(spec), part_lines))
    for batch in _stream(builds, places, ["id", "sha256", "phash"]):
        ok = pc.and_(pc.is_valid(batch["phash"]), pc.fill_null(pc.not_equal(batch["sha256"], ""), False))
        lines = batch.filter(ok)
        if parts.parts == 1 or not lines.num_rows:
            parts.add(lines, None)
            continue
        phash = lines["phash"].to_numpy()
        owners: list[np.ndarray] = []
        for band in range(len(spec)):
            own = _band_part(phash, band, spec, parts.parts)
            first = np.ones(len(own), dtype=bool)  # a part gets a line once, however many bands lead there
            for earlier in owners:
                first &= own != earlier
            owners.append(own)
            parts.add(lines.filter(pa.array(first)), own[first])
    out = []
    for number, lines in parts.tables():
        out += _near_part(places, lines, max_distance, spec, (number, parts.parts))
    return out


def _near_part(places: _Places, lines: pa.Table, max_distance: int, spec: list[tuple[int, int]],
               part: tuple[int, int]) -> list[tuple[tuple, dict[str, Any]]]:
    """Near-duplicate cases within one part: a pair of pHashes within the distance, at a training
    and an evaluation location, where some image on each side has other bytes than some image on
    the other (the same bytes are sha256's case). Per (hash, loc): how many distinct images, and
    the only one where there is one; a side's rows are those whose image differs from the other
    side's only one."""
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
    train_hashes = np.unique(train["phash"].to_numpy())
    eval_hashes = np.unique(held_out["phash"].to_numpy())
    i, j, d = near_pairs(train_hashes, eval_hashes, max_distance)
    a, b = train_hashes[i], eval_hashes[j]
    number, count = part
    if count > 1:  # keep the pairs whose first agreeing band leads here
        agree = np.stack([((a ^ b) >> np.uint64(shift)) & np.uint64((1 << width) - 1 if width < 64 else (1 << 64) - 1)
                          for shift, width in spec]) == 0
        first = np.argmax(agree, axis=0)
        owner = np.full(len(a), -1, dtype=np.int64)
        for band in range(len(spec)):
            at = first == band
            owner[at] = _band_part(a[at], band, spec, count)
        mine = owner == number
        a, b, d = a[mine], b[mine], d[mine]
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


def find_cases(builds: list[BuildRows], max_distance: int, part_lines: int = PART_LINES,
               spill: Path | None = None) -> list[dict[str, Any]]:
    """One dict per (kind, key, training side, evaluation side), sorted by kind, then sides. Parts
    past the first are spilled under `spill` (default: the system's temporary folder)."""
    places = _places(builds)
    found: list[tuple[tuple, dict[str, Any]]] = []
    if places.locs and any(b.lines for b in builds):
        with tempfile.TemporaryDirectory(prefix="radcorpora-leakage-", dir=spill) as folder:
            for kind in EXACT_KINDS:
                found += _exact(builds, places, kind, Path(folder), part_lines)
            found += _near(builds, places, max_distance, Path(folder), part_lines)
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
