"""Record and corpus checks of a radimagenet-vqa build."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from radcorpora.corpora.radimagenet_vqa.records import (
    CONFIG_RECORDS,
    QUESTION_IDS,
    QUESTION_SLOTS,
    ROW_RULES,
    AlignmentRecord,
    BenchmarkRecord,
    InstructRecord,
    QuestionAnswer,
)
from radcorpora.ops.image_check import ImageCheck
from radcorpora.schemas.taxonomy import radimagenet_vqa_taxonomy
from radcorpora.spec.report import ValidationReport
from radcorpora.spec.rules import CorpusRules
from radcorpora.store.folder import config_shards, read_columns
from radcorpora.validators.structure import (
    OBJECT_CHECKS,
    ImageDecodeCheck,
    iter_records,
    validate_record,
)

EXPECTED_TYPES = Counter(slot[2] for slot in QUESTION_SLOTS)  # open 2, closed 5, multiple_choice 2
SLOT_OF = {slot[0]: slot for slot in QUESTION_SLOTS}
STRATIFICATION_TOLERANCE = 1.0  # images per stratum, vs the exact proportional share


RULES = {
    **ROW_RULES.names,  # the deep pass checks these per object too
    "split_disjoint": "no source image appears in two splits (across all configs)",
    "benchmark_nine_questions": "each benchmark image has the nine questions: 2 open, 5 closed, 2 multiple choice",
    "benchmark_stratified": f"benchmark keeps the test mix of region x pathology (within {STRATIFICATION_TOLERANCE:g} image per stratum)",
    "multiple_choice_options": "4 distinct options; answer among them; distractors from the right pool",
}


def check_question(qa: QuestionAnswer, where: str, report: ValidationReport) -> None:
    """Answers agree with the image labels; distractors and negatives obey the corpus rules."""
    tax = radimagenet_vqa_taxonomy()
    none = tax.no_pathology_answer
    meta = qa.metadata
    region = tax.find_region(meta.location)
    labels = report.check("answers_match_labels", RULES["answers_match_labels"])
    if not labels.expect(region is not None, f"{where}: unknown region {meta.location!r}"):
        return
    truth = meta.pathology if meta.is_abnormal else none
    _, task, qtype, polarity = SLOT_OF.get(meta.question_id, (None, None, None, None))
    if not labels.expect(task is not None and qtype == qa.question_type,
                         f"{where}: question_id {meta.question_id!r} / type {qa.question_type!r} mismatch"):
        return
    if meta.is_abnormal:
        labels.expect(tax.find_pathology(region, meta.pathology) is not None,
                      f"{where}: {meta.pathology!r} is not a {region.name} pathology")
    expected_answer = {
        ("anatomy", "open"): region.name,
        ("pathology", "open"): truth,
        ("abnormality", "closed"): "yes" if meta.is_abnormal else "no",
    }.get((task, qtype))
    if expected_answer is not None:
        labels.expect(qa.answer == expected_answer, f"{where}: answer {qa.answer!r}, labels say {expected_answer!r}")
    if qtype == "closed" and task != "abnormality":
        negatives = report.check("closed_polarity", RULES["closed_polarity"])
        own = region.name if task == "anatomy" else truth
        if polarity == "positive":
            negatives.expect(qa.subject == own and qa.answer == "yes", f"{where}: closed+ asks {qa.subject!r} (truth {own!r}), answer {qa.answer!r}")
        else:
            absent = qa.subject is not None and qa.subject != own
            if task == "anatomy":
                absent = absent and tax.find_region(qa.subject) is not None
            else:
                absent = absent and (qa.subject == none or tax.find_pathology(region, qa.subject) is not None)
            negatives.expect(absent and qa.answer == "no", f"{where}: closed- asks {qa.subject!r} on an image labelled {own!r}")
    if qtype == "multiple_choice":
        mc = report.check("multiple_choice_options", RULES["multiple_choice_options"])
        choices = qa.choices or []
        if task == "anatomy":
            mc.expect(meta.correct_text == region.name and all(tax.find_region(c) for c in choices),
                      f"{where}: anatomy options {choices} must all be regions, correct {region.name!r}")
        else:
            mc.expect(meta.correct_text == truth, f"{where}: correct_text {meta.correct_text!r} != {truth!r}")
            mc.expect(none in choices, f"{where}: pathology options lack {none!r}: {choices}")
            mc.expect(all(c == none or tax.find_pathology(region, c) for c in choices),
                      f"{where}: pathology distractors outside {region.name}: {choices}")


def validate_radimagenet_vqa(build: Path, report: ValidationReport, manifest: dict, image_check: ImageCheck = "full",
                             deep: bool = False) -> ValidationReport:
    """Corpus rules. The row rules already ran column-wise (build workers or `validate`); the
    default reads only the small label columns; `deep` re-parses every record as an object and
    runs each rule per question."""
    if not deep:
        return _corpus_rules(build, report, manifest)
    decode = ImageDecodeCheck(report, image_check)
    split_of_source: dict[str, str] = {}
    splits_of_content: dict[str, set[str]] = defaultdict(set)
    leak = report.check("split_disjoint", RULES["split_disjoint"])
    bench_questions: dict[str, Counter] = defaultdict(Counter)
    bench_strata: Counter = Counter()
    structure = report.check("conversation_structure", RULES["conversation_structure"])

    for _config, split, where, record in iter_records(build, CONFIG_RECORDS, report):
        source = record.lineage.source_id
        previous = split_of_source.setdefault(source, split)
        leak.expect(previous == split, f"{where}: {source} is in both {previous} and {split}")
        digest = decode(record.image.bytes, record.lineage.image_sha256, where)
        splits_of_content[digest].add(split)
        if isinstance(record, AlignmentRecord):
            turns = record.conversations
            structure.expect(len(turns) == 2 and turns[0].from_ == "human" and turns[0].value.startswith("<image>"),
                             f"{where}: caption conversation malformed")
        elif isinstance(record, InstructRecord):
            qids = [q.metadata.question_id for q in record.questions]
            structure.expect(sorted(qids) == sorted(QUESTION_IDS), f"{where}: questions {qids} are not the nine slots")
            structure.expect(record.conversations[0].value.startswith("<image>"), f"{where}: first turn lacks <image>")
            answers = [t.value for t in record.conversations[1::2]]
            structure.expect(answers == [q.answer for q in record.questions], f"{where}: gpt turns differ from answers")
            for qa in record.questions:
                check_question(qa, f"{where} {qa.metadata.question_id}", report)
        elif isinstance(record, BenchmarkRecord):
            qa = validate_record(QuestionAnswer, record.model_dump(include=set(QuestionAnswer.model_fields)),
                                 where, report, "record_objects")
            if qa is not None:
                check_question(qa, where, report)
            bench_questions[source][record.metadata.question_id] += 1
            if record.metadata.question_id == QUESTION_IDS[0]:
                bench_strata[f"{record.metadata.location}|{record.metadata.pathology}"] += 1

    nine = report.check("benchmark_nine_questions", RULES["benchmark_nine_questions"])
    for source, per_id in sorted(bench_questions.items()):
        nine.expect(dict(per_id) == dict.fromkeys(QUESTION_IDS, 1), f"{source}: questions {dict(per_id)}")
    _check_stratification(manifest, bench_strata, report)
    shared = sum(1 for splits in splits_of_content.values() if len(splits) > 1)
    if shared:
        report.warnings.append(f"{shared} image(s) have byte-identical copies in different splits of the source")
    report.stats.update({"distinct_images": len(decode.seen), "benchmark_images": sum(bench_strata.values())})
    return report


def _check_stratification(manifest: dict, strata: Counter, report: ValidationReport) -> None:
    bench = manifest.get("benchmark") or {}
    population: dict[str, int] = bench.get("population") or {}
    check = report.check("benchmark_stratified", RULES["benchmark_stratified"])
    total = sum(strata.values())
    pop_total = sum(population.values())
    if not population or not total:
        return
    for stratum in sorted(set(population) | set(strata)):
        expected = population.get(stratum, 0) * total / pop_total
        got = strata.get(stratum, 0)
        check.expect(abs(got - expected) <= STRATIFICATION_TOLERANCE,
                     f"{stratum}: {got} benchmark images, proportional share {expected:.2f}")
    normal_pop = sum(c for s, c in population.items() if s.endswith("|normal")) / pop_total
    normal_got = sum(c for s, c in strata.items() if s.endswith("|normal")) / total
    report.stats.update({"benchmark_normal_share": round(normal_got, 4), "test_normal_share": round(normal_pop, 4)})


def _corpus_rules(build: Path, report: ValidationReport, manifest: dict) -> ValidationReport:
    """Benchmark completeness and stratification, split disjointness: from projected columns
    (`lineage.source_id`, the benchmark's question ids and labels), never the images, counted
    column-wise (Arrow group-by; Python objects only for an image that breaks a rule)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    leak = report.check("split_disjoint", RULES["split_disjoint"])
    sources_of_split: dict[str, set[str]] = defaultdict(set)
    bench: list[pa.Table] = []
    for config in CONFIG_RECORDS:
        for split, paths in config_shards(build, config).items():
            for path in paths:
                columns = ["lineage.source_id"] + (BENCHMARK_LABELS if config == "benchmark" else [])
                try:
                    table = read_columns(path, columns)
                except Exception:  # unreadable shards are reported by the structure checks
                    continue
                sources = table.column(0).combine_chunks()  # the selected leaf `lineage.source_id`
                sources_of_split[split].update(pc.unique(sources).to_pylist())
                if config == "benchmark":
                    bench.append(table)
    splits = sorted(sources_of_split)
    for i, first in enumerate(splits):
        leak.checked += len(sources_of_split[first])
        for second in splits[i + 1:]:
            for source in sorted(sources_of_split[first] & sources_of_split[second])[:5]:
                leak.fail(f"{source} is in both {first} and {second}")
    rows = pa.concat_tables(bench) if bench else None
    nine = report.check("benchmark_nine_questions", RULES["benchmark_nine_questions"])
    bench_strata: Counter = Counter()
    if rows is not None and rows.num_rows:
        slot = _nine_questions(rows, nine)
        first = rows.filter(pa.array(slot == 0))
        for location, pathology in zip(first.column("location").to_pylist(), first.column("pathology").to_pylist()):
            bench_strata[f"{location}|{pathology}"] += 1
    _check_stratification(manifest, bench_strata, report)
    report.stats.update({"benchmark_images": sum(bench_strata.values())})
    return report


BENCHMARK_LABELS = ["metadata.question_id", "metadata.location", "metadata.pathology"]


def _nine_questions(rows, nine):
    """`benchmark_nine_questions` over the benchmark's (source_id, question_id) rows: an image
    passes when its rows hold each of QUESTION_IDS once and nothing else. Counted with numpy on
    the columns (Arrow's group-by would import pyarrow.dataset); each image counts as checked, and
    an image that fails is reported (sorted by source, its ids counted in row order) as a
    row-by-row count would report it. Returns each row's slot in QUESTION_IDS (-1: none)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    sources, qids = rows.column("source_id"), rows.column("question_id")
    encoded = pc.dictionary_encode(sources.combine_chunks())  # a missing source id: one more image
    source_code = pc.fill_null(encoded.indices, len(encoded.dictionary)).to_numpy()
    slot = pc.fill_null(pc.index_in(qids, value_set=pa.array(QUESTION_IDS, pa.string())), -1).to_numpy()
    images = int(source_code.max()) + 1
    seen = np.zeros(images, np.int64)  # a bit per slot seen
    np.bitwise_or.at(seen, source_code, np.left_shift(1, np.maximum(slot, 0)))
    per_image = np.bincount(source_code, minlength=images)
    odd = np.bincount(source_code, weights=slot < 0, minlength=images) > 0
    whole = (per_image == len(QUESTION_IDS)) & (seen == (1 << len(QUESTION_IDS)) - 1) & ~odd
    nine.checked += int(whole.sum())
    if not whole.all():
        broken = set(np.flatnonzero(~whole).tolist())
        per_id: dict[str, Counter] = defaultdict(Counter)
        for code, source, qid in zip(source_code.tolist(), sources.to_pylist(), qids.to_pylist()):
            if code in broken:
                per_id[source][qid] += 1
        for source, counts in sorted(per_id.items()):
            nine.expect(dict(counts) == dict.fromkeys(QUESTION_IDS, 1), f"{source}: questions {dict(counts)}")
    return slot


CORPUS_RULES = CorpusRules({name: RULES[name] for name in ("split_disjoint", "benchmark_nine_questions",
                                                             "benchmark_stratified")},
                           validate_radimagenet_vqa,
                           deep_names={"multiple_choice_options": RULES["multiple_choice_options"],
                                       "record_objects": OBJECT_CHECKS["record_objects"]})
