"""Checking that stored image bytes are a readable image, at two costs.

`full` decodes every pixel. `crc` is for speed on large PNG trees: a PNG carries a CRC-32 over
every chunk, pixel data included, so checking the signature, the header and every chunk's CRC
(PIL's `verify`) catches truncated and corrupted files at about a tenth of the cost of a decode.
What it cannot catch is a file whose encoder wrote a broken zlib stream with valid CRCs. Formats
without per-chunk checksums (JPEG, ...) are always fully decoded.
"""

from __future__ import annotations

import io
from typing import Literal

from PIL import Image, UnidentifiedImageError

ImageCheck = Literal["full", "crc"]
IMAGE_CHECKS: tuple[str, ...] = ("full", "crc")

_DECODER_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


class ImageCheckError(ValueError):
    """The bytes are not a readable image; the message says why."""


def check_image(data: bytes, level: ImageCheck = "full") -> tuple[int, int]:
    """Raise ImageCheckError unless `data` is a readable image; returns (width, height)."""
    if level not in IMAGE_CHECKS:
        raise ValueError(f"unknown image check {level!r}; choose one of {', '.join(IMAGE_CHECKS)}")
    if not data:
        raise ImageCheckError("file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if level == "crc" and image.format == "PNG":
                image.verify()
            else:
                image.load()
    except _DECODER_ERRORS as exc:
        raise ImageCheckError(f"{type(exc).__name__}: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageCheckError(f"{type(exc).__name__}: {exc}") from exc
    return size
