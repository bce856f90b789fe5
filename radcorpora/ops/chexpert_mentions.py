"""CheXpert labels read from free text (a model's answer or a report), negation and uncertainty
aware, for classification metrics: "no pneumothorax" is not a pneumothorax prediction, "possible
pneumonia" counts as present or absent by the uncertain policy, "no acute findings" / "normal"
mean No Finding.

A mention is judged within its sentence clause: a negation cue (no, without, negative for, free
of, absence of, ruled out, not) before it, within the clause, negates it; an uncertainty cue
(possible, may, cannot exclude, questionable, suspicious for, likely, suggest) makes it uncertain.
"""

from __future__ import annotations

import re

from radcorpora.schemas.cxr import CHEXPERT_LABELS

# Surface forms per label (lower case, word-bounded); longer forms are tried first.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": ("enlarged cardiomediastinum", "widened mediastinum", "mediastinal widening",
                                   "enlarged mediastinum", "mediastinal enlargement"),
    "Cardiomegaly": ("cardiomegaly", "enlarged heart", "enlarged cardiac silhouette", "heart is enlarged",
                     "cardiac enlargement"),
    "Lung Opacity": ("lung opacity", "opacity", "opacities", "opacification", "infiltrate", "infiltrates",
                     "airspace disease"),
    "Lung Lesion": ("lung lesion", "nodule", "nodules", "mass", "masses", "lesion"),
    "Edema": ("edema", "oedema", "pulmonary vascular congestion", "vascular congestion"),
    "Consolidation": ("consolidation", "consolidations"),
    "Pneumonia": ("pneumonia",),
    "Atelectasis": ("atelectasis", "atelectatic", "collapse"),
    "Pneumothorax": ("pneumothorax", "pneumothoraces"),
    "Pleural Effusion": ("pleural effusion", "pleural effusions", "effusion", "effusions"),
    "Pleural Other": ("pleural other", "pleural thickening", "pleural plaque", "pleural plaques", "fibrothorax"),
    "Fracture": ("fracture", "fractures", "fractured"),
    "Support Devices": ("support devices", "support device", "tube", "tubes", "catheter", "line", "lines",
                        "pacemaker", "wires", "device", "devices", "stent", "port"),
}
NO_FINDING = re.compile(r"\b(no finding|no findings|no abnormalit(?:y|ies)|no acute (?:cardiopulmonary )?(?:process|"
                        r"abnormality|findings?)|normal (?:chest|study|radiograph)|unremarkable|nothing abnormal)\b")
NEGATION = re.compile(r"\b(no|not|without|negative for|free of|absence of|absent|ruled out|rules out|resolved|"
                      r"neither|nor)\b")
UNCERTAIN = re.compile(r"\b(possible|possibly|may|might|cannot (?:be )?exclud\w*|can not (?:be )?exclud\w*|"
                       r"questionable|suspicious for|suspected|likely|probable|suggest\w*|concerning for|"
                       r"versus|vs\.?)\b")
CLAUSE = re.compile(r"[.;:!?\n]|\bbut\b|\bhowever\b|\balthough\b")
_FORMS = sorted(((form, label) for label, forms in SYNONYMS.items() for form in forms), key=lambda f: -len(f[0]))
_FORM_RE = re.compile(r"\b(" + "|".join(re.escape(f) for f, _ in _FORMS) + r")\b")
_LABEL_OF = {form: label for form, label in _FORMS}


def label_states(text: str) -> dict[str, str]:
    """label -> positive | negative | uncertain for every label mentioned (others absent)."""
    states: dict[str, str] = {}
    rank = {"negative": 0, "uncertain": 1, "positive": 2}
    lowered = text.lower()
    for clause in CLAUSE.split(lowered):
        for match in _FORM_RE.finditer(clause):
            label = _LABEL_OF[match.group(1)]
            before = clause[:match.start()]
            state = "negative" if NEGATION.search(before) else "uncertain" if UNCERTAIN.search(clause) else "positive"
            if label not in states or rank[state] > rank[states[label]]:  # the strongest mention wins
                states[label] = state
    if NO_FINDING.search(lowered) and not any(s == "positive" for s in states.values()):
        states["No Finding"] = "positive"
    return states


def predicted_labels(text: str, uncertain: str = "absent") -> set[str]:
    """The set of CheXpert labels a text asserts (No Finding when it names none as present)."""
    take = {"positive"} | ({"uncertain"} if uncertain == "present" else set())
    found = {label for label, state in label_states(text).items() if state in take and label != "No Finding"}
    return found or {"No Finding"}


def macro_f1(predictions: list[set[str]], targets: list[set[str]], labels: tuple[str, ...] = CHEXPERT_LABELS
             ) -> tuple[float, dict[str, float]]:
    """Macro-averaged F1 over `labels`, and per-label F1. A label neither predicted nor present in
    any target has no F1 and is left out of the average (it says nothing about the model)."""
    per_label: dict[str, float] = {}
    for label in labels:
        tp = sum(label in p and label in t for p, t in zip(predictions, targets))
        fp = sum(label in p and label not in t for p, t in zip(predictions, targets))
        fn = sum(label not in p and label in t for p, t in zip(predictions, targets))
        if tp + fp + fn == 0:
            continue
        per_label[label] = 2 * tp / (2 * tp + fp + fn)
    score = sum(per_label.values()) / len(per_label) if per_label else 0.0
    return score, per_label
