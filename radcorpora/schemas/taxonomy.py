"""The RadImageNet-VQA taxonomy (paper Table 3), shipped as data and loaded here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml

_SEPARATORS = re.compile(r"[\s_\-]+")


@lru_cache(maxsize=4096)
def normalise_label(name: str) -> str:
    """Comparison key for labels: case-insensitive, `_`/`-`/space runs treated alike."""
    return _SEPARATORS.sub(" ", name.strip().lower()).strip()


@dataclass(frozen=True)
class Region:
    name: str
    phrase: str
    modalities: tuple[str, ...]
    pathologies: tuple[str, ...]


@dataclass(frozen=True)
class Taxonomy:
    regions: tuple[Region, ...]
    no_pathology_answer: str
    _by_key: dict[str, Region] = field(default_factory=dict, compare=False, repr=False)
    _pathologies_by_key: dict[tuple[str, str], str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_key.update({normalise_label(r.name): r for r in self.regions})
        self._pathologies_by_key.update({(r.name, normalise_label(p)): p for r in self.regions for p in r.pathologies})

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def region(self, name: str) -> Region:
        try:
            return self._by_key[normalise_label(name)]
        except KeyError:
            raise KeyError(f"unknown region {name!r}; known: {', '.join(self.region_names)}") from None

    def find_region(self, name: str) -> Region | None:
        return self._by_key.get(normalise_label(name))

    def find_pathology(self, region: Region, name: str) -> str | None:
        """The canonical spelling of `name` among `region`'s pathologies, or None."""
        return self._pathologies_by_key.get((region.name, normalise_label(name)))

    @property
    def all_pathologies(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for region in self.regions:
            seen.update(dict.fromkeys(region.pathologies))
        return tuple(seen)


@lru_cache(maxsize=1)
def radimagenet_vqa_taxonomy() -> Taxonomy:
    text = resources.files("radcorpora.schemas").joinpath("data/radimagenet_vqa_taxonomy.yaml").read_text()
    raw = yaml.safe_load(text)
    regions = tuple(
        Region(
            name=r["name"],
            phrase=r["phrase"],
            modalities=tuple(r["modalities"]),
            pathologies=tuple(r["pathologies"]),
        )
        for r in raw["regions"]
    )
    return Taxonomy(regions=regions, no_pathology_answer=raw["no_pathology_answer"])
