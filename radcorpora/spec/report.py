"""A validation report: named checks, each with its violations (counted, a few shown)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field, PrivateAttr

MAX_EXAMPLES = 5


class Check(BaseModel):
    name: str
    description: str
    checked: int = 0
    violations: int = 0
    examples: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.violations == 0

    def fail(self, example: str) -> None:
        self.violations += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)

    def expect(self, condition: bool, example: str) -> bool:
        self.checked += 1
        if not condition:
            self.fail(example)
        return condition

    def expect_unique(self, values: Iterable[str], seen: dict[str, str], where: str, what: str = "id") -> None:
        """Each value is checked once; one already in `seen` (value -> where it first appeared,
        shared across calls) fails, naming both places. The one loop behind every uniqueness
        check across shards; messages are only formatted for a repeat."""
        count = 0
        for value in values:
            count += 1
            first = seen.get(value)
            if first is None:
                seen[value] = where
            else:
                self.fail(f"{where}: duplicate {what} {value!r} (also in {first})")
        self.checked += count


class ValidationReport(BaseModel):
    corpus: str
    checks: list[Check] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    stats: dict[str, float | int | str] = Field(default_factory=dict)
    # Set once the rows have been parsed as record objects (`structure.iter_records`): later
    # passes over the same build (several rules iterate records) do not count them again.
    _records_parsed: bool = PrivateAttr(default=False)

    def check(self, name: str, description: str) -> Check:
        for existing in self.checks:
            if existing.name == name:
                return existing
        created = Check(name=name, description=description)
        self.checks.append(created)
        return created

    @property
    def valid(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def violations(self) -> int:
        return sum(c.violations for c in self.checks)

    def summary(self) -> dict:
        return {
            "valid": self.valid,
            "checks": len(self.checks),
            "failed_checks": [c.name for c in self.checks if not c.passed],
            "violations": self.violations,
            "warnings": self.warnings,
        }
