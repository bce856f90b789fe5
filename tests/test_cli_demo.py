import json

import pytest
from typer.testing import CliRunner

from radcorpora.cli import app


@pytest.mark.slow
def test_demo_builds_validates_and_passes_the_reference_check(tmp_path):
    pytest.importorskip("torch")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sources/radimagenet/RadiologyAI_test.csv").exists()
    report = json.loads((tmp_path / "radimagenet-vqa/build/reference_check.json").read_text())
    assert report["passed"] and report["gap"] >= 5.0
    # the anatomy questions are answerable from the pixels, and the twin cannot see them
    image, text = report["image"]["metrics"]["by_task_and_type"], report["text_only"]["metrics"]["by_task_and_type"]
    assert image["anatomy/open"] > text["anatomy/open"] + 50
    card = (tmp_path / "radimagenet-vqa/README.md").read_text()
    assert card.count("## Reference check") == 1 and "`radcorpora check` passed" in card
    again = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--workers", "1"])
    assert again.exit_code == 0 and "already complete" in again.output
    assert (tmp_path / "radimagenet-vqa/README.md").read_text().count("## Reference check") == 1


def test_demo_without_the_check(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--images-per-class", "5", "--workers", "1",
                                      "--no-check"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "radimagenet-vqa/README.md").exists()
    assert not (tmp_path / "radimagenet-vqa/build/reference_check.json").exists()


def test_demo_out_that_cannot_hold_the_sources_is_one_line_exit_2(tmp_path):
    """A file given as --out, or a file where a demo source folder goes: `error: ...`, exit 2,
    no traceback (it ended in NotADirectoryError)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = CliRunner().invoke(app, ["demo", "--out", str(afile), "--no-check"])
    assert result.exit_code == 2 and "is a file; give a folder" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    blocked = tmp_path / "blocked"
    (blocked / "sources").mkdir(parents=True)
    (blocked / "sources/radimagenet").write_text("in the way")
    result = CliRunner().invoke(app, ["demo", "--out", str(blocked), "--no-check"])
    assert result.exit_code == 2 and "cannot write the demo sources of radimagenet-vqa" in result.output
    assert "Traceback" not in result.output
