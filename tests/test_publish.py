"""Pushing a build: licence rules and the files handed to huggingface_hub (fake API, no network)."""

import json
import shutil
from pathlib import Path

import pytest

from radcorpora.publish.push import PublishError, plan_push, push_build


class FakeHubApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return "commit-url"


def test_restricted_build_goes_private_by_default(demo_build):
    plan = plan_push(demo_build, "org/rvqa", private=True)
    assert plan.licence_class == "restricted"
    assert "README.md" in plan.files and "build/manifest.json" in plan.files
    assert all(f.startswith(("data/", "build/", "README")) for f in plan.files)
    assert not any(".state" in f for f in plan.files)
    api = FakeHubApi()
    assert push_build(demo_build, plan, api=api) == "commit-url"
    (_, _, create), (_, _, upload) = api.calls
    assert create["private"] is True and create["repo_type"] == "dataset"
    assert upload["allow_patterns"] == plan.files and upload["folder_path"] == str(demo_build)


def test_public_push_refused_for_restricted_and_credentialed(demo_build, tmp_path):
    with pytest.raises(PublishError, match="restricted"):
        plan_push(demo_build, "org/rvqa", private=False)
    assert plan_push(demo_build, "org/rvqa", private=False, allow_public_restricted=True).private is False
    credentialed = Path(shutil.copytree(demo_build, tmp_path / "cred"))
    manifest_path = credentialed / "build/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["licence_class"] = "credentialed"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="credentialed"):
        plan_push(credentialed, "org/x", private=False, allow_public_restricted=True)
    manifest["validation"]["valid"] = False
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="validation"):
        plan_push(credentialed, "org/x", private=True)
