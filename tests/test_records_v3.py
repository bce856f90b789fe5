"""Records the next corpora need (interleaved samples, preference pairs, volume references) and
the crop that makes derived images: Arrow round trips, placeholder and provenance checks row-wise
and column-wise, crops against numpy slicing with rectangles worked out by hand, byte-stable PNGs,
and a crop made once per build through derived_once."""

from __future__ import annotations

import hashlib
import io
import math
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageCms, PngImagePlugin
from pydantic import BaseModel, ValidationError

from radcorpora.ops.crop import CropError, crop, crop_rectangle, crop_variant
from radcorpora.schemas.boxes import Box, BoxError
from radcorpora.schemas.columnar import check_table
from radcorpora.schemas.common import ImageData, Lineage, Turn
from radcorpora.schemas.features import arrow_schema_for
from radcorpora.schemas.interleaved import (
    ImageProvenance,
    InterleavedRecord,
    PixelCrop,
    placeholder_problem,
    placeholder_rows,
)
from radcorpora.schemas.interleaved import check_rows as interleaved_rows
from radcorpora.schemas.preference import LOSS_INTENT, PreferencePair
from radcorpora.schemas.preference import check_rows as preference_rows
from radcorpora.schemas.volume import VolumeRef, VolumeSlice, volume_rows


def png(array: np.ndarray, mode: str | None = None, **save) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png_chunk_types(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length, = struct.unpack_from(">I", data, pos)
        kinds.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return kinds


GREY = (np.arange(30 * 40).reshape(30, 40) % 251).astype(np.uint8)  # 40 wide, 30 high
RGB = np.stack([GREY, 255 - GREY, (GREY.astype(np.int64) * 7) % 256], axis=-1).astype(np.uint8)
DEEP = ((np.arange(30 * 40).reshape(30, 40) * 977) % 65536).astype("<u2")  # 16-bit grey, values past 255
LINEAGE = Lineage(source_dataset="demo", source_id="a", source_split="train", licence_class="public",
                  image_sha256="0" * 64)


def turn(role: str, value: str) -> Turn:
    return Turn.model_validate({"from": role, "value": value})


def interleaved(**changes) -> InterleavedRecord:
    """A full image, then a crop of it (parent 0), and two placeholders in the human turn."""
    full = png(GREY)
    box = Box.from_normalised(0.25, 0.1, 0.5, 0.55, width=40, height=30)
    cut, rectangle = crop(full, box, margin=0.0)
    fields = {
        "id": "s1",
        "images": [ImageData(bytes=full, path="a.png"), ImageData(bytes=cut, path=None)],
        "image_provenance": [ImageProvenance(source_sha256=sha(full), source_path="CT/a.png"),
                             ImageProvenance(source_sha256=sha(full), parent=0, box=box, crop=rectangle,
                                             derivation=crop_variant(box))],
        "conversations": [turn("human", "<image>\nThe whole film, then the region:\n<image>\nWhat is there?"),
                          turn("gpt", "A rounded opacity.")],
        "lineage": LINEAGE,
    }
    return InterleavedRecord(**{**fields, **changes})


def preference(**changes) -> PreferencePair:
    image = png(GREY)
    fields = {
        "id": "p1", "images": [ImageData(bytes=image, path="a.png")],
        "image_provenance": [ImageProvenance(source_sha256=sha(image))],
        "prompt": [turn("human", "<image>\nIs there a fracture?")],
        "chosen": turn("gpt", "No fracture is seen."), "rejected": turn("gpt", "There is a fracture."),
        "chosen_score": 0.9, "rejected_score": 0.2, "scorer": "radiologist", "lineage": LINEAGE,
    }
    return PreferencePair(**{**fields, **changes})


def volume(**changes) -> VolumeRef:
    fields = {
        "source_dataset": "demo-ct", "path": "patient1/ct.nii.gz", "sha256": "ab" * 32, "shape": [512, 512, 120],
        "spacing": [0.7, 0.7, 2.5], "orientation": "LPS",
        "slices": [VolumeSlice(axis=2, index=60, image=ImageData(bytes=png(GREY)), derivation="slice window=40/400 png")],
    }
    return VolumeRef(**{**fields, **changes})


def table_of(model: type[BaseModel], rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=arrow_schema_for(model))


# ------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("make", [interleaved, preference, volume])
def test_records_round_trip_through_parquet_and_pass_the_derived_column_checks(make, tmp_path):
    record = make()
    model = type(record)
    pq.write_table(table_of(model, [record.model_dump(by_alias=True)]), tmp_path / "x.parquet")
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.schema.equals(arrow_schema_for(model))
    assert table.schema.metadata[b"huggingface"] == arrow_schema_for(model).metadata[b"huggingface"]
    assert [model.model_validate(row) for row in table.to_pylist()] == [record]
    assert check_table(table, model) == ([], 0)


def test_arrow_schemas_equal_what_datasets_derives():
    pytest.importorskip("datasets")
    from radcorpora.schemas.features import features_for

    for model in (InterleavedRecord, PreferencePair, VolumeRef):
        assert features_for(model).arrow_schema.remove_metadata().equals(arrow_schema_for(model).remove_metadata())
    images = arrow_schema_for(InterleavedRecord).field("images").type
    assert images == pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


# ------------------------------------------------------------------------------------ placeholders


@pytest.mark.parametrize(("human", "gpt", "problem"), [
    ("<image>\n<image>\nWhat is there?", "An opacity.", None),
    ("<image> one <image> two <image> three", "An opacity.", "3 `<image>` placeholder(s) for 2 image(s)"),
    ("<image>\nOnly one.", "An opacity.", "1 `<image>` placeholder(s) for 2 image(s)"),
    ("<image>\nOne here.", "<image> and one here.", "`<image>` in a gpt turn"),
    ("<image>\n<Image>\nCase.", "An opacity.", "misspelt"),
    ("<image>\n<image_2>\nIndexed.", "An opacity.", "misspelt"),
])
def test_placeholders_must_match_the_images_in_count_and_place(human, gpt, problem):
    found = placeholder_problem([human, gpt], ["human", "gpt"], 2)
    assert (found is None) if problem is None else (problem in found)
    if problem is None:
        interleaved(conversations=[turn("human", human), turn("gpt", gpt)])
    else:
        with pytest.raises(ValidationError, match="placeholder|gpt turn"):
            interleaved(conversations=[turn("human", human), turn("gpt", gpt)])


def test_placeholder_rows_finds_the_same_rows_on_an_arrow_table():
    good = interleaved().model_dump(by_alias=True)

    def with_turns(human: str, gpt: str = "An opacity.") -> dict:
        return {**good, "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}

    rows = [good, with_turns("<image> <image> <image>"), with_turns("<image>"), good,
            with_turns("<image>", "<image>"), with_turns("<image> < image >"),
            {**good, "images": good["images"][:1], "image_provenance": good["image_provenance"][:1]}]
    table = table_of(InterleavedRecord, rows)
    assert placeholder_rows(table) == {"too_many_placeholders": [1, 6], "too_few_placeholders": [2, 5],
                                       "placeholder_in_assistant_turn": [4], "misspelt_placeholder": [5]}
    one_short = {**good, "image_provenance": good["image_provenance"][:1]}
    assert interleaved_rows("interleaved", table_of(InterleavedRecord, [good, one_short]))["provenance_count"] == [1]
    # every row flagged column-wise is refused row-wise, and no other
    refused = set()
    for index, row in enumerate(rows):
        try:
            InterleavedRecord.model_validate(row)
        except ValidationError:
            refused.add(index)
    assert refused == {1, 2, 4, 5, 6}


def test_provenance_of_a_derived_image_is_complete_and_points_back():
    record = interleaved()
    full, cut = record.image_provenance
    assert not full.derived and cut.derived and cut.crop == PixelCrop(left=10, top=3, right=20, bottom=17)
    with pytest.raises(ValidationError, match="both its box and its crop"):
        ImageProvenance(source_sha256=full.source_sha256, box=cut.box, derivation="crop")
    with pytest.raises(ValidationError, match="derivation"):
        ImageProvenance(source_sha256=full.source_sha256, box=cut.box, crop=cut.crop)
    with pytest.raises(ValidationError, match="no box and crop"):
        ImageProvenance(source_sha256=full.source_sha256, parent=0)
    with pytest.raises(ValidationError, match="pattern"):
        ImageProvenance(source_sha256="ABC")
    with pytest.raises(ValidationError, match="no area"):
        PixelCrop(left=5, top=0, right=5, bottom=3)
    with pytest.raises(ValidationError, match="does not come before it"):
        interleaved(image_provenance=[cut.model_copy(update={"parent": 1}), full])
    other = full.model_copy(update={"source_sha256": "f" * 64})
    with pytest.raises(ValidationError, match="different source files"):
        interleaved(image_provenance=[other, cut])
    with pytest.raises(ValidationError, match="1 provenance entries for 2 image"):
        interleaved(image_provenance=[full])


# -------------------------------------------------------------------------------------------- crop


@pytest.mark.parametrize(("array", "mode"), [(GREY, "L"), (RGB, "RGB"), (DEEP, "I;16")])
def test_crop_is_the_boxes_pixels_and_keeps_the_mode(array, mode):
    source = png(array)
    box = Box.from_normalised(0.25, 0.1, 0.5, 0.55)  # x 10..20 of 40; y 3..16.5 of 30 -> 3..17
    data, rectangle = crop(source, box)
    assert (rectangle.left, rectangle.top, rectangle.right, rectangle.bottom) == (10, 3, 20, 17)
    with Image.open(io.BytesIO(data)) as out:
        assert out.mode == mode and out.size == (10, 14)
        assert np.array_equal(np.asarray(out), array[3:17, 10:20])


def test_crop_rounding_at_fractional_edges_and_with_a_margin():
    # on a 100 x 100 image: 0.29 * 100 = 28.999999999999996 -> 29 and 0.56 * 100 = 56.00000000000001
    # -> 56 (float noise under 1e-9 px moves no edge); 0.255 * 100 = 25.5 -> 25 (floor), 0.505 * 100
    # = 50.5 -> 51 (ceil): the crop covers the box
    assert 0.29 * 100 != 29 and 0.56 * 100 != 56
    box = Box.from_normalised(0.29, 0.255, 0.56, 0.505)
    assert crop_rectangle(box, 100, 100) == PixelCrop(left=29, top=25, right=56, bottom=51)
    square = (np.arange(100 * 100).reshape(100, 100) % 253).astype(np.uint8)
    data, rectangle = crop(png(square), box)
    assert rectangle == PixelCrop(left=29, top=25, right=56, bottom=51)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), square[25:51, 29:56])
    # margin 0.2 of a 0.25 x 0.5 box: 0.05 * 40 = 2 px and 0.1 * 30 = 3 px on each side
    box = Box.from_normalised(0.25, 0.2, 0.5, 0.7)
    assert crop_rectangle(box, 40, 30, margin=0.2) == PixelCrop(left=8, top=3, right=22, bottom=24)
    # a margin past the edge is clamped to the image
    assert crop_rectangle(Box.from_normalised(0.0, 0.0, 0.5, 1.0), 40, 30, margin=0.5) == \
        PixelCrop(left=0, top=0, right=30, bottom=30)
    # a box thinner than a pixel still gives one pixel
    assert crop_rectangle(Box.from_normalised(0.5, 0.5, 0.5001, 0.5001), 40, 30) == \
        PixelCrop(left=20, top=15, right=21, bottom=16)


def test_crop_bytes_are_stable_and_carry_no_metadata():
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "scanner 1.0")
    info.add_text("Date", "2024-01-01T00:00:00")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = png(RGB, pnginfo=info, icc_profile=srgb, dpi=(300, 300))
    assert {b"tEXt", b"iCCP", b"pHYs"} <= set(png_chunk_types(source))
    box = Box.from_normalised(0.1, 0.1, 0.9, 0.8)
    first, _ = crop(source, box, 0.05)
    second, _ = crop(bytes(source), box.model_copy(), 0.05)
    assert first == second
    assert png_chunk_types(first)[0] == b"IHDR" and set(png_chunk_types(first)) == {b"IHDR", b"IDAT", b"IEND"}
    # the same pixels without the metadata give the same crop
    assert crop(png(RGB), box, 0.05)[0] == first


def test_crop_refuses_boxes_from_another_image_and_bad_input():
    with pytest.raises(BoxError, match="outside_frame"):
        Box.from_pixels_xyxy(30, 5, 60, 20, width=40, height=30)  # 60 of 40: outside the image
    stated = Box.from_pixels_xyxy(10, 5, 20, 20, width=80, height=60)  # on a copy twice the size
    with pytest.raises(CropError, match="80x60 image; this image is 40x30"):
        crop(png(GREY), stated)
    crop(png(GREY), Box.from_pixels_xyxy(10, 5, 20, 20, width=40, height=30))  # the right grid is fine
    with pytest.raises(CropError, match="does not decode"):
        crop(b"not an image", Box.from_normalised(0.1, 0.1, 0.5, 0.5))
    with pytest.raises(CropError, match="margin"):
        crop(png(GREY), Box.from_normalised(0.1, 0.1, 0.5, 0.5), margin=-0.1)
    with pytest.raises(CropError, match="margin"):
        crop(png(GREY), Box.from_normalised(0.1, 0.1, 0.5, 0.5), margin=math.nan)


def test_a_crop_is_made_once_per_build_through_derived_once(tmp_path):
    from radcorpora.store.state import derived_once

    source = tmp_path / "src" / "a.png"
    source.parent.mkdir()
    source.write_bytes(png(GREY))
    out = tmp_path / "build"
    box = Box.from_normalised(0.25, 0.1, 0.5, 0.55)
    made: list[float] = []

    def cut(margin: float) -> bytes:
        def make() -> bytes:
            made.append(margin)
            return crop(source.read_bytes(), box, margin)[0]
        return derived_once(out, source, crop_variant(box, margin), make)

    first = cut(0.0)
    assert cut(0.0) == first == crop(source.read_bytes(), box)[0]
    assert made == [0.0]  # the second call read the kept copy
    assert cut(0.1) != first and made == [0.0, 0.1]  # another margin is another variant
    assert cut(0.1) and made == [0.0, 0.1]
    assert crop_variant(box, 0.1) != crop_variant(Box.from_normalised(0.25, 0.1, 0.5, 0.5500001), 0.1)


# -------------------------------------------------------------------------------------- preference


def test_preference_pair_rules():
    pair = preference()
    assert LOSS_INTENT == "preference" and math.isclose(pair.margin, 0.7)
    for changes, message in [
        ({"chosen_score": 0.2, "rejected_score": 0.2}, "not above"),
        ({"chosen_score": 0.1}, "not above"),
        ({"chosen_score": math.inf}, "finite"),
        ({"rejected": turn("gpt", "No fracture is seen.")}, "same answer"),
        ({"chosen": turn("human", "No fracture is seen.")}, "gpt turns"),
        ({"prompt": [turn("human", "<image>\nQ?"), turn("gpt", "A.")]}, "alternate"),
        ({"prompt": [turn("human", "Is there a fracture?")]}, "0 `<image>` placeholder"),
        ({"chosen": turn("gpt", "<image> shows none.")}, "gpt turn"),
        ({"image_provenance": []}, "0 provenance entries"),
        ({"scorer": " "}, "pattern"),
    ]:
        with pytest.raises(ValidationError, match=message):
            preference(**changes)
    text_only = preference(images=[], image_provenance=[], prompt=[turn("human", "Define atelectasis.")])
    assert text_only.images == []


def test_preference_rows_on_an_arrow_table():
    good = preference().model_dump(by_alias=True)
    rows = [good, {**good, "chosen_score": 0.1}, {**good, "rejected": {"from": "gpt", "value": "See <image>."}},
            {**good, "prompt": [{"from": "human", "value": "No image named."}]}, {**good, "image_provenance": []}]
    assert preference_rows("default", table_of(PreferencePair, rows)) == {
        "too_few_placeholders": [3], "placeholder_in_answer": [2], "provenance_count": [4], "score_order": [1]}


# ------------------------------------------------------------------------------------------ volume


@pytest.mark.parametrize(("changes", "message"), [
    ({"spacing": [0.7, 0.0, 2.5]}, "spacing"),
    ({"spacing": [0.7, -1.0, 2.5]}, "spacing"),
    ({"spacing": [0.7, math.nan, 2.5]}, "spacing"),
    ({"shape": [512, 512]}, "at least 3"),
    ({"shape": [512, 512, 120, 2]}, "at most 3"),
    ({"shape": [512, 0, 120]}, "at least one voxel"),
    ({"path": "/data/ct.nii.gz"}, "pattern"),
    ({"path": "../ct.nii.gz"}, "pattern"),
    ({"path": "a/./ct.nii.gz"}, "pattern"),
    ({"path": "a\\ct.nii.gz"}, "pattern"),
    ({"path": "C:/ct.nii.gz"}, "relative"),
    ({"sha256": "AB" * 32}, "pattern"),
    ({"sha256": "ab" * 31}, "pattern"),
    ({"orientation": "RRS"}, "each of R/L"),
    ({"orientation": "RAX"}, "pattern"),
    ({"slices": [VolumeSlice(axis=2, index=120, image=ImageData(bytes=b"x"), derivation="slice")]}, "outside shape"),
])
def test_volume_reference_rules(changes, message):
    with pytest.raises(ValidationError, match=message):
        volume(**changes)


def test_volume_rows_on_an_arrow_table():
    good = volume()
    assert good.path == "patient1/ct.nii.gz" and volume(path=".hidden/..x/ct.nii").path == ".hidden/..x/ct.nii"
    row = good.model_dump()
    rows = [row, {**row, "spacing": [0.7, 0.0, 2.5]}, {**row, "shape": [512, 0, 120]}, {**row, "orientation": "LLS"},
            {**row, "slices": [{**row["slices"][0], "index": 120}]}, {**row, "path": "../x.nii"},
            {**row, "sha256": "xyz"}]
    table = table_of(VolumeRef, rows)
    assert volume_rows(table, column=None) == {"spacing": [1], "shape": [2], "orientation": [3], "slice_outside": [4]}
    violations, total = check_table(table, VolumeRef)
    assert total == 2 and {(v.row, v.field) for v in violations} == {(5, "path"), (6, "sha256")}
    wrapped = pa.table({"volume": pa.StructArray.from_arrays([c.combine_chunks() for c in table.columns],
                                                               names=table.column_names)})
    assert volume_rows(wrapped) == volume_rows(table, column=None)
