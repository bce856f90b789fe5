"""Synthetic chest radiographs for the demo sources: a body outline, two lung fields, a heart
shadow, and each finding drawn as a bright blob exactly inside its box, so grounding can be learnt
from the pixels and a preview can be checked by eye.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from radcorpora.ops.sampling import row_rng


def draw_cxr(key: str, width: int = 256, height: int = 256,
             findings: Sequence[tuple[float, float, float, float]] = (), lateral: bool = False) -> Image.Image:
    """A grayscale ('L') radiograph; `findings` are normalised xyxy boxes filled with a blob."""
    rng = row_rng(0, "demo-cxr", key, "draw")
    image = Image.new("L", (width, height), 10)
    draw = ImageDraw.Draw(image)
    jx, jy = rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)

    def px(x: float, y: float) -> tuple[int, int]:
        return int((x + jx) * width), int((y + jy) * height)

    draw.ellipse((*px(0.08, 0.05), *px(0.92, 1.05)), fill=120)  # body
    if lateral:
        draw.ellipse((*px(0.25, 0.15), *px(0.75, 0.8)), fill=45)
    else:
        draw.ellipse((*px(0.15, 0.15), *px(0.47, 0.82)), fill=40)  # right lung (image left)
        draw.ellipse((*px(0.53, 0.15), *px(0.85, 0.82)), fill=40)  # left lung
        draw.ellipse((*px(0.42, 0.45), *px(0.70, 0.78)), fill=150)  # heart
        draw.rectangle((*px(0.47, 0.02), *px(0.53, 0.95)), fill=170)  # spine
    for x1, y1, x2, y2 in findings:
        box = (int(x1 * width), int(y1 * height), max(int(x2 * width) - 1, int(x1 * width)),
               max(int(y2 * height) - 1, int(y1 * height)))
        draw.ellipse(box, fill=235)
    image = image.filter(ImageFilter.GaussianBlur(1.0))
    noise = np.frombuffer(rng.randbytes(width * height), dtype=np.uint8).reshape(height, width) // 16
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise - 8, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()
