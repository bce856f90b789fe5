"""Properties of the nine generated questions, checked over every image of a scan."""

from collections import Counter

import pytest

from radcorpora.corpora.radimagenet_vqa import build as rvqa
from radcorpora.corpora.radimagenet_vqa.records import LETTERS, QUESTION_IDS
from radcorpora.schemas.taxonomy import radimagenet_vqa_taxonomy
from radcorpora.sources.radimagenet import RadImageNetImage, scan_radimagenet

TAX = radimagenet_vqa_taxonomy()
NONE = TAX.no_pathology_answer


@pytest.fixture(scope="module")
def ctx_and_images(demo_source):
    scan = scan_radimagenet(demo_source)
    config = rvqa.RadImageNetVQAConfig(seed=3)
    images = [i for imgs in scan.images.values() for i in imgs]
    ctx = rvqa.Context(config, rvqa.load_templates(config), TAX,
                       dict(Counter(i.region for i in images)), {})
    return ctx, images


def test_nine_questions_with_published_type_mix(ctx_and_images):
    ctx, images = ctx_and_images
    for image in images:
        qs = rvqa.make_questions(image, ctx)
        assert [q.metadata.question_id for q in qs] == list(QUESTION_IDS)
        assert Counter(q.question_type for q in qs) == {"closed": 5, "open": 2, "multiple_choice": 2}


def test_answers_distractors_and_negatives(ctx_and_images):
    ctx, images = ctx_and_images
    for image in images:
        region = TAX.region(image.region)
        truth = image.pathology if image.is_abnormal else NONE
        q = {x.metadata.question_id: x for x in rvqa.make_questions(image, ctx)}
        assert q["anatomy_open"].answer == region.name
        assert q["pathology_open"].answer == truth
        assert q["abnormality_closed"].answer == ("yes" if image.is_abnormal else "no")
        assert q["anatomy_closed_positive"].answer == "yes" and q["anatomy_closed_positive"].subject == region.name
        neg = q["anatomy_closed_negative"]
        assert neg.answer == "no" and neg.subject in TAX.region_names and neg.subject != region.name
        pneg = q["pathology_closed_negative"]
        assert pneg.answer == "no" and pneg.subject != truth
        assert pneg.subject in region.pathologies or (pneg.subject == NONE and image.is_abnormal)
        amc, pmc = q["anatomy_multiple_choice"], q["pathology_multiple_choice"]
        assert len(set(amc.choices)) == 4 and set(amc.choices) <= set(TAX.region_names)
        assert amc.choices[LETTERS.index(amc.answer)] == region.name
        assert len(set(pmc.choices)) == 4 and NONE in pmc.choices
        assert pmc.choices[LETTERS.index(pmc.answer)] == truth
        assert all(c == NONE or c in region.pathologies for c in pmc.choices)


def test_questions_depend_on_row_only(ctx_and_images):
    ctx, images = ctx_and_images
    first = [rvqa.make_questions(i, ctx) for i in images]
    again = [rvqa.make_questions(i, ctx) for i in reversed(images)][::-1]
    assert first == again
    other = rvqa.Context(rvqa.RadImageNetVQAConfig(seed=4), ctx.templates, TAX, ctx.region_weights, {})
    assert [rvqa.make_questions(i, other) for i in images] != first


def test_letters_and_wordings_are_spread(ctx_and_images):
    ctx, images = ctx_and_images
    letters = Counter(q.answer for i in images for q in rvqa.make_questions(i, ctx) if q.question_type == "multiple_choice")
    assert set(letters) == set(LETTERS) and min(letters.values()) > 0.15 * sum(letters.values())
    wordings = {q.question for i in images for q in rvqa.make_questions(i, ctx) if q.metadata.question_id == "anatomy_open"}
    assert 2 <= len(wordings) <= 7


def test_normal_probe_wording_is_not_a_shortcut(ctx_and_images):
    """The "free of pathology?" wording must be asked with both answers."""
    ctx, images = ctx_and_images
    probe = set(ctx.templates.variants("pathology_closed_positive_normal"))
    answers = Counter()
    for image in images:
        for q in rvqa.make_questions(image, ctx):
            if any(q.question.lower() == p.format(region=TAX.region(image.region).phrase).lower() for p in probe):
                answers[q.answer] += 1
    assert answers["yes"] > 0 and answers["no"] > 0


def test_instruct_turns_render_options_and_image_token(ctx_and_images):
    ctx, images = ctx_and_images
    image: RadImageNetImage = images[0]
    qs = rvqa.make_questions(image, ctx)
    turns = rvqa.make_instruct_turns(image, qs, ctx)
    assert turns[0].value.startswith("<image>\n") and sum("<image>" in t.value for t in turns) == 1
    mc_turn = turns[2 * QUESTION_IDS.index("pathology_multiple_choice")]
    assert all(f"{letter}. " in mc_turn.value for letter in LETTERS)
    caption = rvqa.make_caption(image, ctx)
    assert caption[0].value.startswith("<image>") and caption[1].value[0].isupper()
