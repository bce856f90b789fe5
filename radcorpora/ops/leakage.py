"""The leakage join: every patient, study and image that sits in a training split of one build
(or config) and an evaluation split of another. Exact identities (namespaced patient, study and
source image ids, image sha256) are grouped by key; near-duplicate images by pHash through the
banded neighbour search of ops.phash. Within one build only different configs are compared (a
config's own splits are the builder's business)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from radcorpora.ops.phash import near_pairs
from radcorpora.schemas.identity import KINDS, patient_key, source_key, split_role, study_key

Loc = tuple[int, str, str]  # (build number, config, split)


@dataclass(frozen=True)
class BuildRows:
    """One build's index lines: `columns` as IDENTITY_SCHEMA names them, `row` numbered within
    its split (shards in order)."""

    name: str
    columns: dict[str, list[Any]]


def build_rows(name: str, table: Any, rows: dict[str, int]) -> BuildRows:
    """An identity index (IDENTITY_SCHEMA table; `rows`: shard -> its row count) with each row
    numbered within its split, shards in order, as the report and `mix --resolve` number them."""
    columns = table.to_pydict()
    offsets: dict[str, int] = {}
    seen: dict[tuple[str, str], int] = {}
    for shard in sorted(rows):
        config, split = shard.split("/")[1], shard.rsplit("/", 1)[-1].rsplit("-", 3)[0]
        offsets[shard] = seen.get((config, split), 0)
        seen[(config, split)] = offsets[shard] + rows[shard]
    columns["row"] = [offsets[s] + r for s, r in zip(columns["shard"], columns["row"])]
    return BuildRows(name, columns)


def _allowed(train: Loc, held_out: Loc) -> bool:
    return train[0] != held_out[0] or train[1] != held_out[1]


def find_cases(builds: list[BuildRows], max_distance: int) -> list[dict[str, Any]]:
    """One dict per (kind, key, training side, evaluation side), sorted by kind, then sides."""
    exact: dict[str, dict[str, dict[str, dict[Loc, set[int]]]]] = {
        kind: {"train": defaultdict(lambda: defaultdict(set)), "eval": defaultdict(lambda: defaultdict(set))}
        for kind in ("patient", "study", "source_id", "sha256")}
    # role -> phash -> loc -> sha256 -> rows
    near: dict[str, dict[int, dict[Loc, dict[str, set[int]]]]] = {
        "train": defaultdict(lambda: defaultdict(lambda: defaultdict(set))),
        "eval": defaultdict(lambda: defaultdict(lambda: defaultdict(set)))}
    ids: dict[tuple[Loc, int], str | None] = {}
    for number, build in enumerate(builds):
        c = build.columns
        for n in range(len(c["row"])):
            role = split_role(c["split"][n])
            if role is None:
                continue
            loc, row, source = (number, c["config"][n], c["split"][n]), c["row"][n], c["source_dataset"][n]
            ids[(loc, row)] = c["id"][n]
            keys = {"patient": patient_key(source, c["patient_id"][n]), "study": study_key(source, c["study_id"][n]),
                    "source_id": source_key(source, c["source_id"][n]), "sha256": c["sha256"][n]}
            for kind, key in keys.items():
                if key:
                    exact[kind][role][key][loc].add(row)
            if c["phash"][n] is not None and c["sha256"][n]:
                near[role][c["phash"][n]][loc][c["sha256"][n]].add(row)

    def side(loc: Loc, key: str, rows: set[int]) -> dict[str, Any]:
        ordered = sorted(rows)
        return {"build": builds[loc[0]].name, "config": loc[1], "split": loc[2], "key": key, "rows": ordered,
                "ids": [ids[(loc, r)] for r in ordered]}

    cases: list[tuple[tuple, dict[str, Any]]] = []
    for order, (kind, by_role) in enumerate(exact.items()):
        for key in sorted(by_role["train"].keys() & by_role["eval"].keys()):
            for tloc, trows in by_role["train"][key].items():
                for eloc, erows in by_role["eval"][key].items():
                    if _allowed(tloc, eloc):
                        cases.append(((order, tloc, eloc, key),
                                      {"kind": kind, "train": side(tloc, key, trows), "eval": side(eloc, key, erows)}))
    order = list(KINDS).index("phash")
    train_hashes = np.array(sorted(near["train"]), dtype=np.uint64)
    eval_hashes = np.array(sorted(near["eval"]), dtype=np.uint64)
    for i, j, d in zip(*near_pairs(train_hashes, eval_hashes, max_distance)):
        a, b = int(train_hashes[i]), int(eval_hashes[j])
        tkey, ekey = f"{a:016x}", f"{b:016x}"
        for tloc, tshas in near["train"][a].items():
            for eloc, eshas in near["eval"][b].items():
                if not _allowed(tloc, eloc):
                    continue
                # rows whose image has other bytes than some image on the far side (same bytes: sha256's case)
                trows = {r for s, rows in tshas.items() if set(eshas) - {s} for r in rows}
                erows = {r for s, rows in eshas.items() if set(tshas) - {s} for r in rows}
                if trows and erows:
                    cases.append(((order, tloc, eloc, tkey + ekey),
                                  {"kind": "phash", "distance": int(d), "train": side(tloc, tkey, trows),
                                   "eval": side(eloc, ekey, erows)}))
    return [case for _, case in sorted(cases, key=lambda item: item[0])]


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
