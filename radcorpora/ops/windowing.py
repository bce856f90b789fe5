"""CT display windows: HU -> 8-bit grey, and byte-stable PNGs of slices.

A window of width W and level L shows [L - W/2, L + W/2] as 0..255:
grey = floor((HU - (L - W/2)) / W x 255 + 0.5), clipped to 0..255 (round half up, so a value never
depends on numpy's round-half-to-even). The three standard windows:

- lung:        W 1500 / L -600  (HU -1350 .. 150): airways, nodules, emphysema
- soft tissue: W  400 / L   40  (HU -160 .. 240): mediastinum, abdominal organs, lesions
- bone:        W 1800 / L  400  (HU -500 .. 1300): cortex, fractures, calcification

One window gives a greyscale PNG; the three together an RGB PNG with red = lung, green = soft
tissue, blue = bone (the order above), so one image carries all three for 2-D models.

PNGs are written by Pillow with fixed compression (level 6, no optimisation) and no metadata
chunks (no text, no time, no gamma), so the same pixels give the same bytes on every run.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radcorpora.schemas.common import ImageData
from radcorpora.schemas.volume import VolumeSlice


@dataclass(frozen=True)
class Window:
    name: str
    width: float
    level: float

    @property
    def lower(self) -> float:
        return self.level - self.width / 2

    @property
    def upper(self) -> float:
        return self.level + self.width / 2


WINDOWS: dict[str, Window] = {
    "lung": Window("lung", 1500.0, -600.0),
    "soft_tissue": Window("soft_tissue", 400.0, 40.0),
    "bone": Window("bone", 1800.0, 400.0),
}
RGB_WINDOWS: tuple[str, str, str] = ("lung", "soft_tissue", "bone")  # red, green, blue
PNG_COMPRESS_LEVEL = 6


def window(hu: np.ndarray, name_or_window: str | Window) -> np.ndarray:
    """HU array -> uint8 through one window (see the module docstring for the formula)."""
    w = WINDOWS[name_or_window] if isinstance(name_or_window, str) else name_or_window
    if not w.width > 0:
        raise ValueError(f"window width must be > 0, got {w.width}")
    scaled = (np.asarray(hu, dtype=np.float64) - w.lower) / w.width * 255.0
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """A 2-D uint8 array (greyscale) or H x W x 3 (RGB) as PNG bytes, byte-stable."""
    from PIL import Image

    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected uint8 H x W or H x W x 3, got {pixels.dtype} {pixels.shape}")
    image = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


def windowed_png(hu: np.ndarray, windows: str | Sequence[str] = RGB_WINDOWS) -> bytes:
    """A 2-D HU slice as PNG: one window name -> greyscale, three names -> RGB in the order given."""
    names = (windows,) if isinstance(windows, str) else tuple(windows)
    if len(names) == 1:
        return png_bytes(window(hu, names[0]))
    if len(names) != 3:
        raise ValueError(f"give one window or three (R, G, B), got {names}")
    return png_bytes(np.stack([window(hu, n) for n in names], axis=-1))


def derivation(windows: str | Sequence[str] = RGB_WINDOWS) -> str:
    names = (windows,) if isinstance(windows, str) else tuple(windows)
    text = "+".join(f"{n} W{WINDOWS[n].width:g}/L{WINDOWS[n].level:g}" for n in names)
    return f"axial slice, {text}, {'grey' if len(names) == 1 else 'rgb'} png"


def volume_slice(axis: int, index: int, hu: np.ndarray, windows: str | Sequence[str] = RGB_WINDOWS,
                 path: str | None = None) -> VolumeSlice:
    """The stored form of one slice: its place in the volume, the PNG, how it was made."""
    return VolumeSlice(axis=axis, index=index, image=ImageData(bytes=windowed_png(hu, windows), path=path),
                       derivation=derivation(windows))
