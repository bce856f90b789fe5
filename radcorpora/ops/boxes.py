"""Box operations: reader-consensus fusion, geometry, and the textual forms boxes take in corpora.

Everything here works on `radcorpora.schemas.boxes.Box` (normalised xyxy with its frame) and is
pure: no I/O, no global state. `ensemble_boxes` (which imports numba, ~0.6 s) is imported inside
`fuse_readers` only.

Fusion (`fuse_readers`, `fuse_table`)
    Weighted boxes fusion as RadVLM applies it to VinDr-CXR: per (image, class), IoU 0.1, no score
    filter, equal scores, fused corners rounded to 3 decimals. Unlike the published code, each
    radiologist is passed as its own "model" list and `conf_type="box_and_model_avg"` is used, so the
    fused score is (distinct readers in the cluster) / (readers passed): with all scores 1.0 and
    equal weights the library computes `1.0 * n / n * k / M` exactly (see `_readers_from_score`),
    and every fused box carries `readers = k`. The clusters are the same as with one list: the
    library concatenates the per-model lists before clustering. Inputs are put in a canonical order
    (readers by id, each reader's boxes by corners) before the call because the library's greedy
    matching with equal scores depends on input order; the result does not depend on row order.
    `fuse_table` fuses every (image, class) group in ONE library call (one label per group; the
    library clusters each label alone) and skips the library for groups where no two boxes share
    area (nothing can merge there); both give exactly what one `fuse_readers` call per group gives.

Text
    `box_text` writes RadVLM's published form: `round(v, 2)` printed as Python prints a float, so
    `[0.1, 0.25, 0.5, 0.75]`, not `[0.10, ...]` (RadVLM `create_instructions.format_boxes`;
    sources/FORMATS.md §11). `fixed=True` gives the always-two-decimals form RadVLM used when it
    handed boxes to the conversation LLM (`f"{v:.2f}"`). Python's `round` rounds the exact binary
    value half to even (`round(0.125, 2) == 0.12`, `round(0.005, 2) == 0.01` because 0.005 is stored
    as 0.005000000000000000104). RadVLM's fused VinDr corners were numpy floats, whose `round`
    scales and rounds half to even instead (`np.round(0.005, 2) == 0.0`, `np.round(0.015, 2) ==
    0.02`): the two disagree on 46 of the 1,001 three-decimal values; radcorpora uses Python's
    rounding everywhere. `find_box_text` is the one reader of boxes written in text (model answers,
    conversation checks, the preview); `parse_boxes` turns what it finds into `Box`es.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from radcorpora.schemas.boxes import EDGE_TOLERANCE, Box, BoxError

# Published RadVLM settings for VinDr-CXR reader fusion.
RADVLM_IOU_THR = 0.1
RADVLM_SKIP_BOX_THR = 0.0
RADVLM_DECIMALS = 3
QWEN_GRID = 1000  # Qwen2-VL `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` corners are on a 0-1000 grid

Corners = tuple[float, float, float, float]

__all__ = [
    "BOX_FORMS", "RADVLM_DECIMALS", "RADVLM_IOU_THR", "RADVLM_SKIP_BOX_THR", "BoxText", "box_pixels_text", "box_text",
    "boxes_text", "crop_pixels", "find_box_text", "fuse_readers", "fuse_table", "iou", "parse_boxes", "text_box",
    "union_box",
]


# ---------------------------------------------------------------------------------------- fusion


def fuse_readers(boxes_by_reader: Mapping[str, Sequence[Box]], iou_thr: float = RADVLM_IOU_THR,
                 min_readers: int = 1, skip_box_thr: float = RADVLM_SKIP_BOX_THR,
                 decimals: int | None = RADVLM_DECIMALS) -> list[Box]:
    """Fuse the boxes several readers drew for ONE (image, class) into consensus boxes.

    `boxes_by_reader` maps a reader id to that reader's boxes (an empty list for a reader who drew
    none is allowed and changes nothing but the score's denominator). Every fused box carries
    `readers` = how many distinct readers had a box merged into it; `min_readers=2` keeps only the
    boxes at least two readers agree on (majority of three). `decimals=None` keeps the library's
    float32 averages unrounded. Output order: most readers first, then by corners. Raises
    `BoxError("zero_area")` if rounding to `decimals` collapses a fused box (a box under 1/10**decimals
    of the image side).
    """
    _check_fusion_args(iou_thr, min_readers, skip_box_thr, decimals)
    if not isinstance(boxes_by_reader, Mapping):
        raise TypeError(f"boxes_by_reader must map reader id -> boxes, got {type(boxes_by_reader).__name__}")
    size: tuple[int | None, int | None] | None = None
    lists: dict[str, list[Corners]] = {}
    for reader, boxes in boxes_by_reader.items():
        if isinstance(boxes, (Box, str, bytes)):
            raise TypeError(f"reader {reader!r}: expected a sequence of Box, got {type(boxes).__name__}")
        rows = lists[reader] = []
        for box in boxes:
            if not isinstance(box, Box):
                raise TypeError(f"reader {reader!r}: expected Box, got {type(box).__name__}")
            size = _same_size(size, box)
            rows.append((box.x1, box.y1, box.x2, box.y2))
    width, height = size if size is not None else (None, None)
    return _fuse(lists, width, height, iou_thr, min_readers, skip_box_thr, decimals)


def fuse_table(rows: Iterable[tuple[Hashable, str, str, Box]], iou_thr: float = RADVLM_IOU_THR,
               min_readers: int = 1, skip_box_thr: float = RADVLM_SKIP_BOX_THR,
               decimals: int | None = RADVLM_DECIMALS) -> dict[tuple[Hashable, str], list[Box]]:
    """Fuse a whole annotation table: rows of `(image_id, class_name, reader_id, box)`.

    One pass groups the rows by (image, class) and reader; each group is fused as `fuse_readers`
    does. Returns `{(image_id, class_name): fused boxes}` in sorted key order (groups where
    `min_readers` removed every box map to an empty list). The boxes of one image must agree on
    its size.
    """
    _check_fusion_args(iou_thr, min_readers, skip_box_thr, decimals)
    groups: dict[tuple[Hashable, str], dict[str, list[Corners]]] = {}
    sizes: dict[tuple[Hashable, str], tuple[int | None, int | None]] = {}
    for image_id, class_name, reader, box in rows:
        if not isinstance(box, Box):
            raise TypeError(f"image {image_id!r} reader {reader!r}: expected Box, got {type(box).__name__}")
        key = (image_id, class_name)
        by_reader = groups.get(key)
        if by_reader is None:
            by_reader = groups[key] = {}
            sizes[key] = (box.width, box.height)
        elif sizes[key] != (box.width, box.height):
            raise ValueError(f"image {image_id!r}: boxes disagree on its size: {sizes[key]} vs "
                             f"{(box.width, box.height)}")
        coords = (box.x1, box.y1, box.x2, box.y2)
        boxes = by_reader.get(reader)
        if boxes is None:
            by_reader[reader] = [coords]
        else:
            boxes.append(coords)
    keys = sorted(groups, key=lambda k: (str(k[0]), str(k[1])))
    fused = _fuse_groups([(groups[k], *sizes[k]) for k in keys], iou_thr, min_readers, skip_box_thr, decimals)
    return dict(zip(keys, fused))


def _fuse(lists: Mapping[str, list[Corners]], width: int | None, height: int | None,
          iou_thr: float, min_readers: int, skip_box_thr: float, decimals: int | None) -> list[Box]:
    """Fuse one group given as reader -> corner tuples (arguments already checked)."""
    return _fuse_groups([(lists, width, height)], iou_thr, min_readers, skip_box_thr, decimals)[0]


def _fuse_groups(groups: Sequence[tuple[Mapping[str, list[Corners]], int | None, int | None]], iou_thr: float,
                 min_readers: int, skip_box_thr: float, decimals: int | None) -> list[list[Box]]:
    """Fuse many independent groups with ONE library call; same result as one call per group.

    weighted_boxes_fusion clusters each label on its own, so every group gets its own label. The
    i-th reader (by sorted id) of every group goes to model list i, and the group's boxes keep
    their canonical order inside each list: for one label the library then sees exactly the box
    sequence (and model indices) a call for that group alone would see, so the clusters and fused
    corners are identical. Only the score's denominator changes: it is the number of model lists
    passed, which `_readers_from_score` is told.
    """
    fused: list[list[tuple[list[float], int]]] = [[] for _ in groups]
    models = max((len(lists) for lists, _, _ in groups), default=0)
    boxes_list: list[list[Corners]] = [[] for _ in range(models)]
    labels_list: list[list[int]] = [[] for _ in range(models)]
    for g, (lists, _, _) in enumerate(groups):
        readers = sorted(lists, key=_reader_key)
        if len({_reader_key(r) for r in readers}) != len(readers):
            raise ValueError(f"reader ids {readers!r} are not distinct as text")
        ordered = [sorted(lists[r]) for r in readers]  # canonical order: the library is order-dependent
        flat = [coords for rows in ordered for coords in rows]
        if len(flat) == 1 or _pairwise_disjoint(flat):
            # No two boxes overlap, so none can merge: every box is its own one-reader cluster,
            # returned unchanged. Same result, without the library.
            fused[g] = [(list(coords), 1) for coords in flat]
            continue
        for t, rows in enumerate(ordered):
            boxes_list[t].extend(rows)
            labels_list[t].extend([g] * len(rows))
    if any(boxes_list):
        from ensemble_boxes import weighted_boxes_fusion  # numba import: only when fusing

        coords_out, scores, labels = weighted_boxes_fusion(
            boxes_list, [[1.0] * len(rows) for rows in boxes_list], labels_list,
            weights=[1.0] * models, iou_thr=float(iou_thr), skip_box_thr=float(skip_box_thr),
            conf_type="box_and_model_avg")
        for coords, score, label in zip(coords_out.tolist(), scores.tolist(), labels.tolist()):
            fused[int(label)].append((coords, _readers_from_score(score, models)))
    out: list[list[Box]] = []
    for (_, width, height), group in zip(groups, fused):
        boxes = []
        for coords, agreeing in group:
            if agreeing < min_readers:
                continue
            if decimals is not None:
                coords = [round(v, decimals) for v in coords]
            boxes.append(Box.from_normalised(*coords, width=width, height=height, readers=agreeing))
        boxes.sort(key=lambda b: (-(b.readers or 0), b.x1, b.y1, b.x2, b.y2))
        out.append(boxes)
    return out


def _pairwise_disjoint(boxes: list[Corners]) -> bool:
    """True when no two boxes share any area (then no IoU exceeds any threshold > 0)."""
    for i, (ax1, ay1, ax2, ay2) in enumerate(boxes):
        for bx1, by1, bx2, by2 in boxes[:i]:
            if min(ax2, bx2) > max(ax1, bx1) and min(ay2, by2) > max(ay1, by1):
                return False
    return True


def _same_size(size: tuple[int | None, int | None] | None, box: Box) -> tuple[int | None, int | None]:
    here = (box.width, box.height)
    if size is not None and here != size:
        raise ValueError(f"boxes of one image disagree on its size: {size} vs {here}")
    return here


def _readers_from_score(score: float, models: int) -> int:
    """Distinct readers in a cluster from its `box_and_model_avg` score.

    ensemble_boxes 1.0.9 with scores 1.0 and weights 1.0: a cluster of n boxes gets score
    `conf / n = 1.0`, then `* n / sum(weights of its boxes) = * n / n`, then
    `* sum(weights of its distinct models) / sum(all weights) = * k / M`, so score == k / M. A box
    that was never merged keeps its input score 1.0 and weight 1, giving 1 / M. Checked here so a
    changed library fails loudly instead of miscounting.
    """
    k = score * models
    agreeing = round(k)
    if not 1 <= agreeing <= models or abs(k - agreeing) > 1e-6:
        raise RuntimeError(f"unexpected weighted_boxes_fusion score {score!r} for {models} readers; "
                           "the ensemble_boxes version changed how box_and_model_avg scores clusters")
    return agreeing


def _reader_key(reader: object) -> str:
    return str(reader)


def _check_fusion_args(iou_thr: float, min_readers: int, skip_box_thr: float, decimals: int | None) -> None:
    # ensemble_boxes calls exit() on some bad inputs; refuse them here with a clear error instead.
    if isinstance(iou_thr, bool) or not isinstance(iou_thr, (int, float)) or not 0.0 < iou_thr <= 1.0:
        raise ValueError(f"iou_thr must be in (0, 1], got {iou_thr!r}")
    if isinstance(min_readers, bool) or not isinstance(min_readers, int) or min_readers < 1:
        raise ValueError(f"min_readers must be an integer >= 1, got {min_readers!r}")
    if (isinstance(skip_box_thr, bool) or not isinstance(skip_box_thr, (int, float))
            or not 0.0 <= skip_box_thr <= 1.0):
        raise ValueError(f"skip_box_thr must be in [0, 1], got {skip_box_thr!r}")
    if decimals is not None and (isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0):
        raise ValueError(f"decimals must be None or an integer >= 0, got {decimals!r}")


# -------------------------------------------------------------------------------------- geometry


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two normalised boxes (0.0 when they do not overlap)."""
    iw = min(a.x2, b.x2) - max(a.x1, b.x1)
    ih = min(a.y2, b.y2) - max(a.y1, b.y1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    return inter / (a.area + b.area - inter)


def union_box(boxes: Sequence[Box]) -> Box:
    """The smallest box enclosing all `boxes` (e.g. one box per anatomical group).

    The image size is kept when every box states the same one; `readers` is not carried over.
    """
    boxes = list(boxes)
    if not boxes:
        raise ValueError("union_box needs at least one box")
    sizes = {(b.width, b.height) for b in boxes}
    width, height = sizes.pop() if len(sizes) == 1 else (None, None)
    return Box.from_normalised(min(b.x1 for b in boxes), min(b.y1 for b in boxes),
                               max(b.x2 for b in boxes), max(b.y2 for b in boxes),
                               width=width, height=height)


def crop_pixels(box: Box, width: int, height: int, margin: float = 0.0) -> tuple[int, int, int, int]:
    """Pixel rectangle `(left, top, right, bottom)` to crop `box` from a `width` x `height` image.

    Right and bottom are exclusive (PIL's `Image.crop` convention). `margin` widens each side by that
    share of the box's own width/height. Edges are rounded outwards so the crop covers the box, and
    clamped to the image; the crop is at least one pixel each way.
    """
    if isinstance(width, bool) or isinstance(height, bool) or int(width) != width or int(height) != height \
            or width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive integers, got {width!r} x {height!r}")
    if not math.isfinite(margin) or margin < 0.0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    width, height = int(width), int(height)
    dx, dy = (box.x2 - box.x1) * margin, (box.y2 - box.y1) * margin
    eps = 1e-9  # a corner at 0.1 * 1000 = 100.00000000000001 is pixel 100, not 101
    left = max(0, math.floor((box.x1 - dx) * width + eps))
    top = max(0, math.floor((box.y1 - dy) * height + eps))
    right = min(width, math.ceil((box.x2 + dx) * width - eps))
    bottom = min(height, math.ceil((box.y2 + dy) * height - eps))
    left, top = min(left, width - 1), min(top, height - 1)
    return left, top, max(right, left + 1), max(bottom, top + 1)


# ------------------------------------------------------------------------------------------ text


def box_text(box: Box, *, fixed: bool = False) -> str:
    """`[x1, y1, x2, y2]` normalised, RadVLM style: `round(v, 2)` printed as a float (`0.5`).

    `fixed=True` always prints two decimals (`0.50`).
    """
    values = [round(v, 2) + 0.0 for v in box.xyxy]  # + 0.0 turns -0.0 into 0.0
    if fixed:
        return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"
    return "[" + ", ".join(repr(v) for v in values) + "]"


def boxes_text(boxes: Sequence[Box], *, fixed: bool = False) -> str:
    """Several boxes as RadVLM joins them: `[..]`, `[..] and [..]`, `[..], [..] and [..]`."""
    parts = [box_text(b, fixed=fixed) for b in boxes]
    if not parts:
        raise ValueError("boxes_text needs at least one box")
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def box_pixels_text(box: Box, width: int, height: int) -> str:
    """`[x1, y1, x2, y2]` in integer pixels of a `width` x `height` image (half rounds up)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width!r} x {height!r}")
    return "[" + ", ".join(str(v) for v in box.to_pixels(width, height)) + "]"


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SEP = r"(?:\s*[,;]\s*|\s+)"
_FOUR = rf"({_NUM}){_SEP}({_NUM}){_SEP}({_NUM}){_SEP}({_NUM})"
_PAIRS = rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"


def _kv(names: str) -> str:
    return rf"\b(?:{names})\s*[=:]\s*({_NUM})"


# The written forms of a box, in the order they are tried at one position (earlier wins).
_FORMS: dict[str, str] = {
    # Qwen2-VL: <|box_start|>(x1,y1),(x2,y2)<|box_end|> on a 0-1000 grid
    "qwen": rf"<\|box_start\|>\s*{_PAIRS}\s*<\|box_end\|>",
    # <box>x1 y1 x2 y2</box>, <box>[x1, y1, x2, y2]</box>, <bbox>...</bbox>
    "tag": rf"<(?P<tagname>b?box)>\s*[\[\(]?\s*{_FOUR}\s*[\]\)]?\s*</(?P=tagname)>",
    # x1=.. y1=.. x2=.. y2=..  /  x_min: .., y_min: .., x_max: .., y_max: ..
    "kv": (rf"{_kv('x_?1|x_?min|xmin|left')}[\s,;]*{_kv('y_?1|y_?min|ymin|top')}[\s,;]*"
           rf"{_kv('x_?2|x_?max|xmax|right')}[\s,;]*{_kv('y_?2|y_?max|ymax|bottom')}"),
    # (x1, y1), (x2, y2)
    "pairs": _PAIRS,
    # [x1, y1, x2, y2], (x1,y1,x2,y2), {x1, y1, x2, y2}
    "bracket": rf"[\[\(\{{]\s*{_FOUR}\s*[\]\)\}}]",
}
BOX_FORMS: tuple[str, ...] = tuple(_FORMS)
_FORM_RES: dict[tuple[str, ...], re.Pattern[str]] = {}


@dataclass(frozen=True)
class BoxText:
    """One box as written in a text: where (`start:end`), the text, its form (`qwen`, `tag`, `kv`,
    `pairs`, `bracket`) and the four numbers as written (not yet checked: may be pixels, inverted,
    infinite)."""

    start: int
    end: int
    text: str
    form: str
    values: tuple[float, float, float, float]


def _form_re(forms: tuple[str, ...]) -> re.Pattern[str]:
    pattern = _FORM_RES.get(forms)
    if pattern is None:
        unknown = [f for f in forms if f not in _FORMS]
        if unknown or not forms:
            raise ValueError(f"unknown box text form(s) {unknown or forms!r} (known: {', '.join(BOX_FORMS)})")
        pattern = re.compile("|".join(f"(?P<{f}>{_FORMS[f]})" for f in BOX_FORMS if f in forms), re.IGNORECASE)
        _FORM_RES[forms] = pattern
    return pattern


def find_box_text(text: str, forms: Sequence[str] = BOX_FORMS) -> list[BoxText]:
    """Every box written in `text` in one of `forms` (default: all), in order of appearance.

    The one box-in-text reader: `parse_boxes` (model answers), the conversation checks (bracketed
    lists compared by their written numbers) and the preview (box text coloured like its box) all
    read boxes through it, so they agree on what counts as a box.
    """
    if not text:
        return []
    pattern = _form_re(tuple(forms))
    named = set(pattern.groupindex.values())
    out = []
    for match in pattern.finditer(text):
        numbers = [g for i, g in enumerate(match.groups(), 1) if g is not None and i not in named]
        out.append(BoxText(match.start(), match.end(), match.group(0), str(match.lastgroup),
                           tuple(float(v) for v in numbers)))  # type: ignore[arg-type]
    return out


def text_box(found: BoxText, width: int | None = None, height: int | None = None) -> Box | None:
    """The box a `BoxText` says, or None when it is not one: values all within [0, 1] (plus the edge
    tolerance) are normalised, Qwen's are on its 0-1000 grid, larger ones are pixels of a `width`
    x `height` image (None without a size); inverted, zero-area or outside boxes are None."""
    values = found.values
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return None
    try:
        if found.form == "qwen":
            return Box.from_grid_xyxy(*values, grid=QWEN_GRID, width=width, height=height)
        if max(abs(v) for v in values) <= 1.0 + EDGE_TOLERANCE:
            return Box.from_normalised(*values, width=width, height=height)
        if width is not None and height is not None:
            return Box.from_pixels_xyxy(*values, width=width, height=height)
    except BoxError:
        return None
    return None


def parse_boxes(text: str, width: int | None = None, height: int | None = None) -> list[Box]:
    """Boxes written in a model's answer, in the order they appear; unreadable ones are skipped.

    Reads `[x1, y1, x2, y2]`, `(x1,y1,x2,y2)`, `{...}`, `<box>x1 y1 x2 y2</box>`, `x1=.. y1=..
    x2=.. y2=..` (also `x_min:` ... `y_max:`), `(x1,y1),(x2,y2)` and Qwen2-VL's
    `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` (0-1000 grid). Values all within [0, 1] (plus the edge
    tolerance) are normalised; larger values are pixels of a `width` x `height` image and are
    skipped when no size is given. Boxes the `Box` checks reject (inverted, zero area, outside the
    image) are skipped.
    """
    boxes = (text_box(found, width, height) for found in find_box_text(text))
    return [box for box in boxes if box is not None]
