"""A mix's own rules, run at the end of `radcorpora mix` and by `radcorpora validate`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from radcorpora.spec.report import ValidationReport
from radcorpora.store.folder import all_shards, read_columns

RULES = {
    "inputs_match_manifest": "every row names an input the manifest lists (corpus, config), in the numbers the "
                             "manifest records per input and split",
    "leakage_settled": "leakage found between the inputs was either absent, dropped (--resolve drop-train) or "
                       "allowed on purpose (--allow-leakage), as the manifest records",
}


def validate_mix(build: Path, report: ValidationReport, manifest: dict[str, Any], **_options: Any) -> None:
    mix = manifest.get("mix") or {}
    entries = mix.get("inputs") or []
    labels = {(e.get("corpus"), e.get("config")): e for e in entries}
    check = report.check("inputs_match_manifest", RULES["inputs_match_manifest"])
    found: Counter = Counter()
    for shard in all_shards(build):
        table = read_columns(shard.path, ["corpus", "config"])
        for corpus, config in zip(table.column("corpus").to_pylist(), table.column("config").to_pylist()):
            check.checked += 1
            if (corpus, config) not in labels:
                check.fail(f"{shard.rel(build)}: a row from {corpus}:{config}, which is not an input of this mix")
            found[(corpus, config, shard.split)] += 1
    expected: Counter = Counter()
    for entry in entries:
        for split, n in (entry.get("rows") or {}).items():
            expected[(entry.get("corpus"), entry.get("config"), split)] += n
    for key in sorted(set(found) | set(expected), key=str):
        if found[key] != expected[key]:
            check.fail(f"{key[0]}:{key[1]} {key[2]}: {found[key]} rows, the manifest says {expected[key]}")
    settled = report.check("leakage_settled", RULES["leakage_settled"])
    cases = int((mix.get("leakage") or {}).get("cases", 0) or 0)
    settled.checked += 1
    if cases and not (mix.get("allow_leakage") or mix.get("resolve") == "drop-train"):
        settled.fail(f"{cases} leakage cases recorded, neither dropped nor allowed")
    if mix.get("resolve") == "drop-train" and cases and not mix.get("dropped_train_rows"):
        settled.fail(f"{cases} leakage cases and --resolve drop-train, but no training row was dropped")
