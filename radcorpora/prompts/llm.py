"""LLM prompt files: a system text and a user template with named fields, plus an id and a content
hash that every sample made with them records. Users can point a build at their own file."""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from radcorpora.prompts.loader import TemplateError, packaged_text
from radcorpora.schemas.file_errors import utf8_problem, yaml_problem


@dataclass(frozen=True)
class Prompt:
    id: str
    system: str
    user: str
    content_hash: str
    origin: str

    def render(self, **fields: str) -> str:
        return self.user.format(**fields)


def load_prompt(name: str, path: Path | None = None, fields: frozenset[str] = frozenset(),
                package: str = "radcorpora.prompts") -> Prompt:
    """The packaged `<package>/prompts/<name>.yaml` (a corpus package's own prompt files;
    `radcorpora.prompts` keeps the evaluation judges in `data/`), or the user's file. `fields` are
    the placeholders the user template must use (all of them, and no others)."""
    if path is not None:
        try:
            text, origin = Path(path).read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise TemplateError(f"{path}: cannot read prompt file: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TemplateError(f"{path}: {utf8_problem(exc)}") from None
    else:
        origin, text = packaged_text(package, name)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{origin}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) and raw[k].strip() for k in ("id", "system", "user")):
        raise TemplateError(f"{origin}: expected non-empty string keys `id`, `system` and `user`")
    used = {f for _, f, _, _ in string.Formatter().parse(raw["user"]) if f}
    if fields and used != set(fields):
        raise TemplateError(f"{origin}: `user` must use exactly the fields {sorted(fields)}; it uses {sorted(used)}")
    canonical = json.dumps({k: raw[k] for k in ("id", "system", "user")}, sort_keys=True, ensure_ascii=False)
    return Prompt(id=raw["id"], system=raw["system"].strip(), user=raw["user"].strip(),
                  content_hash=hashlib.sha256(canonical.encode()).hexdigest()[:16], origin=origin)
