"""Both image check levels reject truncated and corrupted files and accept good ones."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from radcorpora.demo.radimagenet import draw_image
from radcorpora.ops.image_check import ImageCheckError, check_image


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("level", ["crc", "full"])
def test_png_checks(level):
    png = draw_image("brain", 1, "check")
    assert check_image(png, level) == (224, 224)
    idat = png.index(b"IDAT") + 100  # inside the compressed pixel data
    for broken in (png[: len(png) // 2], _flip(png, idat), b"", b"not an image at all"):
        with pytest.raises(ImageCheckError):
            check_image(broken, level)


def test_crc_level_still_decodes_formats_without_checksums():
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    assert check_image(jpeg, "crc") == (64, 64)
    with pytest.raises(ImageCheckError):
        check_image(jpeg[: len(jpeg) // 3], "crc")


def test_unknown_level_is_an_error():
    with pytest.raises(ValueError, match="unknown image check"):
        check_image(b"x", "sometimes")  # type: ignore[arg-type]
