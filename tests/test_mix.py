"""Issue 24: `radcorpora mix` on the demo builds. Expected values are computed here from the input
shards (examples per row, assistant-turn tokens, the rows `radcorpora leakage` names), not taken
from the mix's own manifest."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from radcorpora.cli import app

runner = CliRunner()
RADVLM, COT, RVQA = "radvlm:report_generation", "rad-ace-cot", "radimagenet-vqa:instruct"


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def rows_of(build: Path, config: str, split: str, columns=None) -> list[dict]:
    rows: list[dict] = []
    for shard in sorted((build / "data" / config).glob(f"{split}-*.parquet")):
        rows += pq.read_table(shard, columns=columns).to_pylist()
    return rows


def examples_per_row(build: Path, config: str, split: str) -> dict[str, int]:
    """Source row id -> the examples it gives, from the shards: one per radvlm instance, one per
    radimagenet-vqa question, one per rad-ace-cot row."""
    if "radvlm" in build.name:
        return {r["id"]: len(r["instances"]) for r in rows_of(build, config, split, ["id", "instances"])}
    if config == "instruct":
        return {r["id"]: len(r["questions"]) for r in rows_of(build, config, split, ["id", "questions"])}
    return {r["id"]: 1 for r in rows_of(build, config, split, ["id"])}


def mix_rows(out: Path, split: str) -> list[dict]:
    return rows_of(out, "default", split, ["id", "corpus", "config", "source_row", "conversations", "lineage"])


def manifest(out: Path) -> dict:
    return json.loads((out / "build" / "manifest.json").read_text())


def train_only(src: Path, dst: Path) -> Path:
    """A copy of a build keeping only its training shards (no evaluation split: nothing can leak)."""
    shutil.copytree(src, dst)
    for path in list((dst / "data").rglob("*.parquet")):
        if not path.name.startswith("train-"):
            path.unlink()
    for folder in (dst / "data").iterdir():
        if not any(folder.iterdir()):
            folder.rmdir()
    meta = manifest(dst)
    meta["shards"] = {k: v for k, v in meta["shards"].items() if k.rsplit("/", 1)[-1].startswith("train-")}
    meta["splits"] = {c: {"train": s["train"]} for c, s in meta["splits"].items() if "train" in s}
    (dst / "build" / "manifest.json").write_text(json.dumps(meta))
    (dst / "build" / "identity.parquet").unlink(missing_ok=True)
    return dst


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from test_leakage import build_demo

    return build_demo(tmp_path_factory.mktemp("mixdemo"))


@pytest.fixture(scope="module")
def allowed(demo) -> Path:
    """radvlm (instances), rad-ace-cot (rows) and radimagenet-vqa (questions), every row, leakage kept."""
    out = demo / "mix-all"
    result = cli("mix", demo / "radvlm:report_generation", demo / "rad-ace-cot", demo / "radimagenet-vqa:instruct",
                 "--out", out, "--allow-leakage")
    assert result.exit_code == 0, result.output
    return out


def test_mix_holds_every_example_with_its_corpus_and_loads(demo, allowed):
    import datasets

    for split in ("train", "validation", "test"):
        got = Counter((r["corpus"], r["config"], r["source_row"]) for r in mix_rows(allowed, split))
        want = Counter()
        for build, config in (("radvlm", "report_generation"), ("rad-ace-cot", "default"),
                              ("radimagenet-vqa", "instruct")):
            for row, n in examples_per_row(demo / build, config, split).items():
                want[(build, config, row)] = n
        assert got == want, split
        loaded = datasets.load_dataset(str(allowed), name="default", split=split)
        assert len(loaded) == sum(want.values())
    row = datasets.load_dataset(str(allowed), name="default", split="train")[0]
    assert row["images"][0].size and row["conversations"][0]["from"] == "human"
    # every example's images are the bytes its source row stores (never re-encoded)
    ids = {r["id"] for r in rows_of(demo / "rad-ace-cot", "default", "train", ["id"])}
    stored = {r["id"]: [hashlib.sha256(i["bytes"]).hexdigest() for i in r["images"]]
              for r in rows_of(demo / "rad-ace-cot", "default", "train", ["id", "images"])}
    for r in mix_rows(allowed, "train"):
        if r["corpus"] == "rad-ace-cot":
            assert r["source_row"] in ids and r["lineage"]["image_sha256"].split(",") == stored[r["source_row"]]


def test_images_stored_once_per_source_row(allowed):
    """radimagenet-vqa gives nine examples per image: the shards hold far fewer image bytes than
    the examples name."""
    named = distinct = 0
    for shard in (allowed / "data" / "default").glob("*.parquet"):
        seen = {}
        for images in pq.read_table(shard, columns=["images"]).column("images").to_pylist():
            for image in images:
                named += len(image["bytes"])
                seen[hashlib.sha256(image["bytes"]).hexdigest()] = len(image["bytes"])
        distinct += sum(seen.values())
    on_disk = sum(p.stat().st_size for p in (allowed / "data" / "default").glob("*.parquet"))
    assert named > 4 * distinct and on_disk < 1.5 * distinct


def test_card_licence_citations_and_leakage_allowed(demo, allowed):
    from radcorpora.publish.push import PublishError, plan_push

    meta = manifest(allowed)
    assert meta["corpus"] == "mix" and meta["licence_class"] == "credentialed"  # radvlm's, the strictest
    card = (allowed / "README.md").read_text()
    for build in ("radvlm", "rad-ace-cot", "radimagenet-vqa"):
        source = (demo / build / "README.md").read_text()
        for citation in re.findall(r"```bibtex\n(.*?)```", source.split("## Citation", 1)[1], flags=re.DOTALL):
            assert citation.strip() in card
    assert "Leakage allowed (`--allow-leakage`)" in card and meta["mix"]["allow_leakage"] is True
    assert meta["mix"]["leakage"]["cases"] > 0
    with pytest.raises(PublishError, match="credentialed"):
        plan_push(allowed, "org/mix", private=False)
    assert plan_push(allowed, "org/mix", private=True).private
    assert cli("validate", allowed).exit_code == 0
    assert cli("preview", allowed).exit_code == 0
    exported = cli("export", allowed, "--format", "llava", "--out", allowed.parent / "mix-llava")
    assert exported.exit_code == 0, exported.output


def test_weights_by_rows_and_by_tokens(demo, tmp_path):
    cot = train_only(demo / "rad-ace-cot", tmp_path / "cot")
    rvqa = train_only(demo / "radimagenet-vqa", tmp_path / "rvqa")
    result = cli("mix", f"{cot}=1", f"{rvqa}:instruct=3", "--out", tmp_path / "rows")
    assert result.exit_code == 0, result.output
    counts = Counter(r["corpus"] for r in mix_rows(tmp_path / "rows", "train"))
    available = len(rows_of(cot, "default", "train", ["id"]))
    assert counts["rad-ace-cot"] == available  # the input that runs out first gives all its rows
    assert abs(counts["radimagenet-vqa"] - 3 * available) <= 9  # within one source row (nine questions)
    again = cli("mix", f"{cot}=1", f"{rvqa}:instruct=3", "--out", tmp_path / "rows-again")
    assert again.exit_code == 0
    assert manifest(tmp_path / "rows")["shards"] == manifest(tmp_path / "rows-again")["shards"]  # same bytes
    other = cli("mix", f"{cot}=1", f"{rvqa}:instruct=3", "--out", tmp_path / "seed1", "--seed", 1)
    assert other.exit_code == 0
    assert {r["id"] for r in mix_rows(tmp_path / "rows", "train")} != \
        {r["id"] for r in mix_rows(tmp_path / "seed1", "train")}

    result = cli("mix", f"{cot}=1", f"{rvqa}:instruct=1", "--out", tmp_path / "tokens", "--by", "tokens")
    assert result.exit_code == 0, result.output
    tokens = Counter()
    for r in mix_rows(tmp_path / "tokens", "train"):
        tokens[r["corpus"]] += sum(len(re.findall(r"\w+|[^\w\s]", t["value"])) for t in r["conversations"]
                                   if t["from"] == "gpt")
    def gpt_tokens(row):
        return sum(len(re.findall(r"\w+|[^\w\s]", t["value"])) for t in row["conversations"] if t["from"] == "gpt")

    per_row = {"rad-ace-cot": [gpt_tokens(r) for r in rows_of(cot, "default", "train", ["conversations"])],
               "radimagenet-vqa": [gpt_tokens(r) for r in rows_of(rvqa, "instruct", "train", ["conversations"])]}
    binding = min(per_row, key=lambda name: sum(per_row[name]))
    other = next(name for name in per_row if name != binding)
    assert tokens[binding] == sum(per_row[binding])  # equal weights: the smaller input gives all its tokens
    assert abs(tokens[other] - tokens[binding]) <= max(per_row[other])  # the other as many, within one row
    # no leakage between builds holding no evaluation split: written without a flag
    assert "no patient, study or image" in (tmp_path / "tokens" / "README.md").read_text()


def test_drop_train_leaves_out_exactly_the_rows_leakage_names(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "dropped"
    result = cli("mix", demo / "radvlm:report_generation", demo / "radimagenet-vqa:instruct", "--out", out,
                 "--resolve", "drop-train")
    assert result.exit_code == 0, result.output
    assert cli("leakage", demo / "radvlm", demo / "radimagenet-vqa", "--report", "l.jsonl").exit_code == 1
    cases = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    dropped: dict[tuple[str, str], set[int]] = {}
    for c in cases:
        train = c["train"]
        if (Path(train["build"]).name, train["config"]) in {("radvlm", "report_generation"),
                                                             ("radimagenet-vqa", "instruct")}:
            dropped.setdefault((Path(train["build"]).name, train["config"]), set()).update(train["ids"])
    assert dropped
    kept = Counter((r["corpus"], r["source_row"]) for r in mix_rows(out, "train"))
    expected_drop = 0
    for build, config in (("radvlm", "report_generation"), ("radimagenet-vqa", "instruct")):
        for row, n in examples_per_row(demo / build, config, "train").items():
            gone = row in dropped.get((build, config), set())
            assert kept[(build, row)] == (0 if gone else n), (build, row)
            expected_drop += n if gone else 0
    meta = manifest(out)["mix"]
    assert meta["dropped_train_rows"] == expected_drop > 0 and meta["resolve"] == "drop-train"
    assert f"left out the {expected_drop} colliding training examples" in (out / "README.md").read_text()
    # the mix's training rows now meet no evaluation row of its inputs
    check = cli("leakage", out, demo / "radvlm", demo / "radimagenet-vqa", "--report", "after.jsonl")
    after = [json.loads(line) for line in (tmp_path / "after.jsonl").read_text().splitlines()]
    assert check.exit_code in (0, 1) and not [c for c in after if c["train"]["build"] == str(out)]


def test_a_changed_input_is_never_answered_with_the_old_mix(demo, tmp_path):
    cot = train_only(demo / "rad-ace-cot", tmp_path / "cot")
    out = tmp_path / "mix"
    assert cli("mix", cot, "--out", out).exit_code == 0
    first = len(mix_rows(out, "train"))
    again = cli("mix", cot, "--out", out)
    assert again.exit_code == 0 and "already complete" in again.output
    shard = next((cot / "data" / "default").glob("train-*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, table.num_rows - 2), shard)  # rebuilt in place, manifest left as it was
    changed = cli("mix", cot, "--out", out)
    assert changed.exit_code == 0, changed.output
    assert len(mix_rows(out, "train")) == first - 2 and "already complete" not in changed.output


def test_mix_trains_through_radcorpora_train(demo, allowed, tmp_path):
    cot = train_only(demo / "rad-ace-cot", tmp_path / "cot")
    radvlm = train_only(demo / "radvlm", tmp_path / "radvlm")
    out = tmp_path / "mix"
    assert cli("mix", f"{radvlm}:report_generation", cot, "--out", out).exit_code == 0
    result = cli("train", out, "--model", "tiny", "--max-steps", 2, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "trained: 2 steps" in result.output
    # a mix has no benchmark: evaluating on it is one line and exit 2 (a MixError traceback before)
    asked = cli("evaluate", allowed, "--adapter", tmp_path / "run", "--limit", 1)
    assert asked.exit_code == 2 and asked.output.startswith("error: a mix has no benchmark of its own")


def test_every_refusal_is_one_line_exit_2(demo, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    cases = [
        ([demo / "radvlm:report_generation", demo / "rad-ace-cot"], "leakage: "),
        ([demo / "rad-ace-cot=0"], "weight must be a number > 0"),
        ([demo / "rad-ace-cot=heavy"], "is not a number"),
        ([f"{demo / 'rad-ace-cot'}=1", demo / "radimagenet-vqa:instruct"], "give every input a weight, or none"),
        ([demo / "rad-ace-cot:nope"], "has no config 'nope'"),
        ([demo / "radimagenet-vqa:benchmark"], "is not mixable: its loss intent is 'none'"),
        ([demo / "rad-ace-cot", demo / "rad-ace-cot:default"], "is given twice"),
        ([tmp_path / "missing"], "no such build folder"),
        ([demo / "rad-ace-cot", "--by", "words"], "--by must be rows or tokens"),
        ([demo / "rad-ace-cot", "--resolve", "drop-eval"], "--resolve must be drop-train"),
        ([demo / "rad-ace-cot", "--resolve", "drop-train", "--allow-leakage"], "exclude each other"),
    ]
    for args, message in cases:
        out = tmp_path / "never"
        result = cli("mix", *args, *(() if "--out" in args else ("--out", out)))
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert result.output.startswith("error: ") and result.output.strip().count("\n") == 0, result.output
        assert not out.exists(), args
    for out, message in ((demo / "rad-ace-cot" / "mix", "overlaps the input build"),
                         (demo / "radvlm", "holds a radvlm build"),
                         (tmp_path / "full", "is not empty and holds no mix")):
        result = cli("mix", demo / "rad-ace-cot", "--allow-leakage", "--out", out)
        assert result.exit_code == 2 and message in result.output, result.output
        assert result.output.strip().count("\n") == 0


def test_shapes_a_mix_takes():
    import pyarrow as pa

    from radcorpora.mix.plan import parse_input, shape_problem

    turns = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    lineage = pa.struct([("source_id", pa.string())])
    ok = pa.schema([("id", pa.string()), ("images", pa.list_(image)), ("conversations", turns), ("lineage", lineage)])
    assert shape_problem(ok, "row") is None
    volume = pa.schema([("id", pa.string()), ("volume", pa.string()), ("conversations", turns), ("lineage", lineage)])
    assert "no `image` or `images`" in shape_problem(volume, "row")  # ct-reasoning's volume references
    trace = pa.schema([("id", pa.string()), ("images", pa.list_(image)), ("prompt", pa.string())])
    assert "no LLaVA `conversations`" in shape_problem(trace, "row")  # mmrad-ivl's prompt/response traces...
    assert "no `lineage`" in shape_problem(trace, "render")  # ...which its corpus renders, given a lineage
    assert shape_problem(trace.append(pa.field("lineage", lineage)), "render") is None
    assert parse_input("a/b:instruct=2.5") == (Path("a/b"), "instruct", 2.5)
    assert parse_input("a/b") == (Path("a/b"), None, None)
    assert parse_input("c:/x/b=1") == (Path("c:/x/b"), None, 1.0)


def test_rows_stored_in_their_own_shape_mix_as_their_conversations(demo, tmp_path):
    """mmrad-ivl's trace rows join a mix as their corpus' crops conversation (ConfigSpec.conversation):
    the full image with the instruction, then a human turn per crop and a gpt turn per piece of the
    response; every image the row's own, in order; every gpt turn trains (the rendering's intent).
    A mix of conversation rows only keeps the fingerprint it had (no rendering fields in it)."""
    out = tmp_path / "with-traces"
    result = cli("mix", demo / "mmrad-ivl", demo / "rad-ace-cot", "--out", out, "--allow-leakage")
    assert result.exit_code == 0, result.output
    inputs = {e["corpus"]: e for e in manifest(out)["mix"]["inputs"]}
    assert inputs["mmrad-ivl"]["expand"] == "render" and inputs["mmrad-ivl"]["loss"] == "all_assistant"
    source = {r["id"]: r for r in rows_of(demo / "mmrad-ivl", "default", "train")}
    mixed = [r for r in rows_of(out, "default", "train") if r["corpus"] == "mmrad-ivl"]
    assert len(mixed) == len(source) > 0
    for row in mixed:
        original = source[row["source_row"]]
        said = [t["value"] for t in row["conversations"]]
        assert [t["from"] for t in row["conversations"]] == ["human", "gpt"] * len(original["images"])
        assert [hashlib.sha256(i["bytes"]).hexdigest() for i in row["images"]] == \
            [hashlib.sha256(i["bytes"]).hexdigest() for i in original["images"]]
        assert said[0] == original["prompt"] and all(s == "<image>" for s in said[2::2])
        assert " ".join(" <image> ".join(said[1::2]).split()) == " ".join(original["response"].split())
    config = manifest(out)["fingerprint"]["config"]["inputs"]
    assert {i["corpus"]: ("render" in i) for i in config} == {"mmrad-ivl": True, "rad-ace-cot": False}
