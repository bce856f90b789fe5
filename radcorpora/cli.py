"""`radcorpora` command line: build | estimate | validate | preview | adjudicate | export | train | evaluate |
check | demo | publish | leakage | dpo."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from radcorpora import __version__
from radcorpora.commands import (
    adjudicate,
    check,
    demo,
    dpo,
    evaluate,
    folder,
    leakage,
    mix,
    publish,
    train,
)
from radcorpora.commands.corpus import CorpusGroup, EstimateGroup
from radcorpora.engine.executors import keep_freed_memory
from radcorpora.registry import CORPORA, register

app = typer.Typer(help="Build, validate and publish radiology vision-language corpora.", no_args_is_help=True,
                  context_settings={"max_content_width": 80}, rich_markup_mode=None)
# one command per registered corpus, generated from its spec when used (commands/corpus.py)
build_app = typer.Typer(cls=CorpusGroup, help="Build a corpus from upstream sources.", no_args_is_help=True)
app.add_typer(build_app, name="build")
estimate_app = typer.Typer(cls=EstimateGroup, help="Estimate a build's LLM requests, tokens, cost and time (sends nothing).",
                           no_args_is_help=True)
app.add_typer(estimate_app, name="estimate")
adjudicate_app = typer.Typer(help="Human adjudication of verifier disagreements.", no_args_is_help=True)
app.add_typer(adjudicate_app, name="adjudicate")



def _version(value: bool) -> None:
    if value:
        print(f"radcorpora {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Build, validate and publish radiology vision-language corpora."""


@app.command("corpora")
def corpora_cmd() -> None:
    """List the registered corpora, their configs and source options."""
    from rich import box

    out = Console()
    width = min(out.width, 100)
    for spec in CORPORA.values():
        # one block per corpus, two columns: the longest name (a config with its splits, a flag)
        # fits whole on one line at 80 columns, so nothing is cut to "…"
        table = Table(title=Text(spec.name, style="bold"), title_justify="left", box=box.SIMPLE, show_header=False,
                      width=width, pad_edge=False)
        table.add_column("what", no_wrap=True)
        table.add_column("value", overflow="fold", ratio=1)
        table.add_row("about", Text(spec.summary))
        table.add_row("configs", Text("\n".join(f"{c.name} ({', '.join(c.splits)})" for c in spec.configs)))
        table.add_row("sources", Text("\n".join(f"{o.flag}{'' if o.required else ' (optional)'}" for o in spec.sources)))
        table.add_row("LLM stages", Text(", ".join(s.name for s in spec.llm_stages) or "none"))
        out.print(table)


def add_corpus(spec) -> None:
    """A corpus declared outside radcorpora (a plugin, a test) made a full citizen: registered,
    so `build` and `estimate` generate its commands as they do ours."""
    register(spec)


adjudicate_app.command("apply")(adjudicate.adjudicate_apply_cmd)
app.command("export")(folder.export_cmd)
app.command("validate")(folder.validate_cmd)
app.command("preview")(folder.preview_cmd)
app.command("train")(train.train_cmd)
app.command("evaluate")(evaluate.evaluate_cmd)
app.command("check")(check.check_cmd)
app.command("demo")(demo.demo_cmd)
app.command("publish")(publish.publish_cmd)
app.command("leakage")(leakage.leakage_cmd)
app.command("mix")(mix.mix_cmd)
app.command("dpo")(dpo.dpo_cmd)


def run() -> None:
    """The console script: the app, then a quick exit. Freezing the collector's objects first
    spares the interpreter's last full collection over every loaded module's objects (pyarrow,
    pandas, ...), a seventh of a second of every command; the OS reclaims the memory anyway.
    Like the build's worker processes, this process keeps freed heap for reuse (a one-worker
    build reads its images here). A `build` process also tells pyarrow there is no pandas
    (engine.lifecycle.pyarrow_without_pandas)."""
    import gc
    import sys

    keep_freed_memory()
    if sys.argv[1:2] == ["build"]:
        from radcorpora.engine.lifecycle import pyarrow_without_pandas

        pyarrow_without_pandas()  # the build process ends with its build: pandas is never needed
    try:
        app()
    finally:
        gc.freeze()


if __name__ == "__main__":
    run()
