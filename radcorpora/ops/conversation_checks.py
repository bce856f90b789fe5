"""Checks for an LLM-written RadVLM conversation (standard or grounded), and for the prior-removal
stage's rewritten report.

Parsing (`parse_conversation`)
    The reply must be, after stripping white space, one of these documented forms and nothing else:
    1. the JSON list `[{"from": "human" | "gpt", "value": "..."}, ...]`;
    2. that list as the whole content of one Markdown code fence (```json ... ``` or ``` ... ```);
    3. a JSON object wrapping the list (structured-output wrappers): an object with exactly one key
       whose value is a list, or an object with a "conversation" / "conversations" / "turns" key
       holding the list (either form may itself be fenced).
    No JSON is cut out of surrounding prose by guessing brackets. Failures raise
    `ConversationError(reason, detail)` with reason `not_json` (not parseable in any documented
    form), `not_a_list` (JSON, but no list of turns where one is expected) or `bad_turn` (an item
    that is not `{"from": "human" | "gpt", "value": <string>}`; other keys are ignored). An empty
    list parses (the round count then fails the checks).

Checks (`conversation_problems`) return reason-coded strings `"<code>: <detail>"`:
    `wrong_roles`            turns must alternate human, gpt, human, ... and end with gpt
    `too_few_rounds`         fewer than `min_rounds` rounds (a round is one human + one gpt turn;
                             rounds = number of turns // 2)
    `too_many_rounds`        more than `max_rounds` rounds
    `empty_turn`             a turn whose value is empty or only white space
    `prior_study_language`   a gpt turn with prior-study language (ops.prior_study), one problem
                             per phrase: `prior_study_language: 'unchanged' in turn 4`
    `phi_placeholder`        a turn (either role) with MIMIC's PHI placeholder `___`
    `image_tag`              a turn containing `<image>`: the builder puts the tag in the first
                             human turn itself, so an LLM reply must not carry one
    `no_location_question`   grounded only: no human turn asks where something is. A location
                             question is one with any of: where, whereabouts, locate/located/
                             location, position/positioned, region, box / bounding, coordinate(s),
                             area, "which side / part / lobe / zone", "point to / out", "show me",
                             highlight, mark
    `box_not_given`          a box in any turn that is not one of the given boxes, or a bracketed
                             list of four numbers that is not a valid normalised box (inverted, zero
                             area, outside [0, 1] such as pixel values): `box_not_given: [..]`
    `no_given_box_quoted`    grounded with given boxes: no gpt turn quotes any of them

Boxes: every turn (human and gpt) is read. Bracketed four-number lists (`[x1, y1, x2, y2]`, also
with parentheses or braces) are compared by their written numbers; the other forms
`ops.boxes.parse_boxes` reads (`<box>..</box>`, `x1=..`, `(x1, y1), (x2, y2)`, Qwen's 0-1000 grid)
by the box it reads. A box is "given" when each of its four numbers equals the given box's corner
rounded to 2 decimals (Python `round`, as `ops.boxes.box_text` prints it), compared as numbers: so
`[0.10, 0.20, 0.50, 0.75]` (RadVLM's fixed two-decimal form) and `[0.1, 0.2, 0.5, 0.75]` are both
the given box `[0.1, 0.2, 0.5, 0.75]`, while `[0.104, 0.2, 0.5, 0.75]` is not (the LLM must quote
what it was shown, not something that rounds to it). With `given_boxes=None` no box was given, so
any box is `box_not_given`: a standard conversation must not invent coordinates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radcorpora.ops.boxes import box_text, find_box_text, parse_boxes
from radcorpora.ops.prior_study import prior_study_phrases
from radcorpora.schemas.boxes import Box, BoxError

__all__ = ["REASONS", "ConversationError", "ConversationTurn", "conversation_problems", "parse_conversation",
           "prior_or_phi_problems", "problem_codes"]

REASONS = ("wrong_roles", "too_few_rounds", "too_many_rounds", "empty_turn", "prior_study_language",
           "phi_placeholder", "image_tag", "no_location_question", "box_not_given", "no_given_box_quoted")
WRAPPER_KEYS = ("conversation", "conversations", "turns")

_FENCE = re.compile(r"\A```[ \t]*(?:json|JSON)?[ \t]*\r?\n(?P<body>.*?)\r?\n?[ \t]*```\Z", re.DOTALL)
_PHI = re.compile(r"_{3,}")
_IMAGE_TAG = re.compile(r"<\s*/?\s*image\s*/?\s*>", re.IGNORECASE)
_LOCATION = re.compile(
    r"\b(?:where|whereabouts|locat(?:e|ed|es|ing|ion|ions)|position(?:ed|s)?|regions?|box(?:es)?|bounding|"
    r"coordinates?|areas?|which\s+(?:side|part|lobe|zone|portion)|point\s+(?:to|out)|show\s+me|highlight|mark)\b",
    re.IGNORECASE)
_TOLERANCE = 1e-9


class ConversationError(ValueError):
    """A reply that is not a conversation; `reason` is `not_json`, `not_a_list` or `bad_turn`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ConversationTurn(BaseModel):
    """One turn in LLaVA form: `{"from": "human" | "gpt", "value": "..."}`."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    from_: Literal["human", "gpt"] = Field(alias="from")
    value: str = Field(strict=True)

    def as_record(self) -> dict[str, str]:
        """`{"from": ..., "value": ...}` as published."""
        return {"from": self.from_, "value": self.value}


def parse_conversation(reply: str) -> list[ConversationTurn]:
    """The turns of an LLM reply in one of the documented forms (module docstring)."""
    if not isinstance(reply, str):
        raise ConversationError("not_json", f"expected text, got {type(reply).__name__}")
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group("body").strip()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConversationError("not_json", f"{exc} in {_preview(text)}") from exc
    if isinstance(data, Mapping):
        data = _unwrap(data)
    if not isinstance(data, list):
        raise ConversationError("not_a_list", f"expected a JSON list of turns, got {type(data).__name__}")
    turns = []
    for i, item in enumerate(data, 1):
        if not isinstance(item, Mapping):
            raise ConversationError("bad_turn", f"turn {i} is {type(item).__name__}, not an object")
        try:
            turns.append(ConversationTurn.model_validate(item))
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) or "turn" for e in exc.errors())
            raise ConversationError("bad_turn", f'turn {i} needs "from" in human/gpt and a string "value" '
                                                f"(problem with: {fields})") from exc
    return turns


def _unwrap(data: Mapping[str, Any]) -> Any:
    lists = [key for key, value in data.items() if isinstance(value, list)]
    if len(data) == 1 and lists:
        return data[lists[0]]
    for key in WRAPPER_KEYS:
        if isinstance(data.get(key), list):
            return data[key]
    raise ConversationError("not_a_list", f"a JSON object with keys {sorted(map(str, data))[:6]} and no list of "
                                          f"turns under one key or under {'/'.join(WRAPPER_KEYS)}")


def conversation_problems(turns: Sequence[ConversationTurn | Mapping[str, Any]], *, min_rounds: int = 5,
                          max_rounds: int = 10, given_boxes: Sequence[Box] | None = None,
                          grounded: bool = False) -> list[str]:
    """Every rule the conversation breaks, as `"<code>: <detail>"` (codes in `REASONS`); [] when fine."""
    if min_rounds < 0 or max_rounds < min_rounds:
        raise ValueError(f"need 0 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    turns = [t if isinstance(t, ConversationTurn) else ConversationTurn.model_validate(t) for t in turns]
    problems: list[str] = []
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn.from_ != expected:
            problems.append(f"wrong_roles: turn {i + 1} is from {turn.from_}, expected {expected}")
            break
    else:
        if turns and turns[-1].from_ != "gpt":
            problems.append("wrong_roles: the conversation ends with a human turn")
    rounds = len(turns) // 2
    if rounds < min_rounds:
        problems.append(f"too_few_rounds: {rounds} rounds, at least {min_rounds}")
    elif rounds > max_rounds:
        problems.append(f"too_many_rounds: {rounds} rounds, at most {max_rounds}")
    for n, turn in enumerate(turns, 1):
        if not turn.value.strip():
            problems.append(f"empty_turn: turn {n}")
    for n, turn in enumerate(turns, 1):
        if turn.from_ == "gpt":
            for match in prior_study_phrases(turn.value):
                problems.append(f"prior_study_language: '{match.phrase}' in turn {n}")
    for n, turn in enumerate(turns, 1):
        if _PHI.search(turn.value):
            problems.append(f"phi_placeholder: turn {n} copies the '___' placeholder")
    for n, turn in enumerate(turns, 1):
        if _IMAGE_TAG.search(turn.value):
            problems.append(f"image_tag: turn {n} contains an <image> tag")
    if grounded and not any(t.from_ == "human" and _LOCATION.search(t.value) for t in turns):
        problems.append("no_location_question: no question asks where a finding is")
    problems.extend(_box_problems(turns, list(given_boxes) if given_boxes is not None else [], grounded))
    return _unique(problems)


def _box_problems(turns: list[ConversationTurn], given: list[Box], grounded: bool) -> list[str]:
    keys = [_key(b.xyxy) for b in given]
    problems: list[str] = []
    quoted = False
    for n, turn in enumerate(turns, 1):
        text = turn.value
        masked = list(text)
        for m in find_box_text(text, forms=("bracket",)):
            masked[m.start:m.end] = " " * (m.end - m.start)
            values = m.values
            written = re.sub(r"\s+", " ", m.text)
            try:
                Box.from_normalised(*values)
            except BoxError as exc:
                problems.append(f"box_not_given: {written} in turn {n} is not a valid normalised box ({exc.reason})")
                continue
            if _is_given(values, keys):
                quoted = quoted or turn.from_ == "gpt"
            else:
                problems.append(f"box_not_given: {written} in turn {n}")
        for box in parse_boxes("".join(masked)):
            if _is_given(box.xyxy, keys):
                quoted = quoted or turn.from_ == "gpt"
            else:
                problems.append(f"box_not_given: {box_text(box)} in turn {n}")
    if grounded and given and not quoted:
        problems.append("no_given_box_quoted: no answer quotes any of the given boxes")
    return problems


def _key(corners: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(v, 2) + 0.0 for v in corners)


def _is_given(values: Sequence[float], keys: list[tuple[float, ...]]) -> bool:
    return any(all(abs(v - k) <= _TOLERANCE for v, k in zip(values, key)) for key in keys)


def prior_or_phi_problems(text: str) -> list[str]:
    """Problems of a rewritten report (prior-removal stage): `prior_study_language: '<phrase>'`
    per phrase and `phi_placeholder` when `___` is copied; [] when clean."""
    problems = [f"prior_study_language: '{m.phrase}'" for m in prior_study_phrases(text or "")]
    if _PHI.search(text or ""):
        problems.append("phi_placeholder: the text copies the '___' placeholder")
    return _unique(problems)


def problem_codes(problems: Sequence[str]) -> list[str]:
    """The reason codes of `problems` (the text before the first colon), in order, without repeats."""
    return _unique([p.split(":", 1)[0] for p in problems])


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
