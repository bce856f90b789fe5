from typer.testing import CliRunner

from radcorpora.cli import app


def test_demo_builds_and_validates(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--images-per-class", "5", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "radimagenet-vqa/README.md").exists()
    assert (tmp_path / "sources/radimagenet/RadiologyAI_test.csv").exists()
    again = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--images-per-class", "5", "--workers", "1"])
    assert again.exit_code == 0 and "already complete" in again.output
