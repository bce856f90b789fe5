"""The leakage join: every patient, study and image that sits in a training split of one build
(or config) and an evaluation split of another. Exact identities (namespaced patient, study and
source image ids, image sha256) are joined on (key, location) as Arrow tables (group-by and hash
join, no Python object per index line); near-duplicate images by pHash through the neighbour
search of ops.phash on numpy arrays. Python objects are made only for the cases found: the
driver's memory follows the index (about 100-200 B a line), not one dict per row. Within one
build only different configs are compared (a config's own splits are the builder's business)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from radcorpora.ops.phash import near_pairs
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
_COLUMNS = ["loc", "row", "id", "source_dataset", "source_id", "patient_id", "study_id", "sha256", "phash"]


@dataclass(frozen=True)
class BuildRows:
    """One build's index lines as Arrow: `table` holds `loc` (an index into `locs`, its (config,
    split)), `row` (numbered within its split, shards in order) and the identity columns of
    IDENTITY_SCHEMA; the shard, config and split strings are not kept per line."""

    name: str
    locs: list[tuple[str, str]]
    table: pa.Table


def build_rows(name: str, table: pa.Table, rows: dict[str, int]) -> BuildRows:
    """An identity index (IDENTITY_SCHEMA table; `rows`: shard -> its row count) with each row
    numbered within its split, shards in order, as the report and `mix --resolve` number them.
    Per shard work in Python (offsets, config and split), per line only Arrow and numpy."""
    offsets: dict[str, int] = {}
    seen: dict[tuple[str, str], int] = {}
    for shard in sorted(rows):
        config, split = shard.split("/")[1], shard.rsplit("/", 1)[-1].rsplit("-", 3)[0]
        offsets[shard] = seen.get((config, split), 0)
        seen[(config, split)] = offsets[shard] + rows[shard]
    if table.num_rows == 0:
        empty = pa.table({"loc": pa.array([], pa.int32()), "row": pa.array([], pa.int64())})
        for column in _COLUMNS[2:]:
            empty = empty.append_column(column, pa.array([], table.schema.field(column).type))
        return BuildRows(name, [], empty)
    shard = pc.dictionary_encode(table["shard"].combine_chunks())
    codes = shard.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    shards = shard.dictionary.to_pylist()
    _, first = np.unique(codes, return_index=True)  # a line of each shard: its config and split columns
    configs = table["config"].take(pa.array(first)).to_pylist()
    splits = table["split"].take(pa.array(first)).to_pylist()
    locs = sorted(set(zip(configs, splits)))
    loc_of_shard = np.array([locs.index(cs) for cs in zip(configs, splits)], dtype=np.int32)
    offset_of_shard = np.array([offsets[s] for s in shards], dtype=np.int64)
    numbered = table["row"].to_numpy() + offset_of_shard[codes]  # a chunked column: one numpy copy
    columns = {"loc": pa.array(loc_of_shard[codes]), "row": pa.array(numbered)}
    columns.update({c: table[c] for c in _COLUMNS[2:]})  # the index's own buffers, not copies
    return BuildRows(name, locs, pa.table(columns))


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


# -- the join ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lines:
    """All builds' index lines in a training or evaluation split, as Arrow columns: `loc` numbers
    the locations in sorted (build, config, split) order; `line` indexes `ids`."""

    locs: list[Loc]
    role: np.ndarray  # per loc: True = train, False = eval
    group: np.ndarray  # per loc: (build, config) number; two locs may be compared when theirs differ
    table: pa.Table  # loc, row, line, source_dataset, source_id, patient_id, study_id, sha256, phash
    ids: pa.Array


def _lines(builds: list[BuildRows]) -> _Lines:
    every = sorted({(number, config, split) for number, build in enumerate(builds) for config, split in build.locs
                    if split_role(split) is not None})
    number_of = {loc: k for k, loc in enumerate(every)}
    groups = {(b, c) for b, c, _ in every}
    group_of = {g: k for k, g in enumerate(sorted(groups))}
    parts = []
    for number, build in enumerate(builds):
        local = np.array([number_of.get((number, c, s), -1) for c, s in build.locs] + [-1], dtype=np.int32)
        loc = local[build.table["loc"].to_numpy(zero_copy_only=False)] if build.table.num_rows else \
            np.zeros(0, np.int32)
        part = build.table.set_column(0, "loc", pa.array(loc))
        parts.append(part if (loc >= 0).all() else part.filter(pa.array(loc >= 0)))
    table = pa.concat_tables(parts) if parts else None  # chunks: the builds' buffers, not a copy
    if table is None:
        table = pa.table({c: pa.array([], pa.int64()) for c in _COLUMNS})
    table = table.append_column("line", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    role = np.array([split_role(s) == "train" for _, _, s in every], dtype=bool)
    group = np.array([group_of[(b, c)] for b, c, _ in every], dtype=np.int64)
    return _Lines(every, role, group, table.drop_columns(["id"]), table["id"])


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


def _sides(lines: _Lines, table: pa.Table, key: str) -> tuple[pa.Table, pa.Table]:
    """Distinct (key, loc) of the training lines and of the evaluation lines."""
    distinct = table.group_by([key, "loc"], use_threads=False).aggregate([])
    train = pa.array(lines.role[distinct["loc"].to_numpy()])
    return distinct.filter(train), distinct.filter(pc.invert(train))


def _compared(lines: _Lines, pairs: pa.Table) -> pa.Table:
    """The (train loc, eval loc) pairs that count: another build, or another config of one."""
    keep = lines.group[pairs["tloc"].to_numpy()] != lines.group[pairs["eloc"].to_numpy()]
    return pairs.filter(pa.array(keep))


def _rows_of(lines: _Lines, table: pa.Table, on: list[str], wanted: pa.Table) -> dict[tuple, tuple[list, list]]:
    """(on values...) -> (rows sorted, their ids) for the lines of `table` matching `wanted` on `on`:
    Python objects for the reported lines only."""
    if wanted.num_rows == 0:
        return {}
    hit = table.select([*on, "row", "line"]).join(wanted.select(on).group_by(on, use_threads=False).aggregate([]),
                                                 keys=on, join_type="left semi", use_threads=False)
    hit = hit.group_by([*on, "row"], use_threads=False).aggregate([("line", "min")])
    hit = hit.sort_by([(c, "ascending") for c in on] + [("row", "ascending")])
    ids = lines.ids.take(hit["line_min"]).to_pylist()
    out: dict[tuple, tuple[list, list]] = {}
    for values in zip(*(hit[c].to_pylist() for c in on), hit["row"].to_pylist(), ids):
        rows, names = out.setdefault(tuple(values[:-2]), ([], []))
        rows.append(values[-2])
        names.append(values[-1])
    return out


def _exact(lines: _Lines, kind: str) -> list[tuple[tuple, dict[str, Any]]]:
    t = lines.table
    source = t["source_dataset"]
    value = t["sha256" if kind == "sha256" else {"patient": "patient_id", "study": "study_id",
                                                  "source_id": "source_id"}[kind]]
    keys = _flat(value) if kind == "sha256" else identity_keys(kind, source, value)
    valid = pc.fill_null(pc.not_equal(keys, ""), False)  # no key: null or empty
    # each distinct key as a number (group-by and join on integers hold far less memory than on
    # strings); the strings are looked up again for the cases found
    keys = keys.filter(valid)
    numbers, place = _numbered(keys)
    table = pa.table({"key": numbers, "loc": t["loc"].filter(valid), "row": t["row"].filter(valid),
                      "line": t["line"].filter(valid)})
    del valid
    train, held_out = _sides(lines, table, "key")
    pairs = train.rename_columns(["key", "tloc"]).join(held_out.rename_columns(["key", "eloc"]), keys="key",
                                                       join_type="inner", use_threads=False)
    pairs = _compared(lines, pairs)
    wanted = pa.concat_tables([pairs.select(["key", "tloc"]).rename_columns(["key", "loc"]),
                               pairs.select(["key", "eloc"]).rename_columns(["key", "loc"])])
    rows = _rows_of(lines, table, ["key", "loc"], wanted)
    order = list(KINDS).index(kind)
    out = []
    names = keys.take(pa.array(place[pairs["key"].to_numpy()])).to_pylist()
    for name, code, tloc, eloc in zip(names, pairs["key"].to_pylist(), pairs["tloc"].to_pylist(),
                                      pairs["eloc"].to_pylist()):
        tl, el = lines.locs[tloc], lines.locs[eloc]
        out.append(((order, tl, el, name), {"kind": kind, "train": (tl, name, rows[(code, tloc)]),
                                            "eval": (el, name, rows[(code, eloc)])}))
    return out


def _near(lines: _Lines, max_distance: int) -> list[tuple[tuple, dict[str, Any]]]:
    """Near-duplicate cases: a pair of pHashes within the distance, at a training and an evaluation
    location, where some image on each side has other bytes than some image on the other (the
    same bytes are sha256's case). Per (hash, loc): how many distinct images, and the only one
    where there is one; a side's rows are those whose image differs from the other side's only one."""
    t = lines.table
    ok = pc.and_(pc.is_valid(t["phash"]), pc.fill_null(pc.not_equal(t["sha256"], ""), False))
    table = t.select(["phash", "sha256", "loc", "row", "line"]).filter(ok)
    image, _ = _numbered(t["sha256"].filter(ok).combine_chunks())  # each distinct image as a number
    table = t.select(["phash", "loc", "row", "line"]).filter(ok).append_column("image", image)
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
    train_mask = pa.array(lines.role[per["loc"].to_numpy()])
    train, held_out = per.filter(train_mask), per.filter(pc.invert(train_mask))
    train_hashes = np.unique(train["phash"].to_numpy())
    eval_hashes = np.unique(held_out["phash"].to_numpy())
    i, j, d = near_pairs(train_hashes, eval_hashes, max_distance)
    pairs = pa.table({"thash": pa.array(train_hashes[i], pa.uint64()), "ehash": pa.array(eval_hashes[j], pa.uint64()),
                      "distance": pa.array(d, pa.int64())})
    pairs = pairs.join(train.rename_columns(["thash", "tloc", "tn", "tone"]), keys="thash", join_type="inner",
                       use_threads=False)
    pairs = pairs.join(held_out.rename_columns(["ehash", "eloc", "en", "eone"]), keys="ehash", join_type="inner",
                       use_threads=False)
    pairs = _compared(lines, pairs)
    same = pc.and_(pc.and_(pc.equal(pairs["tn"], 1), pc.equal(pairs["en"], 1)), pc.equal(pairs["tone"], pairs["eone"]))
    pairs = pairs.filter(pc.invert(same))
    # a side's rows: its lines whose image is not the far side's only image
    sides = []
    for me, far in (("t", "e"), ("e", "t")):
        side = pairs.select([f"{me}hash", f"{me}loc", f"{far}n", f"{far}one"]).rename_columns(
            ["phash", "loc", "far_n", "far_one"])
        side = side.group_by(["phash", "loc", "far_n", "far_one"], use_threads=False).aggregate([])
        hit = table.join(side, keys=["phash", "loc"], join_type="inner", use_threads=False)
        keep = pc.or_(pc.greater(hit["far_n"], 1), pc.not_equal(hit["image"], hit["far_one"]))
        sides.append(hit.filter(keep))
    rows = [_rows_of(lines, hit, ["phash", "loc", "far_n", "far_one"], hit) for hit in sides]
    order = list(KINDS).index("phash")
    out = []
    for a, b, dist, tloc, eloc, tn, tone, en, eone in zip(*(pairs[c].to_pylist() for c in (
            "thash", "ehash", "distance", "tloc", "eloc", "tn", "tone", "en", "eone"))):
        tl, el = lines.locs[tloc], lines.locs[eloc]
        tkey, ekey = f"{a:016x}", f"{b:016x}"
        out.append(((order, tl, el, tkey + ekey), {"kind": "phash", "distance": int(dist),
                                                   "train": (tl, tkey, rows[0][(a, tloc, en, eone)]),
                                                   "eval": (el, ekey, rows[1][(b, eloc, tn, tone)])}))
    return out


def find_cases(builds: list[BuildRows], max_distance: int) -> list[dict[str, Any]]:
    """One dict per (kind, key, training side, evaluation side), sorted by kind, then sides."""
    lines = _lines(builds)
    found: list[tuple[tuple, dict[str, Any]]] = []
    if lines.table.num_rows:
        for kind in EXACT_KINDS:
            found += _exact(lines, kind)
        found += _near(lines, max_distance)
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
