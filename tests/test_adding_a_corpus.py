"""docs/adding-a-corpus.md, followed: a corpus package defined in tests/ (toy_corpus), registered
with the registry's one line, runs through corpora, build, validate, preview, export, the card and
estimate, with its generated commands."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from radcorpora import cli
from radcorpora.registry import CORPORA, load_specs

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    (spec,) = load_specs(("toy_corpus",)).values()  # the registry's line for a corpus package
    cli.add_corpus(spec)
    root = tmp_path_factory.mktemp("toy")
    sources = spec.demo.write_sources(root / "sources", {})
    yield spec, sources, root
    CORPORA.pop(spec.name)
    for app in (cli.build_app, cli.estimate_app):
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != spec.name]


def test_a_corpus_package_runs_through_every_command(toy, tmp_path):
    spec, sources, root = toy
    listing = invoke("corpora")
    assert "toy-findings" in listing.output and "captions (train, validation)" in listing.output

    help_text = invoke("build", "toy-findings", "--help").output
    assert "--source" in help_text and "Model writing the captions" in help_text  # flags and help from the spec

    cache = tmp_path / "cache.sqlite"
    before = invoke("estimate", "toy-findings", "--source", sources["source"], "--cache", cache, "--json")
    assert before.exit_code == 0, before.output
    stage = json.loads(before.output)["stages"][0]
    assert (stage["stage"], stage["requests"], stage["already_cached"]) == ("toy_caption", 6, 0)

    out = tmp_path / "build"
    built = invoke("build", "toy-findings", "--source", sources["source"], "--out", out, "--cache", cache,
                   "--workers", "1")
    assert built.exit_code == 0, built.output
    manifest = json.loads((out / "build/manifest.json").read_text())
    assert manifest["splits"] == {"captions": {"train": 5, "validation": 1}, "labels": {"train": 5, "validation": 1}}
    assert manifest["rejects"] == {"image_file_missing": 1}
    caption = manifest["llm"]["pipeline"]["stages"]["caption"]
    assert caption["requests"] == 6 and caption["sent"] == 2  # two findings: identical requests are sent once

    after = invoke("estimate", "toy-findings", "--source", sources["source"], "--out", out, "--cache", cache, "--json")
    assert json.loads(after.output)["stages"][0]["already_cached"] == 6  # the build command, verb changed

    validated = invoke("validate", out)
    assert validated.exit_code == 0, validated.output
    report = json.loads((out / "build/validation.json").read_text())
    names = {c["name"]: c["violations"] for c in report["checks"]}
    assert names["answer_names_finding"] == 0 and names["captions_have_labels"] == 0

    card = (out / "README.md").read_text()
    assert "# Toy findings" in card and "config_name: captions" in card and "image_file_missing" in card

    preview = invoke("preview", out, "--out", tmp_path / "preview.html")
    assert preview.exit_code == 0, preview.output
    assert "The image shows a nodule." in (tmp_path / "preview.html").read_text()

    exported = invoke("export", out, "--format", "sharegpt", "--out", tmp_path / "sharegpt")
    assert exported.exit_code == 0, exported.output
    rows = [json.loads(line) for p in (tmp_path / "sharegpt").glob("*.json*") if p.name != "export_settings.json"
            for line in ([p.read_text()] if p.suffix == ".json" else p.read_text().splitlines())]
    examples = [e for doc in rows for e in (doc if isinstance(doc, list) else [doc]) if isinstance(e, dict)]
    assert any("nodule" in json.dumps(e) for e in examples)


def test_a_broken_row_rule_fails_both_the_build_and_validate(toy, tmp_path, monkeypatch):
    """The declared row rule runs at the end of the build and in validate, with one verdict."""
    spec, sources, _ = toy
    import toy_corpus.build as toy_build

    record = toy_build._record
    monkeypatch.setattr(toy_build, "_record", lambda row, answer, question, models: record(
        row, "unclear" if row["id"] == "img2" else answer, question, models))
    out = tmp_path / "bad"
    built = invoke("build", "toy-findings", "--source", sources["source"], "--out", out, "--cache",
                   tmp_path / "c.sqlite", "--workers", "1")
    assert built.exit_code == 1 and "failed: answer_names_finding" in built.output
    at_build = {c["name"]: c["violations"] for c in json.loads((out / "build/validation.json").read_text())["checks"]}
    validated = invoke("validate", out)
    assert validated.exit_code == 1
    again = {c["name"]: c["violations"] for c in json.loads((out / "build/validation.json").read_text())["checks"]}
    assert at_build["answer_names_finding"] == again["answer_names_finding"] == 2  # img2 in both configs
