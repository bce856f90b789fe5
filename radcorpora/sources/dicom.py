"""DICOM radiographs to 8-bit PNG, the way chest X-ray loaders (torchxrayvision, the VinBigData
baselines) read them: modality LUT (rescale), then the VOI LUT or window the file states, then
MONOCHROME1 inverted so bone is always bright, then a min-max stretch to 0..255.

A corpus stores images once as PNG; DICOM files are converted here and nowhere else, so every
builder that reads VinDr-CXR (or any DICOM source) gets the same pixels. Sizes reported are the
original pixel grid (Columns x Rows), the frame the source's boxes are stated in.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from radcorpora.sources.errors import SourceError

# What pydicom and its pixel decoders raise for damaged, truncated or pixel-less files (a file
# cut inside an element's length field: struct.error from its element reader).
_PYDICOM_FAILURES = (OSError, EOFError, ValueError, KeyError, AttributeError, TypeError, IndexError,
                     RuntimeError, NotImplementedError, MemoryError, struct.error)


def _failures() -> tuple[type[BaseException], ...]:
    """_PYDICOM_FAILURES and pydicom's own errors (an element whose length does not fit its VR;
    not a DICOM file), which derive from Exception only. pydicom is imported when first read."""
    import pydicom.errors

    return _PYDICOM_FAILURES + (pydicom.errors.InvalidDicomError, pydicom.errors.BytesLengthException)


class DicomError(SourceError):
    """A DICOM file that cannot be turned into an image; the message names the file."""


@dataclass(frozen=True)
class DicomImage:
    """A converted radiograph: PNG bytes plus the original grid and the stored size."""

    png: bytes
    width: int  # original Columns: the frame the source's pixel boxes use
    height: int  # original Rows
    output_width: int  # size of the PNG (smaller than the original when max_side applied)
    output_height: int


def read_dicom_size(path: Path) -> tuple[int, int]:
    """(Columns, Rows) read from the header only (no pixel data is loaded)."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        columns, rows = dataset.get("Columns"), dataset.get("Rows")
    except _failures() as exc:
        raise DicomError(f"{path}: not a readable DICOM file ({exc})") from exc
    if not columns or not rows:
        raise DicomError(f"{path}: DICOM header has no Rows/Columns (no image in this file)")
    return int(columns), int(rows)


def _pixels(path: Path):
    """Decoded first frame after modality and VOI LUTs, and the dataset it came from."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
    except _failures() as exc:
        raise DicomError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise DicomError(f"{path}: DICOM file holds no pixel data")
    try:
        array = dataset.pixel_array
        frames = int(dataset.get("NumberOfFrames") or 1)
        colour = int(dataset.get("SamplesPerPixel") or 1) > 1
        if frames > 1:
            array = array[0]  # a radiograph is one frame; take the first of a multi-frame file
        if colour:
            return np.asarray(array), dataset, True
        array = apply_modality_lut(array, dataset)
        array = apply_voi_lut(array, dataset)
    except _failures() as exc:
        raise DicomError(f"{path}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    return np.asarray(array), dataset, False


def to_uint8(array: np.ndarray, invert: bool) -> np.ndarray:
    """Min-max stretch to 0..255 (a constant image becomes black), inverted for MONOCHROME1."""
    array = np.asarray(array, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    if high > low:
        scaled = (array - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(array)
    if invert:
        scaled = 255.0 - scaled
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def fit_within(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size that keeps the aspect ratio with the long side at most `max_side`."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_dicom_image(path: Path, max_side: int | None = None) -> DicomImage:
    """Convert one DICOM radiograph to a deterministic 8-bit grayscale PNG (colour files are
    reduced to grayscale), downscaled with LANCZOS so the long side is at most `max_side`."""
    path = Path(path)
    array, dataset, colour = _pixels(path)
    if array.ndim != (3 if colour else 2) or array.size == 0:
        raise DicomError(f"{path}: unexpected pixel array shape {array.shape}")
    height, width = int(array.shape[0]), int(array.shape[1])
    if colour:
        image = Image.fromarray(to_uint8(array, invert=False)[..., :3]).convert("L")
    else:
        invert = str(dataset.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
        image = Image.fromarray(to_uint8(array, invert))
    out_width, out_height = fit_within(width, height, max_side)
    if (out_width, out_height) != (width, height):
        image = image.resize((out_width, out_height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)  # no metadata: same bytes every run
    return DicomImage(png=buffer.getvalue(), width=width, height=height, output_width=out_width,
                      output_height=out_height)
