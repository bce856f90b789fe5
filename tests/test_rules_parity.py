"""Checks are declared once: the end of a build and `radcorpora validate` run the same rules and
report every one of them, passed ones included, with the same verdicts (issue 20 item 3)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.registry import CORPORA
from radcorpora.spec.report import ValidationReport
from radcorpora.spec.rules import CorpusRules, RowRules, UndeclaredRule


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--images-per-class", "5", "--workers", "2",
                                      "--no-check"])
    assert result.exit_code == 0, result.output
    return out


def verdicts(report: dict) -> dict[str, bool]:
    return {check["name"]: check["violations"] == 0 for check in report["checks"]}


@pytest.mark.parametrize("name", sorted(n for n, spec in CORPORA.items() if spec.demo is not None))
def test_build_and_validate_report_the_same_rules_with_the_same_verdicts(demo, name):
    import json

    from radcorpora.registry import validate

    spec = CORPORA[name]
    at_build = json.loads((demo / name / "build/validation.json").read_text())
    again = json.loads(validate(demo / name, workers=1).model_dump_json())
    assert verdicts(at_build) == verdicts(again)
    declared = set(spec.rules.names) | set(spec.row_rules.names if spec.row_rules else ())
    assert declared <= set(verdicts(again)), declared - set(verdicts(again))
    assert {"record_schema", "shard_checksums", "unique_ids", "counts_match_manifest", "configs_not_empty"} <= set(
        verdicts(again))
    assert all(verdicts(again).values()), [c for c, ok in verdicts(again).items() if not ok]


def test_a_rule_reported_but_not_declared_is_refused():
    report = ValidationReport(corpus="x")
    rules = CorpusRules({"declared": "a rule"}, lambda build, report, manifest, **_: report.check("sneaky", "?"))
    with pytest.raises(UndeclaredRule, match="sneaky"):
        rules.apply(None, report, {})
    row = RowRules({"declared": "a rule"}, lambda config, table: {"other": [1]})

    class Table:
        num_rows = 3
    with pytest.raises(UndeclaredRule, match="other"):
        row.findings("c", Table())


def test_passed_and_empty_rules_are_listed():
    class Table:
        num_rows = 2
    row = RowRules({"a": "first", "b": "second"}, lambda config, table: {"b": [1]})
    assert row.findings("c", Table()) == {"a": [], "b": [1]}
    report = ValidationReport(corpus="x")
    CorpusRules({"c": "third"}, lambda build, report, manifest, **_: None).apply(None, report, {})
    assert [(c.name, c.passed) for c in report.checks] == [("c", True)]
