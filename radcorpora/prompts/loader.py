"""Load wording files; every set has an id and a content hash recorded in sample lineage."""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from radcorpora.schemas.file_errors import utf8_problem, yaml_problem

MIN_VARIANTS, MAX_VARIANTS = 2, 7


class TemplateError(ValueError):
    """A wording file is malformed; the message names the file and slot."""


@dataclass(frozen=True)
class TemplateSet:
    id: str
    slots: dict[str, tuple[str, ...]]
    content_hash: str
    origin: str

    def variants(self, slot: str) -> tuple[str, ...]:
        try:
            return self.slots[slot]
        except KeyError:
            raise TemplateError(f"{self.origin}: no slot {slot!r}") from None


def _parse(text: str, origin: str, required: tuple[str, ...], placeholders: frozenset[str]) -> TemplateSet:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{origin}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("slots"), dict) or not raw.get("id"):
        raise TemplateError(f"{origin}: expected keys `id` and `slots`")
    slots: dict[str, tuple[str, ...]] = {}
    for name, variants in raw["slots"].items():
        if not isinstance(variants, list) or not all(isinstance(v, str) and v.strip() for v in variants):
            raise TemplateError(f"{origin}: slot {name!r} must be a list of non-empty strings")
        if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
            raise TemplateError(f"{origin}: slot {name!r} has {len(variants)} variants; {MIN_VARIANTS}-{MAX_VARIANTS} required")
        if len(set(variants)) != len(variants):
            raise TemplateError(f"{origin}: slot {name!r} repeats a variant")
        for variant in variants:
            used = {f for _, f, _, _ in string.Formatter().parse(variant) if f}
            unknown = used - placeholders
            if unknown:
                raise TemplateError(f"{origin}: slot {name!r} uses unknown placeholder(s) {sorted(unknown)} in {variant!r}")
        slots[name] = tuple(variants)
    missing = [s for s in required if s not in slots]
    if missing:
        raise TemplateError(f"{origin}: missing slot(s) {missing}")
    canonical = json.dumps({"id": raw["id"], "slots": slots}, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return TemplateSet(id=str(raw["id"]), slots=slots, content_hash=digest, origin=origin)


def packaged_text(package: str, name: str) -> tuple[str, str]:
    """(where it came from, text) of a packaged prompt or template file: `<package>/prompts/<name>.yaml`
    for a corpus package, `radcorpora/prompts/data/<name>.yaml` for the shared ones."""
    folder = "data" if package == "radcorpora.prompts" else "prompts"
    relative = f"{folder}/{name}.yaml"
    text = resources.files(package).joinpath(relative).read_text(encoding="utf-8")
    return f"{package.replace('.', '/')}/{relative}", text


def load_template_set(
    name: str,
    path: Path | None = None,
    required: tuple[str, ...] = (),
    placeholders: frozenset[str] = frozenset(),
    package: str = "radcorpora.prompts",
) -> TemplateSet:
    """The packaged `<name>.yaml` (see packaged_text), or the user's file at `path`."""
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"{path}: cannot read template file: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TemplateError(f"{path}: {utf8_problem(exc)}") from None
        return _parse(text, str(path), required, placeholders)
    origin, text = packaged_text(package, name)
    return _parse(text, origin, required, placeholders)
