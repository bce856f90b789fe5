"""Conversation reply parsing and checks: the documented JSON forms, each reason code, grounded
rules (location question, only the given boxes, compared as published text numbers)."""

from __future__ import annotations

import json

import pytest

from radcorpora.ops.boxes import box_text, boxes_text
from radcorpora.ops.conversation_checks import (
    REASONS,
    ConversationError,
    ConversationTurn,
    conversation_problems,
    parse_conversation,
    prior_or_phi_problems,
    problem_codes,
)
from radcorpora.schemas.boxes import Box

QA = [
    ("What type of image is this?", "This looks like a frontal chest X-ray taken from the front (PA view)."),
    ("Does the heart look normal in size?", "The heart appears mildly enlarged on this image."),
    ("Are the lungs clear?", "There seems to be a hazy area at the left lung base, perhaps fluid."),
    ("Is there fluid around the lungs?", "A small left pleural effusion is possible; a doctor should confirm it."),
    ("Is there any collapsed lung?", "I do not see signs of a pneumothorax on this image."),
    ("Are there any tubes or lines?", "A central venous catheter appears to project over the upper chest."),
    ("Are the bones normal?", "Degenerative changes of the spine may be present; no fracture is evident."),
    ("What does an enlarged heart mean?", "It has several possible causes; a physician can explain them."),
    ("Is the image quality good?", "The image seems adequate for a general reading, with good inspiration."),
    ("Should I be worried?", "I cannot give a diagnosis; please discuss these observations with your doctor."),
    ("Is this a man or a woman?", "The information available indicates a female patient."),
]


def conv(rounds: int, **replace: str) -> list[dict[str, str]]:
    """`rounds` rounds from QA; `replace={"g2": text}` sets the 2nd gpt turn, `h1` the 1st human turn."""
    out = []
    for i, (q, a) in enumerate(QA[:rounds], 1):
        out.append({"from": "human", "value": replace.get(f"h{i}", q)})
        out.append({"from": "gpt", "value": replace.get(f"g{i}", a)})
    return out


def turns(rounds: int, **replace: str) -> list[ConversationTurn]:
    return parse_conversation(json.dumps(conv(rounds, **replace)))


def codes(problems: list[str]) -> list[str]:
    return problem_codes(problems)


# ------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("rounds", [5, 10])
def test_valid_conversations_pass(rounds):
    parsed = parse_conversation(json.dumps(conv(rounds)))
    assert len(parsed) == 2 * rounds
    assert parsed[0] == ConversationTurn(from_="human", value=QA[0][0])
    assert parsed[1].as_record() == {"from": "gpt", "value": QA[0][1]}
    assert parsed[0].model_dump(by_alias=True) == {"from": "human", "value": QA[0][0]}
    assert conversation_problems(parsed) == []


@pytest.mark.parametrize("wrap", [
    lambda s: "```json\n" + s + "\n```",
    lambda s: "  ```\n" + s + "\n```\n",
    lambda s: "```JSON\r\n" + s + "\r\n```",
    lambda s: json.dumps({"conversation": json.loads(s)}),
    lambda s: json.dumps({"dialogue": json.loads(s)}),
    lambda s: json.dumps({"turns": json.loads(s), "note": "five rounds"}),
    lambda s: "```json\n" + json.dumps({"conversations": json.loads(s)}, indent=2) + "\n```",
])
def test_fenced_and_wrapped_json_parse(wrap):
    reply = wrap(json.dumps(conv(5)))
    parsed = parse_conversation(reply)
    assert [t.as_record() for t in parsed] == conv(5)


@pytest.mark.parametrize(("reply", "reason"), [
    ("Sure! Here is the conversation:\n" + json.dumps(conv(5)), "not_json"),
    (json.dumps(conv(5)) + "\nI hope this helps.", "not_json"),
    ("Here it is:\n```json\n" + json.dumps(conv(5)) + "\n```", "not_json"),
    ("", "not_json"),
    ("[{'from': 'human', 'value': 'hi'}]", "not_json"),
    ('{"from": "human", "value": "What is this?"}', "not_a_list"),
    ('{"a": [], "b": []}', "not_a_list"),
    ('{"conversation": "none"}', "not_a_list"),
    ('"just a string"', "not_a_list"),
    ("42", "not_a_list"),
    ('[{"from": "user", "value": "What is this?"}]', "bad_turn"),
    ('[{"from": "human"}]', "bad_turn"),
    ('[{"from": "human", "value": 3}]', "bad_turn"),
    ('["What is this?", "A chest X-ray."]', "bad_turn"),
    ('[{"role": "human", "content": "What is this?"}]', "bad_turn"),
])
def test_unparseable_replies_give_a_reason(reply, reason):
    with pytest.raises(ConversationError) as info:
        parse_conversation(reply)
    assert info.value.reason == reason
    assert str(info.value).startswith(reason + ": ")


def test_extra_keys_in_a_turn_are_ignored_and_empty_list_parses():
    parsed = parse_conversation('[{"from": "human", "value": "Hi", "id": 1}, {"from": "gpt", "value": "Hello"}]')
    assert [t.from_ for t in parsed] == ["human", "gpt"]
    assert parse_conversation("[]") == []
    assert codes(conversation_problems([])) == ["too_few_rounds"]


# ------------------------------------------------------------------------------------------ checks


def test_wrong_roles():
    bad = conv(5)
    bad[2]["from"] = "gpt"
    problems = conversation_problems(bad)
    assert problems == ["wrong_roles: turn 3 is from gpt, expected human"]
    starts_with_gpt = conv(5)
    starts_with_gpt[0]["from"], starts_with_gpt[1]["from"] = "gpt", "human"
    assert codes(conversation_problems(starts_with_gpt)) == ["wrong_roles"]
    ends_with_human = conv(5) + [{"from": "human", "value": "Anything else?"}]
    assert conversation_problems(ends_with_human) == ["wrong_roles: the conversation ends with a human turn"]


def test_round_counts():
    assert conversation_problems(turns(3)) == ["too_few_rounds: 3 rounds, at least 5"]
    assert conversation_problems(turns(11)) == ["too_many_rounds: 11 rounds, at most 10"]
    assert conversation_problems(turns(3), min_rounds=3, max_rounds=3) == []
    with pytest.raises(ValueError):
        conversation_problems(turns(5), min_rounds=6, max_rounds=5)


def test_empty_turn():
    assert conversation_problems(turns(5, g3="   \n")) == ["empty_turn: turn 6"]
    assert conversation_problems(turns(5, h1="")) == ["empty_turn: turn 1"]


@pytest.mark.parametrize(("answer", "phrase"), [
    ("The small left effusion is unchanged.", "unchanged"),
    ("Compared with before, the heart looks larger.", "Compared with"),
    ("A right basilar opacity is again seen.", "again"),
    ("THE TUBE REMAINS IN PLACE.", "REMAINS"),
    ("There has been interval improvement of the edema.", "interval improvement"),
    ("Stable mild cardiomegaly.", "Stable"),
])
def test_prior_study_language_in_an_answer(answer, phrase):
    assert conversation_problems(turns(5, g2=answer)) == [f"prior_study_language: '{phrase}' in turn 4"]


def test_prior_study_language_only_checked_in_answers():
    # the user may ask about earlier images; the answer must not take that up
    question = "Has anything changed since my last X-ray?"
    assert conversation_problems(turns(5, h2=question)) == []
    assert conversation_problems(turns(5, h2=question, g2="It looks unchanged.")) == [
        "prior_study_language: 'unchanged' in turn 4"]


def test_cautious_current_answers_do_not_trip_the_prior_check():
    answers = {f"g{i}": a for i, a in enumerate([
        "No new opacity is visible; the lungs look clear.",
        "Air in the pleural space, known as a pneumothorax, is not seen here.",
        "It remains unclear from a single image whether this is fluid or collapse.",
        "Again, only a doctor can confirm this impression.",
        "Degenerative changes of the spine appear to be present.",
    ], 1)}
    assert conversation_problems(turns(5, **answers)) == []


def test_phi_placeholder_and_image_tag():
    assert conversation_problems(turns(5, g4="The report was signed by Dr. ___.")) == [
        "phi_placeholder: turn 8 copies the '___' placeholder"]
    assert conversation_problems(turns(5, h1="<image>\nWhat type of image is this?")) == [
        "image_tag: turn 1 contains an <image> tag"]
    assert codes(conversation_problems(turns(5, g5="See <IMAGE/> for details."))) == ["image_tag"]


def test_several_problems_are_all_reported_in_code_order():
    bad = conv(3, g1="", g2="The effusion is unchanged since ___.")
    assert codes(conversation_problems(bad)) == ["too_few_rounds", "empty_turn", "prior_study_language",
                                                 "phi_placeholder"]
    assert set(codes(conversation_problems(bad))) <= set(REASONS)


# ------------------------------------------------------------------------------------------ grounded

EFFUSION = Box.from_normalised(0.1, 0.25, 0.5, 0.75)
NODULE = Box.from_normalised(0.5612, 0.123, 0.7, 0.3351)  # published text [0.56, 0.12, 0.7, 0.34]


def grounded(**replace: str) -> list[ConversationTurn]:
    defaults = {"h3": "Where is the fluid located on the image?",
                "g3": f"The left pleural effusion appears at {box_text(EFFUSION)}."}
    return turns(5, **{**defaults, **replace})


def test_grounded_conversation_with_given_boxes_passes():
    assert conversation_problems(grounded(), given_boxes=[EFFUSION, NODULE], grounded=True) == []
    both = f"They are at {boxes_text([EFFUSION, NODULE])}."
    assert box_text(NODULE) == "[0.56, 0.12, 0.7, 0.34]"
    assert conversation_problems(grounded(g3=both), given_boxes=[EFFUSION, NODULE], grounded=True) == []


def test_grounded_without_a_location_question():
    plain = turns(5, g3=f"The effusion appears at {box_text(EFFUSION)}.")
    assert conversation_problems(plain, given_boxes=[EFFUSION], grounded=True) == [
        "no_location_question: no question asks where a finding is"]


@pytest.mark.parametrize("question", [
    "Can you locate the abnormality?", "Which side is the fluid on?", "Could you show me the region?",
    "What are the coordinates of the opacity?", "Can you draw a bounding box around it?",
    "Where exactly is it?", "Point to the area of concern.",
])
def test_location_questions_are_recognised(question):
    assert conversation_problems(grounded(h3=question), given_boxes=[EFFUSION], grounded=True) == []


@pytest.mark.parametrize(("answer", "flagged"), [
    ("It appears at [0.12, 0.25, 0.5, 0.75].", "[0.12, 0.25, 0.5, 0.75]"),
    ("It appears at [0.104, 0.25, 0.5, 0.75].", "[0.104, 0.25, 0.5, 0.75]"),
    ("It appears at (0.2, 0.3, 0.4, 0.6).", "(0.2, 0.3, 0.4, 0.6)"),
    ("It spans the box <box>0.2 0.3 0.4 0.6</box>.", "[0.2, 0.3, 0.4, 0.6]"),
    ("Its corners are (0.2, 0.3), (0.4, 0.6).", "[0.2, 0.3, 0.4, 0.6]"),
    ("<|box_start|>(200,300),(400,600)<|box_end|>", "[0.2, 0.3, 0.4, 0.6]"),
])
def test_boxes_not_among_the_given_ones(answer, flagged):
    problems = conversation_problems(grounded(g3=answer), given_boxes=[EFFUSION], grounded=True)
    assert problems == [f"box_not_given: {flagged} in turn 6",
                        "no_given_box_quoted: no answer quotes any of the given boxes"]


@pytest.mark.parametrize(("written", "reason"), [
    ("[0.5, 0.25, 0.1, 0.75]", "inverted"),
    ("[120, 340, 560, 780]", "outside_frame"),
    ("[0.3, 0.3, 0.3, 0.6]", "zero_area"),
])
def test_bracketed_lists_that_are_not_valid_boxes(written, reason):
    answer = f"The effusion is at {box_text(EFFUSION)} and the nodule at {written}."
    problems = conversation_problems(grounded(g3=answer), given_boxes=[EFFUSION], grounded=True)
    assert problems == [f"box_not_given: {written} in turn 6 is not a valid normalised box ({reason})"]


def test_box_spelling_is_compared_as_numbers_of_the_published_form():
    fixed = box_text(EFFUSION, fixed=True)
    assert fixed == "[0.10, 0.25, 0.50, 0.75]"
    assert conversation_problems(grounded(g3=f"It is at {fixed}."), given_boxes=[EFFUSION], grounded=True) == []
    nodule_fixed = box_text(NODULE, fixed=True)
    assert conversation_problems(grounded(g3=f"It is at {nodule_fixed}."), given_boxes=[NODULE], grounded=True) == []
    # the unrounded corners are not what the LLM was shown
    raw = "[0.5612, 0.123, 0.7, 0.3351]"
    assert codes(conversation_problems(grounded(g3=f"It is at {raw}."), given_boxes=[NODULE], grounded=True)) == [
        "box_not_given", "no_given_box_quoted"]


def test_boxes_in_questions_are_checked_too_and_standard_conversations_may_not_invent_boxes():
    asked = grounded(h2="Is anything at [0.3, 0.3, 0.6, 0.6]?")
    assert conversation_problems(asked, given_boxes=[EFFUSION], grounded=True) == [
        "box_not_given: [0.3, 0.3, 0.6, 0.6] in turn 3"]
    invented = turns(5, g2="The heart spans [0.3, 0.4, 0.7, 0.8].")
    assert conversation_problems(invented) == ["box_not_given: [0.3, 0.4, 0.7, 0.8] in turn 4"]


def test_grounded_answer_must_quote_a_given_box():
    quiet = grounded(g3="It appears to be at the left lung base.")
    assert conversation_problems(quiet, given_boxes=[EFFUSION], grounded=True) == [
        "no_given_box_quoted: no answer quotes any of the given boxes"]
    # a box quoted only in the user's question does not count as an answer quoting it
    echoed = grounded(h3=f"Where is the fluid, near {box_text(EFFUSION)}?", g3="Near the left base.")
    assert codes(conversation_problems(echoed, given_boxes=[EFFUSION], grounded=True)) == ["no_given_box_quoted"]


# ------------------------------------------------------------------------------------------ reports


def test_prior_or_phi_problems():
    assert prior_or_phi_problems("The lungs are clear. No pleural effusion.") == []
    assert prior_or_phi_problems("Heart size is unchanged. Dr. ___ was notified.") == [
        "prior_study_language: 'unchanged'", "phi_placeholder: the text copies the '___' placeholder"]
    assert prior_or_phi_problems("") == []
