"""`radcorpora build NAME` and `radcorpora estimate NAME`, generated from the corpus' spec: one
option per source (`SourceOption`) and per settings field (its `Field` description is the help,
its `Cli` metadata the flag and how the text reads), plus the engine's options (output folder,
executor, overwrite) and, for a corpus with LLM stages, the LLM client's. `estimate` takes exactly
`build`'s options (`--out` optional) and `--json`: a build command becomes its estimate by
changing the verb.

The `build` and `estimate` groups (CorpusGroup) make a corpus' command the first time it is run
or its help is shown, so `radcorpora build radimagenet-vqa` imports that corpus alone; their
listings read names and summaries from the registry without importing a corpus."""

from __future__ import annotations

import inspect
import json
import os
import types
import typing
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from radcorpora.commands.ui import USER_ERRORS, command_line, console, fail, print_summary, say
from radcorpora.registry import CORPORA
from radcorpora.spec.corpus import Cli, CorpusSpec, cli_of

KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, KEYWORD, annotation=annotation, default=default)


ENGINE_OPTIONS = (
    _option("out", Path, typer.Option(..., "--out", help="Build folder (a Hub dataset repository)")),
    _option("workers", int, typer.Option(_default_workers(), "--workers", min=1,
                                         help="Worker processes (or Ray tasks) for chunks")),
    _option("executor", str, typer.Option("local", "--executor",
                                          help="local (processes here) or ray (pip install 'radcorpora[ray]')")),
    _option("ray_address", str | None, typer.Option(None, "--ray-address",
                                                    help="Ray cluster to join (default: a local Ray runtime)")),
    _option("overwrite", bool, typer.Option(False, "--overwrite", help="Delete an existing build in --out first")),
    _option("allow_empty", bool, typer.Option(False, "--allow-empty", help="Finish even when a config asked for ends "
                                                                           "with no rows (else the build fails)")),
)
LLM_OPTIONS = (
    _option("concurrency", int, typer.Option(8, "--concurrency", min=1, help="Requests in flight at once")),
    _option("rpm", int | None, typer.Option(None, "--rpm", min=1, help="Requests per minute limit")),
    _option("tpm", int | None, typer.Option(None, "--tpm", min=1, help="Tokens per minute limit")),
    _option("batch", bool, typer.Option(False, "--batch", help="Use the provider's batch API (cheaper, up to 24 h)")),
    _option("cache", Path | None, typer.Option(None, "--cache",
                                               help="Answer cache (default ~/.cache/radcorpora/llm-cache.sqlite)")),
    _option("cache_scope", str, typer.Option("model", "--cache-scope", help=(
        "model: answers keyed on the model and request, so a local server on another port answers from the "
        "cache; endpoint: the endpoint is part of the key too"))),
    _option("prices", Path | None, typer.Option(None, "--prices", help="YAML price table overriding the packaged one")),
    _option("approve_credentialed", list[str], typer.Option(
        [], "--approve-credentialed", metavar="PROVIDER",
        help="Provider approved for credentialed (PhysioNet) data, e.g. openai (repeatable)")),
    _option("timeout", float, typer.Option(600.0, "--timeout", help="Seconds per request")),
    _option("max_attempts", int, typer.Option(5, "--max-attempts", min=1,
                                              help="Tries per request before it goes to the failure ledger")),
)
JSON_OPTION = _option("as_json", bool, typer.Option(False, "--json", help="Print the estimate as JSON"))


def llm_settings(options: dict[str, Any]) -> Any:
    """The LLM client's settings from LLM_OPTIONS' values."""
    from radcorpora.llm.limits import RunnerLimits
    from radcorpora.llm.session import LLMSettings

    scope = options["cache_scope"]
    if scope not in ("model", "endpoint"):
        raise ValueError(f"--cache-scope must be model or endpoint, got {scope!r}")
    limits = RunnerLimits(concurrency=options["concurrency"], rpm=options["rpm"], tpm=options["tpm"],
                          timeout_s=options["timeout"], max_attempts=options["max_attempts"])
    if options["prices"]:  # read now: a bad table stops the command before any work, naming the file
        from radcorpora.llm.usage import load_prices

        load_prices(Path(options["prices"]))
    return LLMSettings(limits=limits, batch=options["batch"], cache_scope=scope,
                       cache_path=str(options["cache"]) if options["cache"] else None,
                       prices_path=str(options["prices"]) if options["prices"] else None,
                       approve_credentialed=list(options["approve_credentialed"]))


def _plain(annotation: Any) -> Any:
    """int | None -> int; Literal[...] -> str (pydantic checks the value and names the choices)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if typing.get_origin(annotation) is typing.Annotated:
        return _plain(typing.get_args(annotation)[0])
    return annotation


def _shown_default(value: Any) -> str:
    """A default as help text shows it: a number, a word, a path or a list of them; nothing for a
    value that only a parser makes (an empty `--avoid` list is no build, not its model's repr)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float, str, Path)):
        return str(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float, str, Path)) for v in value):
        return ", ".join(map(str, value))
    return ""


def setting_options(settings: type[BaseModel]) -> list[tuple[str, Cli, inspect.Parameter]]:
    """(field, its Cli metadata, the typer parameter) for each settings field that is an option."""
    found = []
    for name, info in settings.model_fields.items():
        cli = cli_of(info)
        if cli.hidden:
            continue
        flag = cli.flag or "--" + name.replace("_", "-")
        help_text = info.description or ""
        plain = _plain(info.annotation)
        if cli.repeat:
            annotation, default = list[str], []
        elif cli.parse is not None:
            annotation, default = str | None, None
        elif plain in (int, float, str, Path):
            annotation, default = plain | None, None
        elif plain is bool:
            annotation, default = bool, info.default
        else:
            raise TypeError(f"{settings.__name__}.{name}: a {info.annotation} field needs Cli(parse=...) or "
                            "Cli(hidden=True) to be read from the command line")
        shown = _shown_default(info.get_default(call_default_factory=True))
        if not (cli.repeat or cli.required or cli.auto) and plain is not bool and shown:
            help_text += f" [default: {shown}]"
        option = typer.Option(... if cli.required else default, flag, help=help_text, metavar=cli.metavar,
                              show_default=False)
        found.append((name, cli, _option(name, annotation, option)))
    return found


def settings_from_options(spec: CorpusSpec, options: dict[str, Any], out: Path | None, overwrite: bool) -> BaseModel:
    """The corpus' settings model from the options given (omitted ones keep the model's defaults,
    or take their `Cli.auto` value); a person's adjudication decisions come from the build folder."""
    fields = setting_options(spec.settings)
    given: dict[str, Any] = {}
    try:
        for name, cli, _ in fields:
            value = options[name]
            if cli.repeat:
                if value:
                    given[name] = list(value)
            elif value is not None:
                given[name] = cli.parse(value) if cli.parse is not None else value
        for name, cli, _ in fields:
            if name not in given and cli.auto is not None:
                given[name] = cli.auto(given)
        if "decisions" in spec.settings.model_fields:
            given["decisions"] = decisions_in(out, overwrite)
        return spec.settings.model_validate(given)
    except ValidationError as exc:
        fail(exc, flags={name: param.default.param_decls[0] for name, _, param in fields})
    except (*USER_ERRORS, ValueError, OSError) as exc:
        fail(exc)
    raise AssertionError("unreachable")


def decisions_in(out: Path | None, overwrite: bool) -> dict[str, str]:
    """A person's adjudication decisions kept in the build folder (a rebuild keeps them)."""
    from radcorpora.llm.verify import DECISIONS_FILE, read_decisions

    if out is None or overwrite or not (Path(out) / DECISIONS_FILE).is_file():
        return {}
    return read_decisions(Path(out) / DECISIONS_FILE)


def executor_settings(executor: str, workers: int, ray_address: str | None) -> Any:
    from radcorpora.engine.executors import ExecutorSettings

    if executor not in ("local", "ray"):
        fail(ValueError(f"--executor must be local or ray, got {executor!r}"))
    return ExecutorSettings(name=executor, workers=workers, ray_address=ray_address)  # type: ignore[arg-type]


def run_build_command(spec: CorpusSpec, sources: dict[str, Path | None], settings: BaseModel, out: Path, *,
                      workers: int = 1, executor: str = "local", ray_address: str | None = None,
                      overwrite: bool = False, llm: Any = None, allow_empty: bool = False,
                      exit_on_invalid: bool = True) -> bool:
    """options -> engine, then the one-screen summary; True when the build is valid."""
    from radcorpora.engine.lifecycle import run_build
    from radcorpora.engine.progress import BuildProgress

    given = {k: Path(v) for k, v in sources.items() if v is not None}
    try:
        with BuildProgress(console) as progress:
            outcome = run_build(spec, given, settings, Path(out), executor=executor_settings(executor, workers, ray_address),
                                llm_settings=llm, overwrite=overwrite, command=command_line(), log=say,
                                progress=progress, allow_empty=allow_empty)
    except USER_ERRORS as exc:
        fail(exc)
    return print_summary(outcome, exit_on_invalid)


def run_estimate_command(spec: CorpusSpec, sources: dict[str, Path | None], settings: BaseModel, llm: Any,
                         as_json: bool, out: Path | None = None) -> None:
    """`spec.estimate` gives (plan, info): plan is [(stage class, model, requests)], or, for a
    corpus on the LLM pipeline, `plan(llm_settings, out)` -> the estimate dict (sized from the
    graph; the outputs stored in the build folder `out` count as done)."""
    from radcorpora.engine.estimate import estimate_plan, print_estimate
    from radcorpora.llm.session import LLMSettings

    given = {k: Path(v) for k, v in sources.items() if v is not None}
    try:
        if spec.estimate is None:
            result: dict[str, Any] = {"corpus": spec.name, "stages": [], "samples": None,
                                      "note": f"{spec.name} has no LLM stage: a build sends nothing"}
        else:
            plan, info = spec.estimate(given, settings, lambda _line: None)
            result = (plan(llm or LLMSettings(), out) if callable(plan)
                      else estimate_plan(spec.name, plan, llm or LLMSettings()))
            result.update(info)
            if not plan:
                result.setdefault("note", "no LLM stage would run with these options")
    except (*USER_ERRORS, ValueError) as exc:
        fail(exc)
    if as_json:
        print(json.dumps(result, indent=2))
    elif not result["stages"]:
        say(result["note"])
    else:
        print_estimate(result, Console(width=80))


def corpus_command(spec: CorpusSpec, mode: str) -> Callable[..., None]:
    """The typer command function of `build NAME` (mode "build") or `estimate NAME`."""
    sources = [_option(o.key, Path | None, typer.Option(... if o.required else None, o.flag, help=o.help,
                                                       metavar="PATH"))
               for o in spec.sources]
    fields = setting_options(spec.settings)
    engine = list(ENGINE_OPTIONS) + (list(LLM_OPTIONS) if spec.llm_stages else [])
    if mode == "estimate":
        engine[0] = _option("out", Path | None, typer.Option(None, "--out", help="Build folder (optional here: "
                                                                                  "its adjudication decisions count)"))
        engine.append(JSON_OPTION)
    params = sources + [p for _, _, p in fields] + engine
    names = [p.name for p in params]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"corpus {spec.name}: option(s) {', '.join(clash)} declared twice (source, setting, engine)")

    def command(**options: Any) -> None:
        given = {o.key: options.pop(o.key) for o in spec.sources}
        settings = settings_from_options(spec, options, options.get("out"), options.get("overwrite", False))
        try:
            llm = llm_settings(options) if spec.llm_stages else None
        except ValueError as exc:
            fail(exc)
        if mode == "build":
            run_build_command(spec, given, settings, options["out"], workers=options["workers"],
                              executor=options["executor"], ray_address=options["ray_address"],
                              overwrite=options["overwrite"], llm=llm, allow_empty=options["allow_empty"])
        else:
            run_estimate_command(spec, given, settings, llm, options["as_json"], options.get("out"))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {}
    command.__name__ = f"{mode}_{spec.name.replace('-', '_')}"
    command.__doc__ = command_help(spec.name, spec.summary, mode)
    return command


def command_help(name: str, summary: str, mode: str) -> str:
    """The help text of `build NAME` (the corpus' summary) or `estimate NAME`."""
    return summary if mode == "build" else (
        f"Dry run of {name}'s LLM stages with `build {name}`'s options: requests to send and already "
        "cached, tokens, cost online vs batch, time under the limits. Reads the sources; sends nothing.")


class CorpusCommands(MutableMapping[str, click.Command]):
    """A CorpusGroup's `commands`: the commands added to it, then one per registered corpus,
    generated from its spec on first use. While `listing`, a corpus not yet imported stands as a
    command with its help only (what a listing shows)."""

    def __init__(self, added: MutableMapping[str, click.Command], generate: Callable[[str], click.Command],
                 mode: str) -> None:
        self.added, self.generate, self.mode = added, generate, mode
        self.generated: dict[str, click.Command] = {}
        self.listing = False

    def __getitem__(self, name: str) -> click.Command:
        if name in self.added:
            return self.added[name]
        if name in self.generated:
            return self.generated[name]
        if name not in CORPORA:
            raise KeyError(name)
        if self.listing and not CORPORA.loaded(name):
            return TyperCommand(name=name, help=command_help(name, CORPORA.summary(name), self.mode))
        self.generated[name] = command = self.generate(name)
        return command

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.added[name] = command

    def __delitem__(self, name: str) -> None:
        del self.added[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*self.added, *(n for n in CORPORA if n not in self.added)])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __contains__(self, name: object) -> bool:
        return name in self.added or name in CORPORA


# What a corpus' command needs wired in from this layer before it runs (the dpo corpus' `hf:`
# sampler imports reference_models, which no corpus may): corpus name -> set-up callables, run when
# its `build` or `estimate` command is made.
COMMAND_SETUP: dict[str, list[Callable[[], None]]] = {}


def on_corpus_command(name: str, setup: Callable[[], None]) -> None:
    COMMAND_SETUP.setdefault(name, []).append(setup)


class CorpusGroup(TyperGroup):
    """`radcorpora build` (or `estimate`): a subcommand per registered corpus."""

    mode = "build"

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = CorpusCommands(self.commands, self.generate, self.mode)

    def generate(self, name: str) -> click.Command:
        """The command, as `Typer.command(name)` would register it (pretty_exceptions_short: the app's default)."""
        from typer.main import get_command_from_info
        from typer.models import CommandInfo

        for setup in COMMAND_SETUP.get(name, ()):
            setup()
        return get_command_from_info(CommandInfo(name=name, callback=corpus_command(CORPORA[name], self.mode)),
                                     pretty_exceptions_short=True, rich_markup_mode=self.rich_markup_mode)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with self.listing():
            super().format_help(ctx, formatter)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        with self.listing():
            return super().shell_complete(ctx, incomplete)

    @contextmanager
    def listing(self) -> Iterator[None]:
        commands = typing.cast(CorpusCommands, self.commands)
        commands.listing = True
        try:
            yield
        finally:
            commands.listing = False


class EstimateGroup(CorpusGroup):
    mode = "estimate"
