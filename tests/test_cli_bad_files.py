"""Files a user hands the command line that are not what they should be (bytes that are not UTF-8,
a file that is not an answer cache, a folder where a file goes): one line naming the file, exit 2,
no traceback. The price table and the cache ended in tracebacks inside the build before."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from radcorpora.cli import app

NOT_UTF8 = b"\xa0\xff\xfe not text \x00\x81"


@pytest.fixture(scope="module")
def pubmedvision(tmp_path_factory) -> Path:
    from radcorpora.demo.pubmedvision import write_demo_pubmedvision

    root = tmp_path_factory.mktemp("pmv") / "pubmedvision"
    write_demo_pubmedvision(root)
    return root


@pytest.fixture
def junk(tmp_path) -> Path:
    path = tmp_path / "junk.bin"
    path.write_bytes(NOT_UTF8)
    return path


@pytest.mark.parametrize("option,message", [
    ("--label-map", "not UTF-8 text"),
    ("--templates", "not UTF-8 text"),
])
def test_radimagenet_vqa_files(demo_source, tmp_path, junk, option, message):
    result = CliRunner().invoke(app, ["build", "radimagenet-vqa", "--source", str(demo_source), "--out",
                                      str(tmp_path / "out"), option, str(junk)])
    assert result.exit_code == 2 and f"{junk}: {message}" in result.output, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("option,message", [
    ("--prompt", "not UTF-8 text"),
    ("--prices", "not a price table"),
    ("--cache", "not an answer cache (SQLite)"),
    ("--cache-folder", "not an answer cache (SQLite)"),
])
def test_llm_corpus_files(pubmedvision, tmp_path, junk, option, message):
    target = junk
    if option == "--cache-folder":
        option, target = "--cache", tmp_path / "a-folder"
        target.mkdir()
    args = ["build", "rad-ace-cot", "--source", str(pubmedvision), "--out", str(tmp_path / "out"), "--llm", "offline",
            option, str(target)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and f"{target}: {message}" in result.output, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (KeyError, ValueError))
    estimate = CliRunner().invoke(app, ["estimate", "rad-ace-cot", "--source", str(pubmedvision), "--llm",
                                        "openai:gpt-4o", option, str(target)])
    assert estimate.exit_code == 2 and message in estimate.output and "Traceback" not in estimate.output


def test_broken_yaml_is_one_line_with_where(demo_source, pubmedvision, tmp_path):
    """A YAML file that does not parse: the file, the line and column, and what is wrong, on one line
    (PyYAML's own message spans four lines with a caret drawing)."""
    from radcorpora.schemas.file_errors import yaml_problem

    broken = tmp_path / "broken.yaml"
    broken.write_text("slots: [one,\n  two\n")
    import yaml

    with pytest.raises(yaml.YAMLError) as raised:
        yaml.safe_load(broken.read_text())
    mark = raised.value.problem_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: "
    assert yaml_problem(raised.value).startswith(where)
    runs = [["build", "radimagenet-vqa", "--source", str(demo_source), "--out", str(tmp_path / "a"), "--label-map",
             str(broken)],
            ["build", "radimagenet-vqa", "--source", str(demo_source), "--out", str(tmp_path / "b"), "--templates",
             str(broken)],
            ["build", "rad-ace-cot", "--source", str(pubmedvision), "--out", str(tmp_path / "c"), "--llm", "offline",
             "--prices", str(broken)],
            ["build", "rad-ace-cot", "--source", str(pubmedvision), "--out", str(tmp_path / "d"), "--llm", "offline",
             "--prompt", str(broken)]]
    for args in runs:
        result = CliRunner().invoke(app, args)
        error = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert result.exit_code == 2 and len(error) == 1, result.output
        assert f"{broken}: " in error[0] and where in error[0] and result.output.rstrip().endswith(error[0])


def test_a_cache_locked_past_the_timeout_is_not_called_broken(monkeypatch, tmp_path):
    import sqlite3

    from radcorpora.llm import cache
    from radcorpora.llm.errors import CacheFileError

    def locked(*_args, **_kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(cache.sqlite3, "connect", locked)
    with pytest.raises(CacheFileError, match="in use by another process") as raised:
        cache.AnswerCache(tmp_path / "c.sqlite")
    assert "not an answer cache" not in str(raised.value)
