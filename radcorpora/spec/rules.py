"""A corpus' checks, declared once: per-row rules (vectorised over a batch of one config) and
corpus rules (over the whole build folder), each rule by name with what it checks.

The end of a build and `radcorpora validate` run the same declared set and report every rule,
passed ones included: the row rules in the chunk workers (build) or per shard (validate), the
corpus rules once over the folder. A rule a check function reports without declaring it is an
error, so a rule cannot be added in one place and missed in the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from radcorpora.spec.report import ValidationReport


class UndeclaredRule(ValueError):
    """A check function reported a rule its corpus did not declare."""


@dataclass(frozen=True)
class RowRules:
    """`names`: rule -> what it checks. `check(config, table)` returns, for the rules a batch
    breaks, the batch's row numbers that break them (rules it does not name passed). `configs`:
    rule -> the configs it applies to (a rule not named applies to every config), so a rule's
    `checked` count is the rows it was checked on, not every row of the build."""

    names: Mapping[str, str]
    check: Callable[[str, Any], Mapping[str, list[int]]]
    configs: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def applies(self, rule: str, config: str) -> bool:
        return rule not in self.configs or config in self.configs[rule]

    def findings(self, config: str, table: Any) -> dict[str, list[int]]:
        """Every declared rule that applies to `config` -> the rows of `table` breaking it (empty
        when it holds)."""
        broken = dict(self.check(config, table)) if table.num_rows else {}
        undeclared = sorted(set(broken) - set(self.names))
        if undeclared:
            raise UndeclaredRule(f"row rule(s) {', '.join(undeclared)} reported but not declared")
        outside = sorted(r for r in broken if not self.applies(r, config))
        if outside:
            raise UndeclaredRule(f"row rule(s) {', '.join(outside)} reported on {config!r}, which they do not apply to")
        return {name: sorted(int(r) for r in broken.get(name, ())) for name in self.names if self.applies(name, config)}


@dataclass(frozen=True)
class CorpusRules:
    """`names`: rule -> what it checks; `deep_names`: the ones `validate --deep` adds (object
    re-parses). `run(build, report, manifest, image_check=..., deep=...)` reports them on the
    report it is given."""

    names: Mapping[str, str]
    run: Callable[..., Any]
    deep_names: Mapping[str, str] = field(default_factory=dict)

    def apply(self, build: Any, report: ValidationReport, manifest: dict[str, Any], **options: Any) -> None:
        declared = {**self.names, **(self.deep_names if options.get("deep") else {})}
        for name, description in declared.items():
            report.check(name, description)
        known = {c.name for c in report.checks}
        self.run(build, report, manifest, **options)
        undeclared = sorted({c.name for c in report.checks} - known)
        if undeclared:
            raise UndeclaredRule(f"corpus rule(s) {', '.join(undeclared)} reported but not declared")


def record_row_findings(result: Any, rules: RowRules | None, config: str, table: Any, where: str,
                        first_row: int = 0, examples: int = 5) -> None:
    """A chunk worker's share of the row rules: every declared rule counted as checked on the
    batch, the broken ones with up to `examples` rows named per shard (`result`: a ChunkResult)."""
    if rules is None:
        return
    for rule, rows in rules.findings(config, table).items():
        result.checked[rule] = result.checked.get(rule, 0) + table.num_rows
        if rows:
            shown = result.violations.setdefault(rule, [])
            room = examples - sum(1 for e in shown if e.startswith(f"{where} "))
            shown.extend(f"{where} row {first_row + r}: breaks {rule}" for r in rows[:max(room, 0)])
            result.violation_counts[rule] = result.violation_counts.get(rule, 0) + len(rows)
