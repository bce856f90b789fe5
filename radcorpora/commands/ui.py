"""The terminal side of every command: one stderr console, plain text without Rich markup, errors
as one line with exit code 2, settings errors named by their option, the validation table and
the build summary."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from radcorpora.engine.executors import ExecutorError
from radcorpora.llm.errors import ComplianceError, LLMError, ProviderConfigError
from radcorpora.llm.verify import AdjudicationError
from radcorpora.mix.errors import MixError
from radcorpora.prompts.loader import TemplateError
from radcorpora.publish.push import PublishError
from radcorpora.sources.errors import SourceError
from radcorpora.spec.report import ValidationReport
from radcorpora.store.folder import BuildFolderError
from radcorpora.store.state import BuildStateError

console = Console(stderr=True)

USER_ERRORS = (SourceError, BuildStateError, TemplateError, BuildFolderError, PublishError, ComplianceError,
               ProviderConfigError, LLMError, AdjudicationError, ExecutorError, MixError)
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def say(text: str, style: str | None = None) -> None:
    """Print user-facing text as it is: no Rich markup, so `data[v2]` and `[x1, y1]` survive."""
    console.print(Text(str(text), style=style or ""), highlight=False, soft_wrap=True)


def setting_error(error: dict, flags: dict[str, str] | None = None) -> str:
    """One pydantic error as the option a user typed: `--wbf-iou must be <= 1`. `flags`: settings
    field -> its option, where it is not `--field-name`."""
    text = str(error["msg"]).removeprefix("Value error, ")
    if not error.get("loc"):
        return text  # a rule across settings: its message names the options
    field = str(error["loc"][0])
    flag = (flags or {}).get(field, "--" + field.replace("_", "-"))
    for key, sign in _BOUNDS.items():
        if key in (error.get("ctx") or {}):
            limit = error["ctx"][key]
            return f"{flag} must be {sign} {limit:g}" if isinstance(limit, float) else f"{flag} must be {sign} {limit}"
    return f"{flag}: {text}"


def fail(exc: Exception, code: int = 2, flags: dict[str, str] | None = None) -> None:
    """One line, `error: ...`, and exit `code` (2: the input was wrong)."""
    from pydantic import ValidationError

    message = str(exc)
    if isinstance(exc, ValidationError):  # settings that do not fit: say what, not pydantic's layout
        message = "; ".join(setting_error(e, flags) for e in exc.errors())
    console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def command_line() -> str:
    return shlex.join(["radcorpora", *sys.argv[1:]])


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


def print_summary(outcome: Any, exit_on_invalid: bool = True) -> bool:
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
