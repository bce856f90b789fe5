"""Chest X-ray regions and the four anatomical groups MMRad-IVL aggregates them into, shipped as
data (`data/cxr_region_groups.yaml`) so the mapping can be read and changed without code.

`region_group` answers None for a name outside the mapping: callers reject it, never guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

REGION_GROUPS: tuple[str, ...] = ("mediastinal", "lung", "bone", "other")
_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise_region(name: str) -> str:
    """Comparison key of a region name: lower case, runs of spaces / `_` / `-` as one space."""
    return _SEPARATORS.sub(" ", str(name).strip().lower()).strip()


@dataclass(frozen=True)
class RegionInfo:
    name: str  # canonical spelling (the data file's)
    group: str
    rank: int  # anatomical position within its group (0 first)


@dataclass(frozen=True)
class RegionMap:
    groups: tuple[str, ...]
    regions: tuple[RegionInfo, ...]

    def find(self, name: str) -> RegionInfo | None:
        return _index(self).get(normalise_region(name))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)


@lru_cache(maxsize=8)
def _index(mapping: RegionMap) -> dict[str, RegionInfo]:
    return {normalise_region(r.name): r for r in mapping.regions}


def parse_region_map(raw: object) -> RegionMap:
    """Check and build the mapping from its YAML data; ValueError naming what is wrong."""
    if not isinstance(raw, dict) or not isinstance(raw.get("groups"), list) or not isinstance(raw.get("regions"), dict):
        raise ValueError("region map needs `groups` (a list) and `regions` (group -> names)")  # noqa: TRY004 (bad data)
    groups = tuple(str(g) for g in raw["groups"])
    if set(groups) != set(REGION_GROUPS) or len(groups) != len(REGION_GROUPS):
        raise ValueError(f"region map groups must be {', '.join(REGION_GROUPS)} (got {', '.join(groups)})")
    if set(raw["regions"]) != set(groups):
        raise ValueError(f"region map lists regions for {sorted(raw['regions'])}, groups are {list(groups)}")
    regions, seen = [], {}
    for group in groups:
        names = raw["regions"][group]
        if not isinstance(names, list) or not names:
            raise ValueError(f"region map group {group!r} needs a non-empty list of names")
        for rank, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"region map group {group!r}: {name!r} is not a name")
            key = normalise_region(name)
            if key in seen:
                raise ValueError(f"region {name!r} is listed twice (groups {seen[key]} and {group})")
            seen[key] = group
            regions.append(RegionInfo(name=name.strip(), group=group, rank=rank))
    return RegionMap(groups=groups, regions=tuple(regions))


@lru_cache(maxsize=1)
def cxr_region_map() -> RegionMap:
    """The shipped mapping (35 regions in 4 groups)."""
    text = resources.files("radcorpora.schemas").joinpath("data/cxr_region_groups.yaml").read_text(encoding="utf-8")
    return parse_region_map(yaml.safe_load(text))


def region_group(name: str) -> str | None:
    """The group (mediastinal, lung, bone, other) of a region name, None outside the mapping."""
    info = cxr_region_map().find(name)
    return None if info is None else info.group


def region_names() -> tuple[str, ...]:
    """Every region of the mapping, group by group in anatomical order."""
    return cxr_region_map().names
