"""A row rule declared for some configs is checked (and counted) on those configs' rows only."""

from __future__ import annotations

import pyarrow as pa
import pytest

from radcorpora.spec.rules import RowRules, UndeclaredRule, record_row_findings
from radcorpora.store.state import ChunkResult


def _rules(report_on_other: bool = False) -> RowRules:
    def check(config: str, table: pa.Table) -> dict[str, list[int]]:
        broken = {"everywhere": [0]}
        if config == "qa" or report_on_other:
            broken["qa_only"] = [1]
        return broken

    return RowRules({"everywhere": "every config", "qa_only": "qa rows"}, check, configs={"qa_only": frozenset({"qa"})})


def test_a_scoped_rule_counts_only_the_rows_it_applies_to():
    table = pa.table({"id": ["a", "b", "c"]})
    rules = _rules()
    assert rules.findings("qa", table) == {"everywhere": [0], "qa_only": [1]}
    assert rules.findings("narrative", table) == {"everywhere": [0]}
    result = ChunkResult(chunk_id="x", shards={})
    record_row_findings(result, rules, "qa", table, "qa/train")
    record_row_findings(result, rules, "narrative", table, "narrative/train")
    assert result.checked == {"everywhere": 6, "qa_only": 3}
    assert result.violation_counts == {"everywhere": 2, "qa_only": 1}


def test_a_scoped_rule_reported_on_another_config_is_an_error():
    with pytest.raises(UndeclaredRule, match="do not apply to"):
        _rules(report_on_other=True).findings("narrative", pa.table({"id": ["a", "b"]}))
