"""`radcorpora` command line: build | estimate | validate | preview | adjudicate | export | train | evaluate |
check | demo | publish."""

from __future__ import annotations

import enum
import os
import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from radcorpora import __version__
from radcorpora.engine.executors import ExecutorError, keep_freed_memory
from radcorpora.llm.errors import ComplianceError, LLMError, ProviderConfigError
from radcorpora.llm.verify import AdjudicationError
from radcorpora.prompts.loader import TemplateError
from radcorpora.publish.push import PublishError
from radcorpora.sources.errors import SourceError
from radcorpora.store.state import BuildStateError
from radcorpora.validators import BuildFolderError, ValidationReport

app = typer.Typer(help="Build, validate and publish radiology vision-language corpora.", no_args_is_help=True,
                  context_settings={"max_content_width": 80}, rich_markup_mode=None)
build_app = typer.Typer(help="Build a corpus from upstream sources.", no_args_is_help=True)
app.add_typer(build_app, name="build")
estimate_app = typer.Typer(help="Estimate a build's LLM requests, tokens, cost and time (sends nothing).",
                           no_args_is_help=True)
app.add_typer(estimate_app, name="estimate")
adjudicate_app = typer.Typer(help="Human adjudication of verifier disagreements.", no_args_is_help=True)
app.add_typer(adjudicate_app, name="adjudicate")
console = Console(stderr=True)



class ImageCheckChoice(str, enum.Enum):
    crc = "crc"
    full = "full"


USER_ERRORS = (SourceError, BuildStateError, TemplateError, BuildFolderError, PublishError, ComplianceError,
               ProviderConfigError, LLMError, AdjudicationError, ExecutorError)


def say(text: str, style: str | None = None) -> None:
    """Print user-facing text as it is: no Rich markup, so `data[v2]` and `[x1, y1]` survive."""
    console.print(Text(str(text), style=style or ""), highlight=False, soft_wrap=True)


def _fail(exc: Exception, code: int = 2) -> None:
    from pydantic import ValidationError

    message = str(exc)
    if isinstance(exc, ValidationError):  # settings that do not fit: say what, not pydantic's layout
        message = "; ".join(_setting_error(e) for e in exc.errors())
    console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# Settings fields whose option is spelled otherwise than `--field-name`.
FLAG_OF_FIELD = {"templates_path": "--templates", "prompt_path": "--prompt", "verify_prompt_path": "--verify-prompt",
                 "verifiers": "--verify"}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _setting_error(error: dict) -> str:
    """One pydantic error as the option a user typed: `--wbf-iou must be <= 1`."""
    text = str(error["msg"]).removeprefix("Value error, ")
    if not error.get("loc"):
        return text  # a rule across settings: its message names the options
    field = str(error["loc"][0])
    flag = FLAG_OF_FIELD.get(field, "--" + field.replace("_", "-"))
    for key, sign in _BOUNDS.items():
        if key in (error.get("ctx") or {}):
            limit = error["ctx"][key]
            return f"{flag} must be {sign} {limit:g}" if isinstance(limit, float) else f"{flag} must be {sign} {limit}"
    return f"{flag}: {text}"


def _version(value: bool) -> None:
    if value:
        print(f"radcorpora {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Build, validate and publish radiology vision-language corpora."""


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def print_report(report: ValidationReport, out: Console) -> None:
    table = Table(title=f"validation: {report.corpus}")
    for column in ("check", "checked", "violations", "first examples"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        table.add_row(Text(check.name, style="green" if check.passed else "red"), str(check.checked),
                      str(check.violations), Text("\n".join(check.examples[:3])))
    out.print(table)
    for warning in report.warnings:
        out.print(Text.assemble(("warning: ", "yellow"), warning))
    out.print(Text("valid", style="green") if report.valid else
              Text(f"INVALID ({report.violations} violations)", style="red"))


def _command() -> str:
    return shlex.join(["radcorpora", *sys.argv[1:]])


def _executor(executor: str, workers: int, ray_address: str | None):
    from radcorpora.engine.executors import ExecutorSettings

    if executor not in ("local", "ray"):
        _fail(ValueError(f"--executor must be local or ray, got {executor!r}"))
    return ExecutorSettings(name=executor, workers=workers, ray_address=ray_address)  # type: ignore[arg-type]


def _build(name: str, sources: dict[str, Path | None], settings, out: Path, *, workers: int, executor: str,
           ray_address: str | None, overwrite: bool, llm_settings=None, exit_on_invalid: bool = True,
           allow_empty: bool = False):
    """options -> spec -> engine, then the one-screen summary."""
    from radcorpora.corpora import corpus
    from radcorpora.engine.lifecycle import run_build
    from radcorpora.engine.progress import BuildProgress

    spec = corpus(name)
    given = {k: Path(v) for k, v in sources.items() if v is not None}
    try:
        with BuildProgress(console) as progress:
            outcome = run_build(spec, given, settings, out, executor=_executor(executor, workers, ray_address),
                                llm_settings=llm_settings, overwrite=overwrite, command=_command(), log=say,
                                progress=progress, allow_empty=allow_empty)
    except USER_ERRORS as exc:
        _fail(exc)
    return print_summary(outcome, exit_on_invalid)


def print_summary(outcome, exit_on_invalid: bool = True) -> bool:
    """One screen: rows per config/split, rejects by reason, validation verdict, card, time."""
    manifest = outcome.manifest
    if outcome.state == "complete":
        say(f"{outcome.out}: build already complete (same settings, unchanged sources); nothing to do.")
    elif outcome.report is not None:
        print_report(outcome.report, console)
    table = Table(title=f"{manifest.get('corpus')}: {outcome.out}")
    table.add_column("config")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for config, splits in (manifest.get("splits") or {}).items():
        for split, rows in splits.items():
            table.add_row(config, split, str(rows))
    console.print(table)
    rejects = manifest.get("rejects") or {}
    if rejects:
        say("rejected source rows: " + ", ".join(f"{reason} {n}" for reason, n in rejects.items())
            + f" (see {outcome.out / 'build' / 'rejects.jsonl'})")
    else:
        say("rejected source rows: none")
    for warning in manifest.get("warnings", []):
        console.print(Text.assemble(("warning: ", "yellow"), warning))
    valid = bool((manifest.get("validation") or {}).get("valid", False))
    for check in (outcome.report.checks if outcome.report is not None and not valid else []):
        if not check.passed:  # the reason on one line each, whatever the terminal's width
            say(f"failed: {check.name}: " + (check.examples[0] if check.examples else f"{check.violations} violations"),
                "red")
    say(f"validation: {'passed' if valid else 'FAILED'}; card: {outcome.out / 'README.md'}; "
        f"{(manifest.get('build') or {}).get('seconds', outcome.seconds)} s", "green" if valid else "red")
    if not valid and exit_on_invalid:
        raise typer.Exit(1)
    return valid


WORKERS = typer.Option(_default_workers(), "--workers", min=1, help="Worker processes (or Ray tasks) for chunks")
EXECUTOR = typer.Option("local", "--executor", help="local (processes here) or ray (pip install 'radcorpora[ray]')")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray cluster to join (default: a local Ray runtime)")
OVERWRITE = typer.Option(False, "--overwrite", help="Delete an existing build in --out first")
LLM_HELP = "PROVIDER:MODEL: openai:MODEL (OPENAI_BASE_URL for compatible servers), anthropic:MODEL, azure:DEPLOYMENT, offline"


@app.command("corpora")
def corpora_cmd() -> None:
    """List the registered corpora, their configs and source options."""
    from rich import box

    from radcorpora.corpora import CORPORA

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


def corpus_commands(name: str):
    """Register `build NAME` and `estimate NAME` from one function: the spec's `--source`-style
    options (flag and help written once, in the spec) plus the function's own options. `estimate`
    takes exactly `build`'s options (its --out optional) and --json, so a build command becomes its
    estimate by changing the verb. The function is called as fn(mode, sources, **options)."""
    import inspect

    from radcorpora.corpora import corpus

    spec = corpus(name)

    def register(fn):
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.name not in ("mode", "sources")]
        keyword = inspect.Parameter.KEYWORD_ONLY
        source_params = [inspect.Parameter(o.key, keyword, annotation=Path | None,
                                           default=typer.Option(... if o.required else None, o.flag, help=o.help))
                         for o in spec.sources]
        keys = [o.key for o in spec.sources]

        def make(mode: str, params: list[inspect.Parameter]):
            def command(**options):
                sources = {k: options.pop(k) for k in keys}
                if mode == "build":
                    options.pop("as_json", None)
                return fn(mode, sources, **options)
            command.__signature__ = inspect.Signature([p.replace(kind=keyword) for p in params])
            command.__annotations__ = {}
            command.__doc__ = fn.__doc__ if mode == "build" else (
                f"Dry run of {name}'s LLM stages with `build {name}`'s options: requests to send and already "
                "cached, tokens, cost online vs batch, time under the limits. Reads the sources; sends nothing.")
            command.__name__ = f"{mode}_{name.replace('-', '_')}_cmd"
            return command

        build_params = [p for p in own if p.name != "as_json"]
        estimate_params = [p.replace(default=typer.Option(None, "--out", help="Build folder (optional here)"),
                                     annotation=Path | None) if p.name == "out" else p for p in own]
        build_app.command(name)(make("build", source_params + build_params))
        estimate_app.command(name)(make("estimate", source_params + estimate_params))
        return fn
    return register


OUT = typer.Option(..., "--out", help="Build folder (a Hub dataset repository)")
AS_JSON = typer.Option(False, "--json", help="estimate: print the estimate as JSON")
ALLOW_EMPTY = typer.Option(False, "--allow-empty",
                           help="Finish even when a config asked for ends with no rows (else the build fails)")
SEED = typer.Option(0, "--seed", help="Seed of every random choice")


def _llm_settings(concurrency: int, rpm: int | None, tpm: int | None, batch: bool, cache: Path | None,
                  prices: Path | None, approve_credentialed: list[str], timeout: float, max_attempts: int,
                  cache_scope: str = "model"):
    from radcorpora.llm.limits import RunnerLimits
    from radcorpora.llm.session import LLMSettings

    if cache_scope not in ("model", "endpoint"):
        raise ValueError(f"--cache-scope must be model or endpoint, got {cache_scope!r}")
    return LLMSettings(limits=RunnerLimits(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout_s=timeout,
                                           max_attempts=max_attempts),
                       batch=batch, cache_path=str(cache) if cache else None, prices_path=str(prices) if prices else None,
                       approve_credentialed=list(approve_credentialed), cache_scope=cache_scope)


def _run_mode(mode: str, name: str, sources: dict[str, Path | None], settings, out: Path | None, *,
              workers: int, executor: str, ray_address: str | None, overwrite: bool, allow_empty: bool,
              llm_settings=None, as_json: bool = False) -> None:
    """One corpus command: the build, or its estimate from the same settings."""
    if mode == "build":
        assert out is not None
        _build(name, sources, settings, out, workers=workers, executor=executor, ray_address=ray_address,
               overwrite=overwrite, llm_settings=llm_settings, allow_empty=allow_empty)
    else:
        _estimate(name, sources, settings, llm_settings, as_json)


def _estimate(name: str, sources: dict[str, Path | None], settings, llm_settings, as_json: bool) -> None:
    import json

    from radcorpora.corpora import corpus
    from radcorpora.engine.estimate import estimate_plan, print_estimate
    from radcorpora.llm.session import LLMSettings

    spec = corpus(name)
    given = {k: Path(v) for k, v in sources.items() if v is not None}
    try:
        if spec.estimate is None:
            result: dict = {"corpus": name, "stages": [], "samples": None,
                            "note": f"{name} has no LLM stage: a build sends nothing"}
        else:
            plan, info = spec.estimate(given, settings, lambda _line: None)
            result = estimate_plan(name, plan, llm_settings or LLMSettings())
            result.update(info)
            if not plan:
                result.setdefault("note", "no LLM stage would run with these options")
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(result, indent=2))
    elif not result["stages"]:
        say(result["note"])
    else:
        print_estimate(result, Console(width=80))


@corpus_commands("radimagenet-vqa")
def radimagenet_vqa_cmd(
    mode: str,
    sources: dict,
    out: Path = OUT,
    seed: int = SEED,
    benchmark_images: int = typer.Option(1000, "--benchmark-images", min=0, help="Test images in the benchmark (9 questions each)"),
    label_map: Path | None = typer.Option(None, "--label-map", help="YAML/JSON folder-name map (anatomy, pathology, normal)"),
    templates: Path | None = typer.Option(None, "--templates", help="Your own wording file (same slots as the packaged one)"),
    image_check: ImageCheckChoice = typer.Option("crc", "--image-check",
                                                 help="crc: PNG structure and chunk CRCs (fast); full: decode every pixel"),
    workers: int = WORKERS,
    executor: str = EXECUTOR,
    ray_address: str | None = RAY_ADDRESS,
    images_per_shard: int = typer.Option(2000, "--images-per-shard", min=1, help="Images per Parquet shard"),
    overwrite: bool = OVERWRITE,
    allow_empty: bool = ALLOW_EMPTY,
    as_json: bool = AS_JSON,
) -> None:
    """RadImageNet CT/MR tree -> alignment, instruct and benchmark configs."""
    from radcorpora.builders.radimagenet_vqa import make_settings

    try:
        settings = make_settings(seed=seed, benchmark_images=benchmark_images, label_map=label_map, templates=templates,
                                 image_check=image_check.value, images_per_shard=images_per_shard)
    except USER_ERRORS as exc:
        _fail(exc)
    _run_mode(mode, "radimagenet-vqa", sources, settings, out, workers=workers, executor=executor,
              ray_address=ray_address, overwrite=overwrite, allow_empty=allow_empty, as_json=as_json)


def _rad_ace_config(seed: int, llm: str, verify: list[str], max_samples: int | None, subset: str,
                    validation_fraction: float, prompt: Path | None, verify_prompt: Path | None,
                    decisions: dict[str, str] | None = None):
    from radcorpora.builders.rad_ace_cot import RadAceCotConfig

    return RadAceCotConfig(seed=seed, llm=llm, verifiers=verify, max_samples=max_samples, subset=subset,
                           validation_fraction=validation_fraction,
                           prompt_path=str(prompt) if prompt else None,
                           verify_prompt_path=str(verify_prompt) if verify_prompt else None,
                           decisions=decisions or {})


def _decisions(out: Path | None, overwrite: bool) -> dict[str, str]:
    """A person's adjudication decisions kept in the build folder (a rebuild keeps them)."""
    from radcorpora.llm.verify import DECISIONS_FILE, read_decisions

    if out is None or overwrite or not (out / DECISIONS_FILE).is_file():
        return {}
    return read_decisions(out / DECISIONS_FILE)


CONCURRENCY = typer.Option(8, "--concurrency", min=1, help="Requests in flight at once")
RPM = typer.Option(None, "--rpm", min=1, help="Requests per minute limit")
TPM = typer.Option(None, "--tpm", min=1, help="Tokens per minute limit")
BATCH = typer.Option(False, "--batch", help="Use the provider's batch API (cheaper, up to 24 h)")
CACHE = typer.Option(None, "--cache", help="Answer cache (default ~/.cache/radcorpora/llm-cache.sqlite)")
CACHE_SCOPE = typer.Option("model", "--cache-scope",
                           help="model: answers keyed on the model and request, so a local server on another "
                                "port answers from the cache; endpoint: the endpoint is part of the key too")
PRICES = typer.Option(None, "--prices", help="YAML price table overriding the packaged one")
APPROVE = typer.Option([], "--approve-credentialed", metavar="PROVIDER",
                       help="Provider approved for credentialed (PhysioNet) data, e.g. openai (repeatable)")
TIMEOUT = typer.Option(600.0, "--timeout", help="Seconds per request")
MAX_ATTEMPTS = typer.Option(5, "--max-attempts", min=1, help="Tries per request before it goes to the failure ledger")


@corpus_commands("rad-ace-cot")
def rad_ace_cot_cmd(
    mode: str,
    sources: dict,
    out: Path = OUT,
    llm: str = typer.Option(..., "--llm", help=LLM_HELP),
    verify: list[str] = typer.Option([], "--verify", help="Verifier model PROVIDER:MODEL (repeat for several)"),
    concurrency: int = CONCURRENCY,
    rpm: int | None = RPM,
    tpm: int | None = TPM,
    batch: bool = BATCH,
    max_samples: int | None = typer.Option(None, "--max-samples", min=1, help="Seeded subset size (the paper used 12,000)"),
    subset: str = typer.Option("alignment", "--subset", help="alignment | instruction (which PubMedVision file)"),
    seed: int = SEED,
    validation_fraction: float = typer.Option(0.05, "--validation-fraction", min=0.0, max=0.5,
                                              help="Share of samples in the validation split"),
    prompt: Path | None = typer.Option(None, "--prompt", help="Your own generation prompt file"),
    verify_prompt: Path | None = typer.Option(None, "--verify-prompt", help="Your own verification prompt file"),
    cache: Path | None = CACHE,
    cache_scope: str = CACHE_SCOPE,
    prices: Path | None = PRICES,
    approve_credentialed: list[str] = APPROVE,
    timeout: float = TIMEOUT,
    max_attempts: int = MAX_ATTEMPTS,
    workers: int = WORKERS,
    executor: str = EXECUTOR,
    ray_address: str | None = RAY_ADDRESS,
    overwrite: bool = OVERWRITE,
    allow_empty: bool = ALLOW_EMPTY,
    as_json: bool = AS_JSON,
) -> None:
    """PubMedVision CT/MR -> <think>/<answer> chains of thought (+ VQA-RAD eval config)."""
    try:
        config = _rad_ace_config(seed, llm, verify, max_samples, subset, validation_fraction, prompt, verify_prompt,
                                 _decisions(out, overwrite))
        settings = _llm_settings(concurrency, rpm, tpm, batch, cache, prices, approve_credentialed, timeout, max_attempts,
                                 cache_scope)
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    _run_mode(mode, "rad-ace-cot", sources, config, out, workers=workers, executor=executor, ray_address=ray_address,
              overwrite=overwrite, allow_empty=allow_empty, llm_settings=settings, as_json=as_json)


PRIOR_REMOVAL = typer.Option(None, "--prior-removal",
                             help="llm | rules | off: how references to earlier studies leave the reports "
                                  "(default: llm with --llm, else rules)")
CONVERSATIONS = typer.Option(0, "--conversations", min=0,
                             help="Standard train conversations to write with --llm (paper: 86,155; grounded ones "
                                  "come from every MS-CXR / PadChest-GR image)")
CONVERSATION_TEST = typer.Option(500, "--conversation-test", min=0, help="Held-out standard conversations (paper: 500)")
GROUNDED_TEST = typer.Option(155, "--grounded-test", min=0, help="Held-out grounded conversations from MS-CXR test (paper: 155)")


def _radvlm_config(tasks: str | None, llm: str | None, prior_removal: str | None, **fields):
    from radcorpora.builders.radvlm import RadVLMConfig, parse_tasks

    mode = prior_removal or ("llm" if llm else "rules")
    if mode not in ("llm", "rules", "off"):
        raise ValueError(f"--prior-removal must be llm, rules or off, got {mode!r}")
    if fields.get("uncertain") not in (None, "absent", "present"):
        raise ValueError(f"--uncertain must be absent or present, got {fields['uncertain']!r}")
    return RadVLMConfig(tasks=parse_tasks(tasks), llm=llm, prior_removal=mode,
                        **{k: v for k, v in fields.items() if v is not None})


@corpus_commands("radvlm")
def radvlm_cmd(
    mode: str,
    sources: dict,
    out: Path = OUT,
    tasks: str | None = typer.Option(None, "--tasks", help="Comma-separated tasks (default: all the sources allow)"),
    seed: int = SEED,
    uncertain: str = typer.Option("absent", "--uncertain", help="absent (paper) or present: how uncertain labels count"),
    wbf_iou: float = typer.Option(0.1, "--wbf-iou", help="IoU threshold of the readers' box fusion (published 0.1)"),
    min_readers: int = typer.Option(1, "--min-readers", min=1, help="Readers a fused box needs (1 published, 2 majority)"),
    replication: Path | None = typer.Option(None, "--replication", help="YAML task[/source] -> factor overrides"),
    max_side: int | None = typer.Option(None, "--max-side", min=16, help="Long side of DICOMs converted to PNG"),
    templates: Path | None = typer.Option(None, "--templates", help="Your own wording file"),
    llm: str | None = typer.Option(None, "--llm", help=LLM_HELP + " (prior-study removal and conversations)"),
    prior_removal: str | None = PRIOR_REMOVAL,
    conversations: int = CONVERSATIONS,
    conversation_test: int = CONVERSATION_TEST,
    grounded_test: int = GROUNDED_TEST,
    verify: list[str] = typer.Option([], "--verify", help="Verifier model PROVIDER:MODEL for conversations (repeatable)"),
    concurrency: int = CONCURRENCY,
    rpm: int | None = RPM,
    tpm: int | None = TPM,
    batch: bool = BATCH,
    cache: Path | None = CACHE,
    cache_scope: str = CACHE_SCOPE,
    prices: Path | None = PRICES,
    approve_credentialed: list[str] = APPROVE,
    timeout: float = TIMEOUT,
    max_attempts: int = MAX_ATTEMPTS,
    workers: int = WORKERS,
    executor: str = EXECUTOR,
    ray_address: str | None = RAY_ADDRESS,
    overwrite: bool = OVERWRITE,
    allow_empty: bool = ALLOW_EMPTY,
    as_json: bool = AS_JSON,
) -> None:
    """Chest X-ray sources -> RadVLM instruction tasks, prior-study removal and (with --llm) conversations."""
    from radcorpora.builders.radvlm import load_replication

    try:
        config = _radvlm_config(tasks, llm, prior_removal, seed=seed, uncertain=uncertain, wbf_iou=wbf_iou,
                                min_readers=min_readers, replication=load_replication(replication), max_side=max_side,
                                templates_path=str(templates) if templates else None, conversations=conversations,
                                conversation_test=conversation_test, grounded_test=grounded_test, verifiers=verify,
                                decisions=_decisions(out, overwrite))
        settings = _llm_settings(concurrency, rpm, tpm, batch, cache, prices, approve_credentialed, timeout, max_attempts,
                                 cache_scope)
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    _run_mode(mode, "radvlm", sources, config, out, workers=workers, executor=executor, ray_address=ray_address,
              overwrite=overwrite, allow_empty=allow_empty, llm_settings=settings, as_json=as_json)


@adjudicate_app.command("apply")
def adjudicate_apply_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder with an adjudication queue (rad-ace-cot, radvlm)"),
    decisions_file: Path = typer.Argument(..., help="The queue file with `decision` filled in, or id,decision lines"),
) -> None:
    """Fold a person's accept/reject decisions on queued items back into the build (sends nothing)."""
    from radcorpora.corpora import spec_of_build
    from radcorpora.llm.session import LLMSettings
    from radcorpora.llm.verify import DECISIONS_FILE, QUEUE_FILE, read_decisions, read_queue
    from radcorpora.store.folder import read_manifest
    from radcorpora.store.local_paths import LOCAL_FILE, read_local

    try:
        manifest = read_manifest(build_dir)
        spec = spec_of_build(build_dir)
        if "decisions" not in spec.settings.model_fields:
            raise AdjudicationError(f"{build_dir}: a {spec.name} build has no verification to adjudicate")
        previous = read_decisions(build_dir / DECISIONS_FILE) if (build_dir / DECISIONS_FILE).exists() else {}
        queue_ids = {entry.id for entry in read_queue(build_dir / QUEUE_FILE)} | set(previous)
        decisions = {**previous, **read_decisions(decisions_file, queue_ids)}
        config = spec.settings.model_validate({**manifest["fingerprint"]["config"], "decisions": decisions})
        local = read_local(build_dir)  # absolute paths on this machine (never pushed)
        if not local.get("sources"):
            raise BuildFolderError(f"{build_dir}: {LOCAL_FILE} is missing: adjudicate on the machine that built it")
        sources = {k: Path(v) for k, v in local["sources"].items()}
        settings = LLMSettings(cache_path=local.get("llm_cache") or manifest["llm"]["cache_path"], cache_only=True)
    except (*USER_ERRORS, KeyError, ValueError) as exc:
        _fail(exc if not isinstance(exc, KeyError) else BuildFolderError(f"{build_dir}: manifest lacks {exc}"))
    _build(spec.name, sources, config, build_dir, workers=1, executor="local", ray_address=None, overwrite=True,
           llm_settings=settings)


LEGACY_EXPORTS = ("rad-ace-csv",)  # `radcorpora export rad-ace-csv BUILD --out FILE`, as before


@app.command("export")
def export_cmd(
    target: str = typer.Argument(..., metavar="BUILD",
                                 help="A build folder (or, as before: `rad-ace-csv BUILD --out FILE`)"),
    legacy_build: Path | None = typer.Argument(None, hidden=True),
    fmt: str | None = typer.Option(None, "--format",
                                   help="llava | sharegpt | trl | swift, or a corpus' own format (rad-ace-csv)"),
    out: Path = typer.Option(..., "--out", help="Folder to write (created; a previous export there is replaced)"),
    config: str | None = typer.Option(None, "--config", help="Config to export (default: the corpus' default)"),
    split: str | None = typer.Option(None, "--split", help="Split to export (default: every split of the config)"),
) -> None:
    """Export a build for a trainer: `radcorpora export BUILD --format FORMAT --out DIR`. Each image
    is written once under DIR/images/, the settings in DIR/export_settings.json; which assistant
    turns train comes from the corpus (carried the format's own way)."""
    from radcorpora.corpora import export

    if target in LEGACY_EXPORTS:
        return _export_rad_ace_csv(legacy_build, out)
    try:
        if legacy_build is not None:
            raise BuildFolderError(f"unexpected argument {str(legacy_build)!r} after the build folder {target}")
        if not fmt:
            raise BuildFolderError("--format is required (llava, sharegpt, trl, swift, or a corpus' own format)")
        settings = export(Path(target), fmt, out, config=config, split=split)
    except (*USER_ERRORS, ValueError, OSError) as exc:
        _fail(exc)
    files = {name: entry for name, entry in settings["files"].items() if "rows" in entry and name != "dataset_info.json"}
    for name, entry in files.items():
        say(f"{entry['rows']} rows -> {out / name}")
    images = settings.get("images") or {}
    if images.get("count"):
        say(f"{images['count']} images under {out / 'images'}")
    say(f"settings: {out / 'export_settings.json'}")


def _export_rad_ace_csv(build_dir: Path | None, out: Path) -> None:
    """The public RAD-ACE CSV columns: filename (list), modality, cot_output, question."""
    from radcorpora.publish.rad_ace_csv import export_rad_ace_csv

    try:
        if build_dir is None:
            raise BuildFolderError("usage: radcorpora export rad-ace-csv BUILD --out FILE")
        if out.exists() and out.is_dir():
            raise BuildFolderError(f"{out}: is a folder; --out names the CSV file to write")
        rows = export_rad_ace_csv(build_dir, out)
    except (*USER_ERRORS, ValueError, OSError) as exc:
        _fail(exc)
    say(f"{rows} rows written to {out}")


@app.command("validate")
def validate_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    image_check: ImageCheckChoice = typer.Option("full", "--image-check", help="full: decode every pixel; crc: PNG chunk CRCs"),
    workers: int = typer.Option(_default_workers(), "--workers", min=1, help="Shards checked in parallel"),
    deep: bool = typer.Option(False, "--deep", help="Also re-parse every record as an object and check each rule per row"),
) -> None:
    """Check every record and the corpus rules; the result is written back to the build
    (build/validation.json, the manifest, the card). Exit 0 only when valid."""
    from radcorpora.corpora import validate
    from radcorpora.engine.lifecycle import record_validation

    try:
        report = validate(build_dir, image_check=image_check.value, workers=workers, deep=deep)
        record_validation(build_dir, report)
    except USER_ERRORS as exc:
        _fail(exc)
    print_report(report, Console())
    raise typer.Exit(0 if report.valid else 1)


@app.command("preview")
def preview_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    out: Path | None = typer.Option(None, "--out", help="HTML file to write (default: BUILD/build/preview.html)"),
    config: str | None = typer.Option(None, "--config", help="Only this config"),
    split: str | None = typer.Option(None, "--split", help="Only this split"),
    samples: int = typer.Option(6, "--samples", min=0, help="Rows shown per config and split"),
    seed: int = typer.Option(0, "--seed", help="Seed of the row sample"),
) -> None:
    """Write one self-contained HTML report of a build (opens offline in any browser): sample rows
    with their boxes drawn, plots, rejects, validation, LLM usage, reference check."""
    from radcorpora.corpora import preview

    try:
        result = preview(build_dir, out, config=config, split=split, samples=samples, seed=seed)
    except USER_ERRORS as exc:
        _fail(exc)
    say(f"preview of {build_dir} ({result.rows_shown} rows shown, {result.bytes / 1e6:.1f} MB) written to {result.path}")


def _demo_preview(build_dir: Path) -> None:
    from radcorpora.corpora import preview

    try:
        say(f"preview: {preview(build_dir).path}")
    except USER_ERRORS as exc:
        _fail(exc)


TRAIN_MISSING = ("the reference-model commands need the training stack: "
                 "pip install torch==2.13.0 'radcorpora[train]' (or a CUDA torch on a GPU machine)")


def _train_stack() -> None:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers
    except ImportError as exc:
        _fail(RuntimeError(f"{TRAIN_MISSING} ({exc})"))
    # our own progress lines say where training is; transformers' bars for every save and load of
    # the checkpoints in between would bury them
    transformers.utils.logging.disable_progress_bar()


def _model_errors() -> tuple[type[Exception], ...]:
    from radcorpora.reference_models.models import ModelSpecError
    from radcorpora.reference_models.sft import TrainingError

    return (*USER_ERRORS, ModelSpecError, TrainingError)


def _judge(spec: str | None, cache: Path | None, concurrency: int, approve_credentialed: list[str] | None = None):
    if spec is None:
        return None
    from radcorpora.llm.limits import RunnerLimits
    from radcorpora.llm.session import LLMSession, LLMSettings
    from radcorpora.reference_models.judge import Judge

    return Judge(spec, LLMSession(LLMSettings(limits=RunnerLimits(concurrency=concurrency),
                                              cache_path=str(cache) if cache else None,
                                              approve_credentialed=list(approve_credentialed or []))))


def _recipe(build_dir: Path):
    from radcorpora.corpora import spec_of_build

    spec = spec_of_build(build_dir)
    if spec.evaluation is None:
        raise BuildFolderError(f"{build_dir}: corpus {spec.name!r} has no reference-model recipe")
    return spec.evaluation


def _loss_intent(build_dir: Path, config: str) -> str:
    """The trained config's loss intent, as the corpus declares it (and the exports carry it)."""
    from radcorpora.corpora import spec_of_build

    spec = spec_of_build(build_dir)
    loss = spec.config(config).loss if config in spec.records else "all_assistant"
    if loss == "none":
        raise BuildFolderError(f"{build_dir}: config {config!r} is evaluation-only (loss intent 'none'); train on another")
    return loss


@app.command("train")
def train_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    model: str = typer.Option(..., "--model", help="tiny, or hf:<local checkpoint path>"),
    out: Path = typer.Option(..., "--out", help="Output folder (weights, training log, checkpoints)"),
    config: str | None = typer.Option(None, "--config", help="Config to train on (default: the corpus' training config)"),
    preset: str | None = typer.Option(None, "--preset", help="rad-ace | radimagenet-vqa | tiny-check | tiny-lora"),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimiser steps"),
    text_only: bool = typer.Option(False, "--text-only", help="Withhold the images (the shortcut twin)"),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and batch order"),
) -> None:
    """Fine-tune a reference model on a build's training split; resumes from the last checkpoint."""
    _train_stack()
    from radcorpora.reference_models.check import CheckConfig, sft_config
    from radcorpora.reference_models.data import alignment_examples, training_examples, training_texts
    from radcorpora.reference_models.models import resolve_model
    from radcorpora.reference_models.sft import train

    try:
        recipe = _recipe(build_dir)
        settings = sft_config(CheckConfig(model=model, preset=preset, max_steps=max_steps, seed=seed), recipe)
        examples = training_examples(build_dir, recipe, config)
        base = resolve_model(model, out, lambda: training_texts(build_dir, recipe, config), seed=seed)
        say(f"training {model} ({settings.method}) on {len(examples)} examples of {build_dir}"
            f"{' with images withheld' if text_only else ''}")
        result = train(base, examples, out, settings, text_only=text_only, log=say,
                       alignment_rows=alignment_examples(build_dir, recipe),
                       loss=_loss_intent(build_dir, config or recipe.train_config))
    except _model_errors() as exc:
        _fail(exc)
    say(f"trained: {result.steps} steps, loss {result.first_loss:.4f} -> {result.last_loss:.4f}, "
        f"{result.samples_per_second} samples/s; weights in {out}", "green")


@app.command("evaluate")
def evaluate_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    adapter: Path = typer.Option(..., "--adapter", help="A `radcorpora train` output folder, or a peft adapter folder"),
    config: str | None = typer.Option(None, "--config", help="Held-out config (default: the corpus' evaluation config)"),
    judge: str | None = typer.Option(None, "--judge", help="PROVIDER:MODEL of an LLM judge (open answers, criteria, "
                                                            "conversation scores)"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N rows only"),
    out: Path | None = typer.Option(None, "--out", help="Where metrics.json and predictions.jsonl go (default: --adapter)"),
    cache: Path | None = CACHE,
    concurrency: int = CONCURRENCY,
    approve_credentialed: list[str] = APPROVE,
) -> None:
    """Evaluate a trained model with the corpus' own metrics; per-sample predictions next to them."""
    _train_stack()
    from radcorpora.reference_models.data import evaluation_rows
    from radcorpora.reference_models.evaluate import EVALUATORS
    from radcorpora.reference_models.sft import load_trained
    from radcorpora.store.atomic import write_json, write_jsonl
    from radcorpora.store.folder import read_manifest

    try:
        recipe = _recipe(build_dir)
        rows = evaluation_rows(build_dir, recipe, config, limit)
        model, processor, trained = load_trained(adapter)
        text_only = bool(trained and trained.text_only)
        render = recipe.prompt_renderer(read_manifest(build_dir)) if recipe.prompt_renderer else None
        evaluator = EVALUATORS[recipe.evaluator]
        metrics, samples = evaluator.run(model, processor, rows, text_only=text_only,
                                         judge=_judge(judge, cache, concurrency, approve_credentialed), render=render)
    except _model_errors() as exc:
        _fail(exc)
    target = out or (adapter if (adapter / "train_result.json").exists() else adapter.parent)
    write_json(target / "metrics.json", metrics)
    write_jsonl(target / "predictions.jsonl", samples)
    primary = evaluator.primary(metrics)
    say(f"{recipe.evaluator}: {primary} {metrics[primary]} on {len(samples)} rows"
        f"{' (images withheld: text-only model)' if text_only else ''}; metrics and predictions in {target}")
    Console().print_json(data=metrics)


@app.command("check")
def check_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    model: str = typer.Option("tiny", "--model", help="tiny, or hf:<local checkpoint path>"),
    margin: float = typer.Option(5.0, "--margin", help="Points the image model must beat the text-only twin by"),
    preset: str | None = typer.Option(None, "--preset", help="Training preset (default: tiny-check for tiny)"),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimiser steps"),
    eval_limit: int | None = typer.Option(None, "--eval-limit", min=1, help="Evaluate the first N held-out rows only"),
    judge: str | None = typer.Option(None, "--judge", help="PROVIDER:MODEL of an LLM judge (also scores conversation "
                                                            "configs, reported next to the check)"),
    cache: Path | None = CACHE,
    seed: int = typer.Option(0, "--seed", help="Seed of both training runs"),
    approve_credentialed: list[str] = APPROVE,
) -> None:
    """Train on the build, and on the build with images withheld; exit 0 only when the image model
    beats its text-only twin by the margin on the held-out config."""
    _train_stack()
    if not _run_check(build_dir, model, margin, preset, max_steps, eval_limit, judge, cache, seed, approve_credentialed):
        raise typer.Exit(1)


def _run_check(build_dir: Path, model: str, margin: float, preset: str | None = None, max_steps: int | None = None,
               eval_limit: int | None = None, judge: str | None = None, cache: Path | None = None, seed: int = 0,
               approve_credentialed: list[str] | None = None) -> bool:
    from radcorpora.engine.lifecycle import library_versions
    from radcorpora.reference_models.check import CheckConfig, run_check

    try:
        report = run_check(build_dir, CheckConfig(model=model, margin=margin, preset=preset, max_steps=max_steps,
                                                  eval_limit=eval_limit, seed=seed), _recipe(build_dir),
                           judge=_judge(judge, cache, 8, approve_credentialed), log=say, versions=library_versions())
    except _model_errors() as exc:
        _fail(exc)
    table = Table(title=f"reference check: {report['corpus']} ({report['metric']})")
    for column in ("", "image model", "text-only twin"):
        table.add_column(column)
    table.add_row(report["metric"], str(report["image"]["score"]), str(report["text_only"]["score"]))
    for cell, value in report["image"]["metrics"].get("by_task_and_type", {}).items():
        table.add_row(cell, str(value), str(report["text_only"]["metrics"]["by_task_and_type"].get(cell, "")))
    for name in report.get("judged_configs", {}):  # LLM-judged configs, beside the check (not part of it)
        scores = [report[v].get("judged_configs", {}).get(name, {}).get("score") for v in ("image", "text_only")]
        table.add_row(f"{name} (judge, 0-100)", *(str(x) for x in scores))
    console.print(table)
    say(f"reference check {'passed' if report['passed'] else 'FAILED'}: gap {report['gap']:+} points "
        f"(margin {report['margin']}), {report['seconds']} s; report in {build_dir / 'build' / 'reference_check.json'}",
        "green" if report["passed"] else "bold red")
    return bool(report["passed"])


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the demo sources and builds"),
    images_per_class: int = typer.Option(12, "--images-per-class", min=5, help="Demo RadImageNet images per class"),
    workers: int = WORKERS,
    check: bool = typer.Option(True, "--check/--no-check", help="End with the reference checks"),
) -> None:
    """Write small demo sources in the upstream formats, build and validate every corpus from them
    (LLM stages with the offline stand-in), check the corpora that declare it against a tiny
    model, and write an HTML preview of each build."""
    if check:
        _train_stack()
    from radcorpora.corpora import CORPORA
    from radcorpora.llm.session import LLMSettings

    valid = True
    built = []
    for spec in CORPORA.values():
        if spec.demo is None:
            continue
        sources = spec.demo.write_sources(out / "sources", {"images_per_class": images_per_class})
        say(f"demo sources of {spec.name}: " + ", ".join(f"{k}={v}" for k, v in sources.items()))
        llm = LLMSettings(cache_path=str(out / "llm-cache.sqlite")) if spec.demo.uses_llm else None
        valid = _build(spec.name, sources, spec.demo.settings(), out / spec.name, workers=workers, executor="local",
                       ray_address=None, overwrite=False, exit_on_invalid=False, llm_settings=llm) and valid
        built.append(spec)
    say(f"demo corpora in {out} (LLM answers come from the offline stand-in, not a model)", "green")
    if check:
        for spec in built:
            if spec.demo and spec.demo.check:
                valid = _run_check(out / spec.name, "tiny", margin=5.0, max_steps=spec.demo.check_max_steps) and valid
    for spec in built:
        _demo_preview(out / spec.name)
    if not valid:
        raise typer.Exit(1)


@app.command("publish")
def publish_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    repo: str = typer.Option(..., "--repo", help="Hub dataset repo id, e.g. org/name"),
    private: bool = typer.Option(True, "--private/--public", help="Repository visibility"),
    allow_public_restricted: bool = typer.Option(False, "--allow-public-restricted",
                                                 help="Push restricted-licence data publicly (you hold the right to)"),
    allow_public_demo: bool = typer.Option(False, "--allow-public-demo", help="Push a demo build publicly anyway"),
    image_check: ImageCheckChoice = typer.Option("crc", "--image-check", help="Image check before pushing: crc or full"),
    revision: str | None = typer.Option(None, "--revision", help="Branch to push to"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list what would be pushed; push nothing"),
) -> None:
    """Validate the build again, then push it to the Hugging Face Hub (token from HF_TOKEN or
    `hf auth login`). Refuses a build that does not validate now."""
    from radcorpora.corpora import validate
    from radcorpora.engine.lifecycle import record_validation
    from radcorpora.publish.push import check_repo_id, plan_push, push_build, require_token

    try:
        check_repo_id(repo)
        report = validate(build_dir, image_check=image_check.value, workers=_default_workers())
        record_validation(build_dir, report)
        if not report.valid:
            print_report(report, console)
            raise PublishError(f"{build_dir}: does not validate now ({report.violations} violations in "
                               f"{', '.join(c.name for c in report.checks if not c.passed)}); nothing pushed")
        plan = plan_push(build_dir, repo, private, allow_public_restricted, allow_public_demo)
        token = None if dry_run else require_token()
    except USER_ERRORS as exc:
        _fail(exc)
    say(f"validated; {'private' if plan.private else 'public'} push of {len(plan.files)} files to {plan.repo_id}")
    if dry_run:
        for name in plan.files:
            say(f"  {name}")
        return
    push_build(build_dir, plan, revision=revision, token=token)


def run() -> None:
    """The console script: the app, then a quick exit. Freezing the collector's objects first
    spares the interpreter's last full collection over every loaded module's objects (pyarrow,
    pandas, ...), a seventh of a second of every command; the OS reclaims the memory anyway.
    Like the build's worker processes, this process keeps freed heap for reuse (a one-worker
    build reads its images here)."""
    import gc

    keep_freed_memory()
    try:
        app()
    finally:
        gc.freeze()


if __name__ == "__main__":
    run()
