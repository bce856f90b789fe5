"""MMRad-IVL's anatomical aggregation: per-region steps (a region name, its text, its boxes)
become at most four group steps (mediastinal, lung, bone, other; schemas/regions.py holds the
mapping). Within a group, texts are merged in anatomical order and boxes are unioned into one
box (the crop of that step). A region outside the mapping is returned as a reject, never put in
a group by guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from radcorpora.ops.boxes import union_box
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.regions import RegionMap, cxr_region_map


@dataclass(frozen=True)
class RegionStep:
    """One reasoning step about one region (as the trace summariser or a reader gives it)."""

    region: str
    text: str
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class GroupStep:
    """One group's step: its regions (canonical names, anatomical order), the merged text, the
    union box (None when no region of the group had a box) and the boxes it was built from."""

    group: str
    regions: tuple[str, ...]
    text: str
    box: Box | None
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class RegionReject:
    """A step whose region is outside the mapping (`reason` = `region_outside_mapping`)."""

    region: str
    text: str
    reason: str = "region_outside_mapping"


def merge_texts(texts: Iterable[str]) -> str:
    """Texts joined by one space in the order given; blank ones and repeats (same words) dropped,
    a missing final full stop added so sentences do not run together."""
    out: list[str] = []
    seen: set[str] = set()
    for text in texts:
        text = " ".join(str(text).split())
        key = text.lower().rstrip(".")
        if not text or key in seen:
            continue
        seen.add(key)
        out.append(text if text[-1] in ".!?" else text + ".")
    return " ".join(out)


def group_steps(steps: Iterable[RegionStep], mapping: RegionMap | None = None
                ) -> tuple[list[GroupStep], list[RegionReject]]:
    """Aggregate region steps into group steps, in the mapping's group order (mediastinal, lung,
    bone, other; groups with no step are left out). Within a group, steps are ordered by the
    region's anatomical rank, then by their input order; their texts are merged with
    `merge_texts` and all their boxes unioned with `ops.boxes.union_box`."""
    mapping = mapping or cxr_region_map()
    by_group: dict[str, list[tuple[int, int, str, RegionStep]]] = {}
    rejects: list[RegionReject] = []
    for index, step in enumerate(steps):
        info = mapping.find(step.region)
        if info is None:
            rejects.append(RegionReject(region=step.region, text=step.text))
            continue
        by_group.setdefault(info.group, []).append((info.rank, index, info.name, step))
    out = []
    for group in mapping.groups:
        items = sorted(by_group.get(group, []), key=lambda item: (item[0], item[1]))
        if not items:
            continue
        regions = tuple(dict.fromkeys(name for _, _, name, _ in items))
        boxes = tuple(box for _, _, _, step in items for box in step.boxes)
        out.append(GroupStep(group=group, regions=regions, text=merge_texts(step.text for *_, step in items),
                             box=union_box(boxes) if boxes else None, boxes=boxes))
    return out, rejects
