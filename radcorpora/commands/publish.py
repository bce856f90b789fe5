"""`radcorpora publish`: validate the build again, then push it to the Hub."""

from __future__ import annotations

from pathlib import Path

import typer

from radcorpora.commands.options import (
    ImageCheckChoice,
    default_workers,
)
from radcorpora.commands.ui import USER_ERRORS, console, fail, print_report, say
from radcorpora.publish.push import PublishError, push_build


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
    from radcorpora.engine.lifecycle import record_validation
    from radcorpora.publish.push import check_repo_id, plan_push, require_token
    from radcorpora.registry import validate

    try:
        check_repo_id(repo)
        report = validate(build_dir, image_check=image_check.value, workers=default_workers())
        record_validation(build_dir, report)
        if not report.valid:
            print_report(report, console)
            raise PublishError(f"{build_dir}: does not validate now ({report.violations} violations in "
                               f"{', '.join(c.name for c in report.checks if not c.passed)}); nothing pushed")
        plan = plan_push(build_dir, repo, private, allow_public_restricted, allow_public_demo)
        token = None if dry_run else require_token()
    except USER_ERRORS as exc:
        fail(exc)
    say(f"validated; {'private' if plan.private else 'public'} push of {len(plan.files)} files to {plan.repo_id}")
    if dry_run:
        for name in plan.files:
            say(f"  {name}")
        return
    push_build(build_dir, plan, revision=revision, token=token)
