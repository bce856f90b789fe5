"""Lazy corpus loading: a command imports only the corpus it names (the registry holds names and
packages; `build` and `estimate` generate a corpus' command on first use), and the lazily made
commands and listings are the ones an eager registration gives."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from radcorpora import cli
from radcorpora.commands.corpus import corpus_command
from radcorpora.registry import CORPORA, CORPUS_PACKAGES, Registry, declared_summary

PROBE = """
import json, sys
from radcorpora.cli import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith("radcorpora.corpora."))), file=sys.stderr)
"""


def corpus_modules(*args: str) -> set[str]:
    """The radcorpora.corpora modules a fresh process has imported after running `radcorpora ARGS`."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def specs_loaded(modules: set[str]) -> set[str]:
    return {package for package in CORPUS_PACKAGES.values() if f"{package}.spec" in modules}


def test_build_help_of_one_corpus_imports_that_corpus_only():
    modules = corpus_modules("build", "radimagenet-vqa", "--help")
    assert specs_loaded(modules) == {"radcorpora.corpora.radimagenet_vqa"}
    for other in ("radvlm", "mmrad_ivl", "rad_ace_cot"):  # not even a builder module of theirs
        assert not {m for m in modules if m.startswith(f"radcorpora.corpora.{other}.")}, other


@pytest.mark.parametrize("args", [("--help",), ("build", "--help"), ("estimate", "--help"), ("build", "nope")])
def test_listings_import_no_corpus_spec(args):
    assert specs_loaded(corpus_modules(*args)) == set()


def test_listings_match_the_eager_ones(monkeypatch):
    """`build --help` and `estimate --help` read the registry's names and the summaries in the
    spec files; once every spec is loaded they come from the generated commands: same text."""
    import radcorpora.commands.corpus as corpus_commands

    fresh = Registry(CORPUS_PACKAGES)  # nothing loaded yet, whatever other tests loaded
    monkeypatch.setattr(corpus_commands, "CORPORA", fresh)
    runner = CliRunner()

    def listings() -> dict[str, str]:
        return {verb: runner.invoke(cli.app, [verb, "--help"], env={"COLUMNS": "80"}).output
                for verb in ("build", "estimate")}

    lazy = listings()
    assert not any(fresh.loaded(name) for name in fresh)
    for name in fresh:
        assert fresh[name].name == name
    assert all(fresh.loaded(name) for name in fresh)
    assert lazy == listings()
    assert all(name in lazy["build"] and name in lazy["estimate"] for name in CORPUS_PACKAGES)
    assert "RadImageNet CT/MR tree -> captions" in lazy["build"]


@pytest.mark.parametrize("mode", ["build", "estimate"])
def test_generated_commands_are_what_typer_registers(mode):
    """Each corpus' lazily generated command has the parameters and help that registering it with
    `Typer.command(name)` (the eager way) gives."""
    group = typer.main.get_command(cli.app).commands[mode]
    for name, spec in CORPORA.items():
        eager_app = typer.Typer()
        eager_app.command(name)(corpus_command(spec, mode))
        eager_app.command("other")(lambda: None)  # two commands: a group, as `build` is
        eager = typer.main.get_command(eager_app).commands[name]
        lazy = group.commands[name]
        assert lazy.help == eager.help and lazy.name == eager.name == name
        assert ([(p.opts, p.required, p.default, getattr(p, "help", None)) for p in lazy.params]
                == [(p.opts, p.required, p.default, getattr(p, "help", None)) for p in eager.params])


def test_registry_names_need_no_import_and_a_wrong_name_is_caught():
    registry = Registry({"radimagenet-vqa": "radcorpora.corpora.radimagenet_vqa", "mislabelled": "toy_corpus"})
    assert "mislabelled" in registry and list(registry) == ["radimagenet-vqa", "mislabelled"]
    assert not registry.loaded("mislabelled")  # membership and order imported nothing
    with pytest.raises(ValueError, match="declares corpus 'toy-findings', registered as 'mislabelled'"):
        registry["mislabelled"]
    assert declared_summary("radcorpora.corpora.radimagenet_vqa") == CORPORA["radimagenet-vqa"].summary
    assert declared_summary("radcorpora.corpora.no_such_corpus") is None


def test_unknown_corpus_is_one_line_and_exit_2():
    result = CliRunner().invoke(cli.app, ["build", "radimagenet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "No such command 'radimagenet'. Did you mean 'radimagenet-vqa'?" in result.output


CONSOLE_BUILD = """
import atexit, sys
atexit.register(lambda: print("pandas imported:", "pandas" in sys.modules, file=sys.stderr))
from radcorpora.cli import run
run()
"""


def test_console_build_imports_no_pandas_and_writes_the_same_bytes(demo_source, demo_build, tmp_path):
    """The console script's `build` tells pyarrow there is no pandas (never imported, in the
    driver or the forked workers); the shards are byte-identical to an in-process build's."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", CONSOLE_BUILD, "build", "radimagenet-vqa", "--source", str(demo_source),
                           "--out", str(out), "--benchmark-images", "20", "--images-per-shard", "40", "--workers", "2"],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pandas imported: False" in done.stderr
    shards = sorted(p.relative_to(demo_build) for p in (demo_build / "data").rglob("*.parquet"))
    assert len(shards) > 3 and shards == sorted(p.relative_to(out) for p in (out / "data").rglob("*.parquet"))
    assert all((out / p).read_bytes() == (demo_build / p).read_bytes() for p in shards)


PANDAS_LATER = """
import sys
from radcorpora.engine.lifecycle import pyarrow_without_pandas
import pyarrow as pa
assert pyarrow_without_pandas()
pa.array([{"a": 1}, {"a": None}]); pa.table({"x": ["a", "b"]})
assert "pandas" not in sys.modules
import pandas  # an explicit import works, and so does pyarrow's own use of pandas
assert pa.table({"x": [1, 2]}).to_pandas()["x"].tolist() == [1, 2]
assert not pyarrow_without_pandas()  # pandas imported: nothing to do
print("ok")
"""


def test_pandas_still_works_after_pyarrow_was_told_there_is_none():
    done = subprocess.run([sys.executable, "-c", PANDAS_LATER], check=False, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
