"""Crop the region of a `Box` out of an image, as a PNG whose bytes depend only on the input.

Rounding (ops.boxes.crop_pixels): `margin` widens each side by that share of the box's own width
/ height; edges are then rounded outwards (left/top floor, right/bottom ceil, a corner within
1e-9 px of a whole pixel counts as that pixel) so the crop always covers the box, clamped to the
image, at least one pixel each way. Right/bottom are exclusive. Coordinates are on the stored
pixel grid (an EXIF orientation is not applied).

Output: PNG at a fixed compression level, no ancillary chunks (no text, time, ICC, EXIF or dpi;
the transparency of a palette or grey image is kept, it is pixel data). The pixel mode is kept
for 1, L, LA, P, RGB, RGBA and 16-bit grey (I;16); CMYK / YCbCr (JPEG) become RGB. The bytes are
the same on every call and run with the same Pillow and zlib (which a build's manifest records).

Once per build: a builder that cuts the same crop in several chunks, or again on a resumed
build, goes through `store.state.derived_once` with `crop_variant` as the variant:

    png = derived_once(out, source_path, crop_variant(box, margin),
                       lambda: crop(source_bytes(), box, margin)[0])
    cut = crop_rectangle(box, width, height, margin)  # for ImageProvenance.crop, without decoding

(ops may not import store, so the call lives in the builder; tests/test_records_v3.py runs it.)
"""

from __future__ import annotations

import io

from PIL import Image

from radcorpora.ops.boxes import crop_pixels
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.interleaved import PixelCrop

CROP_VERSION = 1  # part of every variant key: raise it when the same inputs would give other bytes
PNG_COMPRESS_LEVEL = 6
_KEPT_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})
_TO_RGB = frozenset({"CMYK", "YCbCr"})
_KEPT_INFO = ("transparency",)


class CropError(ValueError):
    """The crop cannot be made (undecodable image, box from another image size, unusable mode)."""


def crop_rectangle(box: Box, width: int, height: int, margin: float = 0.0) -> PixelCrop:
    """The pixel rectangle `crop` cuts from a `width` x `height` image (see the module's rounding)."""
    try:
        left, top, right, bottom = crop_pixels(box, width, height, margin)
    except ValueError as exc:
        raise CropError(str(exc)) from exc
    return PixelCrop(left=left, top=top, right=right, bottom=bottom)


def decode(image_bytes: bytes) -> Image.Image:
    """The encoded image's pixels, for several crops of one image (`crop_decoded`): decode once."""
    try:
        with Image.open(io.BytesIO(image_bytes)) as opened:
            opened.load()
            return opened.copy()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise CropError(f"image does not decode: {type(exc).__name__}: {exc}") from exc


def crop(image_bytes: bytes, box: Box, margin: float = 0.0) -> tuple[bytes, PixelCrop]:
    """PNG bytes of `box` (widened by `margin`) cut from the encoded image, and the rectangle cut.

    A box that states its image size (`box.width`, `box.height`) must be on this image's grid:
    a box from a resized copy would cut the wrong region, so it is refused.
    """
    return crop_decoded(decode(image_bytes), box, margin)


def crop_decoded(image: Image.Image, box: Box, margin: float = 0.0) -> tuple[bytes, PixelCrop]:
    """`crop` of an image already decoded (`decode`): the same bytes."""
    width, height = image.size
    if (box.width is not None and box.width != width) or (box.height is not None and box.height != height):
        raise CropError(f"box is stated on a {box.width}x{box.height} image; this image is {width}x{height}")
    rectangle = crop_rectangle(box, width, height, margin)
    region = image.crop((rectangle.left, rectangle.top, rectangle.right, rectangle.bottom))
    kept = {key: image.info[key] for key in _KEPT_INFO if key in image.info}
    region = _png_mode(region)
    region.info = kept if region.mode == image.mode else {}
    buffer = io.BytesIO()
    region.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue(), rectangle


def crop_variant(box: Box, margin: float = 0.0) -> str:
    """The `derived_once` variant of a crop: everything its bytes depend on besides the source file
    (exact corners, the image size the box states, margin, encoder settings, CROP_VERSION)."""
    return (f"crop v{CROP_VERSION} box={box.x1!r},{box.y1!r},{box.x2!r},{box.y2!r} "
            f"on={box.width}x{box.height} margin={float(margin)!r} png level={PNG_COMPRESS_LEVEL}")


def _png_mode(image: Image.Image) -> Image.Image:
    if image.mode in _KEPT_MODES:
        return image
    if image.mode in _TO_RGB:
        return image.convert("RGB")
    if image.mode in ("I", "I;16B", "I;16L"):  # 16-bit grey as some decoders report it
        low, high = image.getextrema()
        if 0 <= low and high <= 0xFFFF:
            return image.convert("I;16") if image.mode != "I" else _int32_to_16(image)
    raise CropError(f"cannot keep pixel mode {image.mode} in a PNG crop")


def _int32_to_16(image: Image.Image) -> Image.Image:
    """Mode I with values in 0..65535 as I;16, exactly (Pillow's convert clips I -> I;16 only on
    some versions): through numpy, value for value."""
    import numpy as np

    values = np.asarray(image, dtype=np.int64).astype("<u2")
    return Image.frombuffer("I;16", image.size, values.tobytes(), "raw", "I;16", 0, 1)
