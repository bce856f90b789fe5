"""`radcorpora preview`: the HTML report of a build. Unit tests on the page, and a headless
Chromium test that the drawn boxes sit where the row's boxes say (within a pixel)."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.ops.boxes import parse_boxes
from radcorpora.publish.preview import (
    PlotSpec,
    PreviewSpec,
    find_boxes,
    iter_sample_boxes,
    render_preview,
    render_row_default,
    sample_rows,
    words_before,
    write_preview,
)
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import ImageData, Lineage, Turn
from radcorpora.store.shards import ShardWriter, shard_relpath

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


# --------------------------------------------------------------------------- a hand-made build with boxes


class Instance(BaseModel):
    label: str
    boxes: list[Box]


class BoxRecord(BaseModel):
    image: ImageData
    id: str
    boxes: list[Box]
    labels: list[str]  # one per box: the parallel list labels them
    instances: list[Instance]
    conversations: list[Turn]
    view: str
    lineage: Lineage


WIDTH, HEIGHT = 640, 512  # not square: x and y scale differently in the thumbnail
FINDINGS = [  # (label, normalised box, readers)
    ("Nodule <b>&amp;", (0.18, 0.22, 0.36, 0.40), 3),
    ("Pleural effusion", (0.58, 0.55, 0.90, 0.86), 2),
]
INSTANCE = ("Cardiomegaly", (0.40, 0.45, 0.66, 0.80))


def _image(seed: int) -> bytes:
    """A dark 'radiograph' with bright blobs exactly inside the boxes, so a screenshot shows
    whether each drawn box sits on its finding."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (WIDTH, HEIGHT), 20 + seed)
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 30, WIDTH - 40, HEIGHT - 20), fill=70)
    for _, (x1, y1, x2, y2), _ in FINDINGS:
        draw.rectangle((x1 * WIDTH, y1 * HEIGHT, x2 * WIDTH - 1, y2 * HEIGHT - 1), fill=200)
    x1, y1, x2, y2 = INSTANCE[1]
    draw.ellipse((x1 * WIDTH, y1 * HEIGHT, x2 * WIDTH - 1, y2 * HEIGHT - 1), outline=255, width=3)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _record(i: int) -> BoxRecord:
    boxes = [Box.from_normalised(*xyxy, width=WIDTH, height=HEIGHT, readers=readers) for _, xyxy, readers in FINDINGS]
    text_box = "[0.05, 0.06, 0.15, 0.14]"  # in the text only: drawn dashed
    return BoxRecord(
        image=ImageData(bytes=_image(i), path=f"cxr_{i}.png"),
        id=f"cxr-{i:03d}",
        boxes=boxes,
        labels=[label for label, _, _ in FINDINGS],
        instances=[Instance(label=INSTANCE[0], boxes=[Box.from_normalised(*INSTANCE[1])])],
        conversations=[
            Turn(**{"from": "human", "value": "<image>\nWhere are the nodule and the effusion? <script>alert(1)</script>"}),
            Turn(**{"from": "gpt", "value": f"Nodule at [0.18, 0.22, 0.36, 0.4]; effusion at [0.58, 0.55, 0.9, 0.86]; "
                                            f"marker {text_box}."}),
        ],
        view="PA" if i % 2 else "AP",
        lineage=Lineage(source_dataset="hand-made", source_id=str(i), source_split="train", licence_class="public",
                        image_sha256="0" * 64),
    )


def make_box_build(root: Path, rows: int = 5) -> Path:
    build = root / "boxes-build"
    writer = ShardWriter(build / shard_relpath("default", "train", 0, 1), BoxRecord)
    for i in range(rows):
        writer.write(_record(i))
    writer.close()
    (build / "build").mkdir(parents=True)
    (build / "build" / "manifest.json").write_text(json.dumps({
        "corpus": "hand-made-boxes", "licence_class": "public", "splits": {"default": {"train": rows}},
        "rejects": {"box_outside_frame": 2, "image_missing": 1},
        "validation": {"valid": True, "checks": 1, "violations": 0, "failed_checks": [], "warnings": []},
    }))
    (build / "build" / "rejects.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in [
        {"source": "boxes.csv", "row": "7", "reason": "box_outside_frame", "detail": "x2 1.4 <beyond>"},
        {"source": "boxes.csv", "row": "9", "reason": "box_outside_frame", "detail": "y2 1.2"},
        {"source": "images/", "row": None, "reason": "image_missing", "detail": "cxr_99.png"},
    ]))
    (build / "build" / "validation.json").write_text(json.dumps({"checks": [
        {"name": "boxes_in_frame", "description": "boxes inside the image", "checked": rows, "violations": 0,
         "examples": []}]}))
    return build


@pytest.fixture(scope="module")
def box_build(tmp_path_factory) -> Path:
    return make_box_build(tmp_path_factory.mktemp("preview"))


# --------------------------------------------------------------------------- unit tests


def test_boxes_found_anywhere_in_a_row_with_labels_and_readers(box_build):
    rows = sample_rows(sorted((box_build / "data/default").glob("*.parquet")), 1, "0")
    found = find_boxes(rows[0][2])
    assert [(b.label, b.readers) for b in found] == [
        ("Nodule <b>&amp;", 3), ("Pleural effusion", 2), ("Cardiomegaly", None)]
    assert found[2].source == "instances[0].boxes[0]"
    assert found[0].matches(FINDINGS[0][1])


def test_box_build_renders_through_the_schema_default(box_build):
    page, shown = render_preview(box_build, samples=3, seed=1)
    assert shown == 3
    overlays = list(iter_sample_boxes(page))
    # three struct boxes + the box that is only in the text, per row
    assert len(overlays) == 3 * 4
    expected = [xyxy for _, xyxy, _ in FINDINGS] + [INSTANCE[1], (0.05, 0.06, 0.15, 0.14)]
    for row in range(3):
        got = [b[k] for b in overlays[4 * row:4 * row + 4] for k in ("x1", "y1", "x2", "y2")]
        assert got == pytest.approx([v for xyxy in expected for v in xyxy])
    # pixel geometry: thumbnail 384 x 307 (640 x 512 scaled), box = normalised x size
    first = re.search(r'<div class="box" style="left:([\d.]+)px;top:([\d.]+)px;width:([\d.]+)px;height:([\d.]+)px', page)
    assert first is not None
    assert [float(v) for v in first.groups()] == pytest.approx([0.18 * 384, 0.22 * 307, 0.18 * 384, 0.18 * 307], abs=0.01)
    assert 'width="384" height="307"' in page
    assert "3 readers" in page and "×3" in page
    assert "Cardiomegaly" in page
    assert 'class="box fromtext"' in page  # the text-only box, dashed
    assert page.count('class="boxtext"') == 3 * 3  # box text in the turns, coloured like its box
    # plots from the schema: box sizes, readers, view, rounds; rejects grouped with examples
    for title in ("box sizes (boxes[])", "box sizes (instances[].boxes[])", "readers agreeing per box (boxes[])",
                  "conversation rounds (conversations)", 'alt="view"'):
        assert html.escape(title, quote=True) in page or title in page
    assert "box_outside_frame" in page and "x2 1.4 &lt;beyond&gt;" in page and "cxr_99.png" in page
    assert "boxes_in_frame" in page


def test_every_data_text_is_escaped_and_nothing_is_fetched(box_build):
    page, _ = render_preview(box_build, samples=2)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Nodule <b>" not in page and "Nodule &lt;b&gt;&amp;amp;" in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "http://" not in page and "https://" not in page.replace("http://www.w3.org", "")


def test_same_build_and_seed_give_the_same_bytes_and_another_seed_other_rows(demo_build, tmp_path):
    a = write_preview(demo_build, tmp_path / "a.html", samples=3, seed=7)
    b = write_preview(demo_build, tmp_path / "b.html", samples=3, seed=7)
    c = write_preview(demo_build, tmp_path / "c.html", samples=3, seed=8)
    assert a.path.read_bytes() == b.path.read_bytes()
    rows = lambda p: re.findall(r'data-row="(\d+)"', p.read_text())
    assert rows(a.path) != rows(c.path)
    assert a.rows_shown == 3 * 5  # 3 rows of each of the five config/splits


def test_corpus_spec_plots_and_rows_of_a_real_build(demo_build, tmp_path):
    result = runner.invoke(app, ["preview", str(demo_build), "--out", str(tmp_path / "p.html"), "--samples", "2",
                                 "--config", "instruct", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "written to" in result.output
    page = (tmp_path / "p.html").read_text()
    assert "RadImageNet-VQA" in page
    for title in ("questions per type", "pathology", "region", "conversation rounds"):
        assert f'alt="{title}"' in page
    assert "instruct / train: 2 of" in page and 'id="rows-benchmark-test"' not in page
    assert '<li class="right">' in page  # a multiple-choice answer marked
    assert page.count('class="turn human"') == 2 * 2 * 9
    assert "no source rows rejected" in page


def test_cli_errors_exit_2(demo_build, tmp_path):
    for args in (["--config", "nope"], ["--split", "nope"]):
        result = runner.invoke(app, ["preview", str(demo_build), "--out", str(tmp_path / "x.html"), *args])
        assert result.exit_code == 2, result.output
        assert "nope" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["preview", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a folder" in result.output


def test_a_spec_row_renderer_and_plots_replace_the_defaults(box_build):
    def render(row, tools):
        return f'<p class="mine">{tools.escape(row["id"])}</p>' + tools.images([row["image"]], tools.find_boxes(row))

    page, _ = render_preview(box_build, samples=2, spec=PreviewSpec(
        plots=(PlotSpec("views", "view"), PlotSpec("never", "no.such.column")), render_row=render))
    assert page.count('<p class="mine">cxr-') == 2
    assert 'alt="views"' in page and 'alt="never"' not in page and "box sizes" not in page
    assert len(list(iter_sample_boxes(page))) == 2 * 3


def test_reads_only_the_sampled_row_groups(tmp_path, monkeypatch):
    """Rows come from their own row groups: whole-table reads are refused, and only as many row
    groups are read as rows are shown."""
    build = make_box_build(tmp_path, rows=200)  # 64-row groups: 4 row groups
    shard = next((build / "data/default").glob("*.parquet"))
    assert pq.ParquetFile(shard).metadata.num_row_groups == 4
    read: list[int] = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, *args, **kwargs):
        read.append(i)
        return original(self, i, *args, **kwargs)

    def refuse(self, *args, **kwargs):
        raise AssertionError("the whole table was read")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    page, shown = render_preview(build, samples=1, seed=0, stat_rows=64)
    assert shown == 1 and len(read) == 1
    assert "64 of 200 rows (a seeded sample of row groups)" in page


# --------------------------------------------------------------------------- a small radvlm build: turns inside instances


@pytest.fixture(scope="module")
def radvlm_build(tmp_path_factory) -> Path:
    """VinDr-CXR demo -> abnormality_grounding (one instance per finding class, labelled) and
    abnormality_detection (one unlabelled instance naming every class in its answer): 28 rows."""
    from radcorpora.corpora.radvlm.build import RadVLMConfig
    from radcorpora.demo.vindr_cxr import write_demo_vindr_cxr
    from radcorpora.registry import build

    root = tmp_path_factory.mktemp("radvlm")
    write_demo_vindr_cxr(root / "vindr")
    config = RadVLMConfig(tasks=("abnormality_grounding", "abnormality_detection"), max_side=96)
    outcome = build("radvlm", {"vindr_cxr": root / "vindr"}, config, root / "out")
    assert outcome.report.valid, outcome.report.summary()
    return root / "out"


def _cards(page: str) -> list[tuple[dict[str, str], str]]:
    """(data-* attributes, inner HTML) of every sample card of a page."""
    cards = []
    for part in page.split('<div class="sample" ')[1:]:
        attrs = dict(re.findall(r'data-(config|split|shard|row)="([^"]*)"', part.split(">", 1)[0]))
        cards.append((attrs, part.split("</section>")[0]))
    return cards


def _row_of(build: Path, attrs: dict[str, str]) -> dict:
    """The row a card shows, read straight from its shard (not through the preview's reader)."""
    table = pq.read_table(build / "data" / attrs["config"] / attrs["shard"])
    return table.slice(int(attrs["row"]), 1).to_pylist()[0]


def _expected_turns(row: dict) -> list[tuple[str, str]]:
    turns = [(t["from"], t["value"]) for t in row.get("conversations") or []]
    for instance in row.get("instances") or []:
        turns += [(t["from"], t["value"]) for t in instance.get("conversations") or []]
    return turns


def _expected_box_labels(row: dict) -> list[tuple[str, int | None]]:
    """What each box of a radvlm row marks, worked out from the row: the instance's label, else
    (detection) the class its answer names before the boxes (`Label: [..] and [..]; ...`)."""
    out: list[tuple[str, int | None]] = []
    for instance in row["instances"]:
        if instance["label"]:
            out += [(instance["label"], b["readers"]) for b in instance["boxes"]]
            continue
        answer = instance["conversations"][-1]["value"]
        named = [(part.split(":")[0].strip(), len(parse_boxes(part))) for part in answer.split("; ")]
        labels = [label for label, n in named for _ in range(n)]
        assert len(labels) == len(instance["boxes"])
        out += [(label, b["readers"]) for label, b in zip(labels, instance["boxes"])]
    return out


def _said(card: str) -> list[tuple[str, str]]:
    """(who, text) of every rendered turn of a card, tags stripped and entities read back."""
    return [(who, html.unescape(re.sub(r"<[^>]+>", "", said)))
            for who, said in re.findall(r'<div class="turn ([a-z]+)"><span class="who">[^<]*</span>'
                                        r'<div class="said">(.*?)</div></div>', card, flags=re.DOTALL)]


def test_radvlm_rows_show_every_turn_of_every_instance_and_boxes_say_what_they_mark(radvlm_build):
    page, shown = render_preview(radvlm_build, samples=20, seed=0)
    cards = _cards(page)
    assert shown == len(cards) == 28  # every row of the small build
    multi = 0
    for attrs, card in cards:
        row = _row_of(radvlm_build, attrs)
        multi += len(row["instances"]) > 1
        assert _said(card) == _expected_turns(row)
        assert "instances [" not in card and "[1 items]" not in card
        assert card.count('<div class="item" ') == len(row["instances"])
        for n, instance in enumerate(row["instances"]):
            assert f'data-path="instances[{n}]"' in card and html.escape(instance["id"]) in card
        labels = [(html.unescape(label), int(readers) if readers else None)
                  for readers, label in re.findall(r'data-readers="(\d*)" data-label="([^"]*)"', card)]
        assert labels == _expected_box_labels(row)
        assert not any("instances" in label or "boxes[" in label for label, _ in labels)
    assert multi >= 2  # rows whose image carries several findings, one instance each
    assert "Aortic enlargement" in page and " 1 reader</li>" in page and "1 readers" not in page


def test_rad_ace_cot_and_radimagenet_rows_show_their_question_and_answer_text(demo_build):
    cot = {"id": "c1", "images": [{"bytes": _image(0), "path": "a.png"}], "question": "Which organ is enlarged?",
           "cot_output": "<think>The liver spans <b>far</b>.</think> <answer>Liver</answer>", "think": "The liver",
           "answer": "Liver", "conversations": [{"from": "human", "value": "<image>\nWhich organ is enlarged?"},
                                                 {"from": "gpt", "value": "<think>The liver spans <b>far</b>.</think> "
                                                                          "<answer>Liver</answer>"}],
           "modality": "CT", "body_part": "abdomen", "verification": "passed"}
    body = render_row_default(cot)
    assert _said(body) == [(t["from"], t["value"]) for t in cot["conversations"]]
    assert "Which organ is enlarged?</div>" in body and "answer: <b>Liver</b>" in body
    page, _ = render_preview(demo_build, samples=2, seed=5)
    for attrs, card in _cards(page):
        row = _row_of(demo_build, attrs)
        assert _said(card) == _expected_turns(row)
        if "question" in row:
            assert html.escape(row["question"]) in card and f"answer: <b>{html.escape(row['answer'])}</b>" in card
        for q in row.get("questions") or []:
            assert html.escape(q["question"]) in card


def test_box_labels_come_from_the_words_before_them_when_no_field_names_them():
    turns = [{"from": "human", "value": "<image>\nFind the findings."},
             {"from": "gpt", "value": "Lung Opacity: [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.6] and "
                                      "[0.7, 0.1, 0.8, 0.2]; Pleural effusion: <box>0.2 0.6 0.4 0.9</box>. "
                                      "The heart is at <|box_start|>(300,400),(700,800)<|box_end|>"}]
    assert words_before((0.5, 0.5, 0.6, 0.6), turns) == "Lung Opacity"
    assert words_before((0.7, 0.1, 0.8, 0.2), turns) == "Lung Opacity"
    assert words_before((0.2, 0.6, 0.4, 0.9), turns) == "Pleural effusion"
    assert words_before((0.3, 0.4, 0.7, 0.8), turns) == "The heart"
    assert words_before((0.11, 0.2, 0.3, 0.4), turns) is None  # not written: no label invented
    row = {"image": {"bytes": _image(1), "path": "x.png"},
           "instances": [{"id": "i", "label": None, "conversations": turns, "readers_note": "x",
                          "boxes": [{"x1": 0.1, "y1": 0.2, "x2": 0.3, "y2": 0.4, "readers": 2},
                                    {"x1": 0.2, "y1": 0.6, "x2": 0.4, "y2": 0.9, "readers": None},
                                    {"x1": 0.45, "y1": 0.45, "x2": 0.55, "y2": 0.55, "readers": None}]}]}
    assert [(b.label, b.readers) for b in find_boxes(row)] == [("Lung Opacity", 2), ("Pleural effusion", None),
                                                               ("box", None)]
    body = render_row_default(row)
    # every box form in the text is coloured; the two written only in the text are drawn dashed
    assert body.count('class="boxtext"') == 5
    drawn = [(b["x1"], b["y1"], b["x2"], b["y2"]) for b in iter_sample_boxes(body)]
    assert drawn[3:] == [(0.5, 0.5, 0.6, 0.6), (0.7, 0.1, 0.8, 0.2), (0.3, 0.4, 0.7, 0.8)]
    assert 'data-label="Lung Opacity (turn 2)"' in body and 'data-label="The heart (turn 2)"' in body


def test_preview_out_that_cannot_take_a_file_exits_2_with_one_line_and_no_temporary_file(demo_build, tmp_path,
                                                                                          monkeypatch):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    for out, said in ((folder, "is a folder"), (a_file / "p.html", "is a file, not a folder"),
                      (a_file / "deeper" / "p.html", "is a file, not a folder")):
        result = runner.invoke(app, ["preview", str(demo_build), "--out", str(out), "--samples", "1"])
        assert result.exit_code == 2, result.output
        assert said in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a-file.txt", "a-folder"]
    assert a_file.read_text() == "x"

    def disk_full(tmp, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("radcorpora.store.atomic.commit", disk_full)
    result = runner.invoke(app, ["preview", str(demo_build), "--out", str(tmp_path / "new" / "p.html"),
                                 "--samples", "1"])
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and len(result.output.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "new").iterdir()] == []  # the temporary file was removed


def test_preview_out_in_an_unwritable_folder_exits_2(demo_build, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = runner.invoke(app, ["preview", str(demo_build), "--out", str(locked / "p.html")])
        assert result.exit_code == 2 and "not writable" in result.output, result.output
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------- in a real browser


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _open_in_chromium(report: Path):
    """A headless Chromium showing `report`, after checking it loaded without errors and every
    image decoded; skips where the browser or selenium is not installed."""
    found = _chromium()
    if found is None:
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver); not installed here")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400",
                "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(found[1]), options=options)
    except WebDriverException as exc:  # a broken local browser install is an environment problem, said plainly
        pytest.fail(f"chromium is installed but did not start under chromedriver: {exc}")
    try:
        driver.get(report.as_uri())
        assert driver.title.endswith("preview")
        errors = [entry for entry in driver.get_log("browser") if entry.get("level") in ("SEVERE", "ERROR")]
        assert errors == [], errors
        # every image decoded (an undecodable data URI has naturalWidth 0)
        broken = driver.execute_script(
            "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)")
        assert broken == []
    except BaseException:
        driver.quit()
        raise
    return driver


def _rendered_turns(driver) -> list[dict]:
    """Per sample card as the browser lays it out: where its row is, and the turns it shows
    (who, visible text), with each turn's height (0 for a turn that takes no room)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.sample')].map(s => ({config: s.dataset.config, "
        "shard: s.dataset.shard, row: s.dataset.row, turns: [...s.querySelectorAll('.turn')].map(t => "
        "[t.querySelector('.who').textContent, t.querySelector('.said').textContent, "
        "t.getBoundingClientRect().height])}))")


def test_radvlm_preview_in_headless_chromium_shows_every_turn_of_every_sample(radvlm_build, tmp_path):
    report = write_preview(radvlm_build, tmp_path / "radvlm.html", samples=12, seed=2).path  # every row
    driver = _open_in_chromium(report)
    from selenium.webdriver.common.by import By

    try:
        cards = _rendered_turns(driver)
        labels = [b.get_attribute("data-label") for b in driver.find_elements(By.CSS_SELECTOR, ".frame .box")]
        shot = tmp_path / "radvlm.png"
        driver.find_element(By.CSS_SELECTOR, ".sample").screenshot(str(shot))
    finally:
        driver.quit()
    assert len(cards) == 28
    instances = []
    for card in cards:
        row = _row_of(radvlm_build, card)
        instances.append(len(row["instances"]))
        turns = card["turns"]
        assert len(turns) == len(_expected_turns(row)) >= 2, card
        assert [(who, said) for who, said, _ in turns] == _expected_turns(row)
        assert all(height > 10 for _, _, height in turns)  # each one laid out, not collapsed away
    assert max(instances) >= 2  # the turns of every instance of a row, not only the first
    assert labels and not any("[" in label for label in labels)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(shot, artifacts / "preview-radvlm.png")


def test_report_renders_in_headless_chromium_with_boxes_on_their_pixels(box_build, tmp_path):
    report = write_preview(box_build, tmp_path / "preview.html", samples=3, seed=0).path
    driver = _open_in_chromium(report)
    from selenium.webdriver.common.by import By

    try:
        cards = _rendered_turns(driver)
        assert [len(card["turns"]) for card in cards] == [len(_expected_turns(_row_of(box_build, c))) for c in cards]
        boxes = driver.find_elements(By.CSS_SELECTOR, ".frame .box")
        assert len(boxes) == 3 * 4
        for box in boxes:
            geometry = driver.execute_script(
                "const b = arguments[0], img = b.parentElement.querySelector('img');"
                "const r = b.getBoundingClientRect(), i = img.getBoundingClientRect();"
                "return [r.left - i.left, r.top - i.top, r.right - i.left, r.bottom - i.top, i.width, i.height];", box)
            left, top, right, bottom, width, height = geometry
            want = [float(box.get_attribute(f"data-{k}")) for k in ("x1", "y1", "x2", "y2")]
            assert (width, height) == (384, 307)
            assert left == pytest.approx(want[0] * width, abs=1.0)
            assert top == pytest.approx(want[1] * height, abs=1.0)
            assert right == pytest.approx(want[2] * width, abs=1.0)
            assert bottom == pytest.approx(want[3] * height, abs=1.0)
        first = driver.find_element(By.CSS_SELECTOR, ".sample")
        driver.execute_script("arguments[0].scrollIntoView()", first)
        shot = tmp_path / "preview.png"
        assert first.screenshot(str(shot))
        page_shot = tmp_path / "preview-page.png"
        driver.save_screenshot(str(page_shot))
    finally:
        driver.quit()
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(shot, artifacts / "preview.png")
    shutil.copyfile(page_shot, artifacts / "preview-page.png")
    assert shot.stat().st_size > 10_000


def test_chromium_binary_answers_when_present():
    """Says which browser the browser test used (or why it skipped) in the test log."""
    found = _chromium()
    if found is None:
        pytest.skip("chromium / chromedriver not installed (apt-get install -y chromium chromium-driver)")
    version = subprocess.run([found[1], "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    assert "ChromeDriver" in version


# --------------------------------------------------------------------------- interleaved samples and preference pairs


@pytest.fixture(scope="module")
def records_build(tmp_path_factory) -> Path:
    from records_fixture import write_records_build

    return write_records_build(tmp_path_factory.mktemp("records-preview"))


def _cards_by_id(page: str) -> dict[str, str]:
    """id -> the HTML of its sample card."""
    cards = re.split(r'(?=<div class="sample" )', page)[1:]
    return {re.search(r'<div class="where"><b>([^<]+)</b>', c)[1]: c for c in cards}


def test_interleaved_rows_show_every_image_in_order_with_provenance_and_numbered_placeholders(records_build):
    from records_fixture import INTERLEAVED_ROWS, interleaved

    page, _ = render_preview(records_build, config="interleaved", samples=INTERLEAVED_ROWS)
    cards = _cards_by_id(page)
    assert len(cards) == INTERLEAVED_ROWS
    for i in range(INTERLEAVED_ROWS):
        record = interleaved(i)
        card = cards[record.id]
        figures = re.findall(r'<figure class="img" data-image="(\d+)">.*?alt="([^"]*)"', card)
        assert figures == [(str(k + 1), image.path) for k, image in enumerate(record.images)]
        placeholders = sum(t.value.count("<image>") for t in record.conversations)
        assert re.findall(r'class="chip" data-image="(\d+)"', card) == [str(k + 1) for k in range(placeholders)]
        assert placeholders == len(record.images)
        # provenance: one note per image; a crop names its parent (or says it is not in the row)
        notes = re.findall(r'<div class="prov" data-image="(\d+)">(.*?)</div>', card)
        assert [n for n, _ in notes] == [str(k + 1) for k in range(len(record.images))]
        drawn = [b[k] for b in iter_sample_boxes(card) for k in ("x1", "y1", "x2", "y2")]
        expected = []
        for k, entry in enumerate(record.image_provenance):
            text = html.unescape(re.sub(r"<[^>]+>", "", notes[k][1]))
            assert entry.source_sha256[:12] in text and entry.source_path in text
            if entry.crop is None:
                assert "crop of" not in text
                continue
            assert entry.derivation in text and f"({entry.crop.left}, {entry.crop.top}, " in text
            if entry.parent is None:
                assert "crop of the source image (not in this row)" in text
                continue
            assert f"crop of image {entry.parent + 1}" in text
            from PIL import Image

            w, h = Image.open(io.BytesIO(record.images[entry.parent].bytes)).size
            expected += [entry.crop.left / w, entry.crop.top / h, entry.crop.right / w, entry.crop.bottom / h]
        assert drawn == pytest.approx(expected)  # crops drawn on the parent only when it is in the row


def test_preference_rows_show_prompt_then_chosen_and_rejected_side_by_side_with_scores(records_build):
    from records_fixture import PREFERENCE_ROWS, preference

    page, _ = render_preview(records_build, config="preference", samples=PREFERENCE_ROWS)
    cards = _cards_by_id(page)
    assert len(cards) == PREFERENCE_ROWS
    for i in range(PREFERENCE_ROWS):
        record = preference(i)
        card = cards[record.id]
        pair = card.index('<div class="pair">')
        assert all(card.index(html.escape(t.value, quote=True).replace("&lt;image&gt;", "")
                              .split("\n")[-1]) < pair for t in record.prompt)  # the prompt comes first
        sides = re.findall(r'<div class="side (\w+)" data-side="\w+"><div class="sidehead">\w+ · score <b>([^<]+)</b>'
                           r'</div>.*?<div class="said">(.*?)</div>', card)
        assert [(s, float(score), html.unescape(text)) for s, score, text in sides] == [
            ("chosen", round(record.chosen_score, 4), record.chosen.value),
            ("rejected", round(record.rejected_score, 4), record.rejected.value)]
        assert "scored by <code>radiologist</code>" in card
        assert len(re.findall(r'class="chip" data-image=', card)) == len(record.images) == 2
        assert "<th>chosen" not in card and "<th>chosen_score" not in card  # not repeated under fields


def test_records_preview_in_headless_chromium_counts_images_turns_and_pairs(records_build, tmp_path):
    from records_fixture import INTERLEAVED_ROWS, PREFERENCE_ROWS, RECORDS

    report = write_preview(records_build, tmp_path / "records.html", samples=8, seed=0).path
    driver = _open_in_chromium(report)
    try:
        cards = driver.execute_script(
            "return [...document.querySelectorAll('.sample')].map(s => ({config: s.dataset.config, "
            "shard: s.dataset.shard, row: s.dataset.row, "
            "figures: [...s.querySelectorAll('figure.img')].map(f => [f.dataset.image, f.querySelector('img').alt, "
            "f.querySelector('img').getBoundingClientRect().height]), "
            "chips: [...s.querySelectorAll('.chip')].map(c => getComputedStyle(c, '::after').content), "
            "turns: [...s.querySelectorAll('.turn')].map(t => [t.querySelector('.who').textContent, "
            "t.querySelector('.said').textContent, t.getBoundingClientRect().height]), "
            "sides: [...s.querySelectorAll('.pair .side')].map(d => {const r = d.getBoundingClientRect(); "
            "return [d.dataset.side, r.left, r.top, r.right, d.querySelector('.sidehead').textContent]}), "
            "boxes: [...s.querySelectorAll('.frame .box')].map(b => {const i = b.parentElement.querySelector('img')"
            ".getBoundingClientRect(), r = b.getBoundingClientRect(); return [r.left - i.left, r.top - i.top, "
            "r.right - i.left, r.bottom - i.top, i.width, i.height, +b.dataset.x1, +b.dataset.y1, +b.dataset.x2, "
            "+b.dataset.y2]})}))")
        shot = tmp_path / "records.png"
        driver.find_element("css selector", '.sample[data-config="preference"]').screenshot(str(shot))
    finally:
        driver.quit()
    assert sorted(c["config"] for c in cards) == ["interleaved"] * INTERLEAVED_ROWS + ["preference"] * PREFERENCE_ROWS
    for card in cards:
        row = _row_of(records_build, card)
        images = [image["path"] for image in row["images"]]
        assert [(int(n), alt) for n, alt, _ in card["figures"]] == list(enumerate(images, 1))
        assert all(height > 10 for _, _, height in card["figures"])
        assert card["chips"] == [f'" {k}"' for k in range(1, len(images) + 1)]  # what the reader sees after <image>
        turns = row["conversations"] if card["config"] == "interleaved" else [*row["prompt"], row["chosen"], row["rejected"]]
        assert [(who, said) for who, said, _ in card["turns"]] == [(t["from"], t["value"]) for t in turns]
        assert all(height > 10 for _, _, height in card["turns"])
        for left, top, right, bottom, width, height, x1, y1, x2, y2 in card["boxes"]:
            assert (left, top, right, bottom) == pytest.approx((x1 * width, y1 * height, x2 * width, y2 * height), abs=1.0)
        if card["config"] == "preference":
            (chosen, *c), (rejected, *r) = card["sides"]
            assert (chosen, rejected) == ("chosen", "rejected")
            assert c[1] == pytest.approx(r[1], abs=1.0) and r[0] >= c[2]  # side by side: same top, rejected right of chosen
            assert c[3].startswith("chosen · score ") and f"{row['chosen_score']:.4f}".rstrip("0") in c[3]
        else:
            parents = sum(p["parent"] is not None for p in row["image_provenance"])
            assert len(card["boxes"]) == parents
    assert set(RECORDS) == {"interleaved", "preference"}
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(shot, artifacts / "preview-preference.png")
