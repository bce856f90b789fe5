"""The one box type: normalised `[x1, y1, x2, y2]` in [0, 1] with the frame it came from.

Every source states boxes in its own frame (VinDr: pixel xyxy on the DICOM grid; MS-CXR: pixel
xywh; Chest ImaGenome: pixel xyxy on the original image, or on a 224 grid; PadChest-GR: already
normalised). The constructors below are the only place those frames are converted, so a box in a
record is always comparable with any other. Invalid boxes raise `BoxError` with a reason code
instead of being clipped into something that was never annotated.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BoxFrame = Literal["pixel_xyxy", "pixel_xywh", "grid_xyxy", "normalised_xyxy"]
# A coordinate may overshoot its frame by this share of the side (annotation tools let corners
# slip a few pixels past the edge); such coordinates are clamped. Beyond it the box is rejected.
EDGE_TOLERANCE = 0.02


class BoxError(ValueError):
    """A box that cannot be represented; `reason` is a short code for rejects."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Box(BaseModel):
    """Normalised xyxy (x right, y down, origin top-left) plus where it came from.

    `readers` is how many independent annotators agree on this box (fused boxes); None where the
    source has a single annotation. `width`/`height` are the source image's pixel size when known.
    """

    model_config = ConfigDict(frozen=True)

    x1: float = Field(ge=0.0, le=1.0)
    y1: float = Field(ge=0.0, le=1.0)
    x2: float = Field(ge=0.0, le=1.0)
    y2: float = Field(ge=0.0, le=1.0)
    frame: BoxFrame = "normalised_xyxy"
    width: int | None = None
    height: int | None = None
    readers: int | None = None

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_normalised(cls, x1: float, y1: float, x2: float, y2: float, *, width: int | None = None,
                        height: int | None = None, readers: int | None = None,
                        frame: BoxFrame = "normalised_xyxy") -> Box:
        """Checked construction from normalised corners (the other constructors end here)."""
        values = (x1, y1, x2, y2)
        try:
            values = tuple(float(v) for v in values)
        except (TypeError, ValueError) as exc:
            raise BoxError("not_a_number", f"{list(values)}") from exc
        if not all(math.isfinite(v) for v in values):
            raise BoxError("not_a_number", f"{list(values)}")
        x1, y1, x2, y2 = values
        if x1 > x2 or y1 > y2:
            raise BoxError("inverted", f"[{x1:g}, {y1:g}, {x2:g}, {y2:g}] has x1 > x2 or y1 > y2")
        low, high = -EDGE_TOLERANCE, 1.0 + EDGE_TOLERANCE
        if min(values) < low or max(values) > high:
            raise BoxError("outside_frame", f"[{x1:g}, {y1:g}, {x2:g}, {y2:g}] leaves the image by more than "
                                            f"{EDGE_TOLERANCE:.0%} of its side")
        x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
        if x2 - x1 <= 0.0 or y2 - y1 <= 0.0:
            raise BoxError("zero_area", f"[{x1:g}, {y1:g}, {x2:g}, {y2:g}] has no area inside the image")
        return cls(x1=x1, y1=y1, x2=x2, y2=y2, frame=frame, width=width, height=height, readers=readers)

    @classmethod
    def from_pixels_xyxy(cls, x1: float, y1: float, x2: float, y2: float, width: int, height: int,
                         readers: int | None = None) -> Box:
        """Pixel corners on an image of `width` x `height` (VinDr, Chest ImaGenome `original_*`)."""
        w, h = _size(width, height)
        return cls.from_normalised(float(x1) / w, float(y1) / h, float(x2) / w, float(y2) / h,
                                   width=w, height=h, readers=readers, frame="pixel_xyxy")

    @classmethod
    def from_pixels_xywh(cls, x: float, y: float, w: float, h: float, width: int, height: int) -> Box:
        """Top-left corner plus size in pixels (MS-CXR)."""
        W, H = _size(width, height)
        x, y, w, h = float(x), float(y), float(w), float(h)
        if w < 0 or h < 0:
            raise BoxError("inverted", f"negative size w={w:g} h={h:g}")
        return cls.from_normalised(x / W, y / H, (x + w) / W, (y + h) / H, width=W, height=H, frame="pixel_xywh")

    @classmethod
    def from_grid_xyxy(cls, x1: float, y1: float, x2: float, y2: float, grid: int = 224,
                       width: int | None = None, height: int | None = None) -> Box:
        """Corners on a square resized grid (Chest ImaGenome `x1..y2`, GEMeX: 224)."""
        g = float(grid)
        return cls.from_normalised(float(x1) / g, float(y1) / g, float(x2) / g, float(y2) / g,
                                   width=width, height=height, frame="grid_xyxy")

    # ------------------------------------------------------------------ views

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Integer pixel corners on an image of the given size (rounded half away from zero)."""
        def r(v: float) -> int:
            return int(math.floor(v + 0.5))
        return (r(self.x1 * width), r(self.y1 * height), r(self.x2 * width), r(self.y2 * height))


def _size(width: int, height: int) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError) as exc:
        raise BoxError("unknown_image_size", f"image size {width!r} x {height!r}") from exc
    if w <= 0 or h <= 0:
        raise BoxError("unknown_image_size", f"image size {w} x {h}")
    return w, h
