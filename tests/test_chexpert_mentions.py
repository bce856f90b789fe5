"""Negation- and uncertainty-aware label reading from free text, and macro-F1."""

from __future__ import annotations

import pytest

from radcorpora.ops.chexpert_mentions import label_states, macro_f1, predicted_labels


@pytest.mark.parametrize(("text", "expected"), [
    ("There is a small left pleural effusion.", {"Pleural Effusion"}),
    ("No pneumothorax.", {"No Finding"}),
    ("No pneumothorax. Mild cardiomegaly.", {"Cardiomegaly"}),
    ("The image shows: atelectasis, pleural effusion.", {"Atelectasis", "Pleural Effusion"}),
    ("Heart size is normal without pleural effusion or pneumothorax.", {"No Finding"}),
    ("Possible right lower lobe pneumonia.", {"No Finding"}),
    ("No acute cardiopulmonary process.", {"No Finding"}),
    ("Endotracheal tube in place; no consolidation.", {"Support Devices"}),
    ("Nodule in the left upper lobe but no effusion.", {"Lung Lesion"}),
    ("NO PNEUMOTHORAX. CARDIOMEGALY.", {"Cardiomegaly"}),
])
def test_predicted_labels_respect_negation(text, expected):
    assert predicted_labels(text) == expected


def test_uncertain_mentions_follow_the_policy():
    text = "Cannot exclude pneumonia."
    assert label_states(text)["Pneumonia"] == "uncertain"
    assert predicted_labels(text, "absent") == {"No Finding"}
    assert predicted_labels(text, "present") == {"Pneumonia"}


def test_word_boundaries_hold():
    assert "Support Devices" not in label_states("The midline structures are unremarkable.")
    assert predicted_labels("Nothing abnormal: no finding.") == {"No Finding"}


def test_macro_f1_by_hand():
    predictions = [{"Edema"}, {"Edema", "Cardiomegaly"}, {"No Finding"}]
    targets = [{"Edema"}, {"Cardiomegaly"}, {"No Finding"}]
    score, per_label = macro_f1(predictions, targets)
    # Edema: tp 1, fp 1, fn 0 -> 2/3; Cardiomegaly: tp 1 -> 1; No Finding: tp 1 -> 1
    assert per_label == pytest.approx({"Edema": 2 / 3, "Cardiomegaly": 1.0, "No Finding": 1.0})
    assert score == pytest.approx((2 / 3 + 1 + 1) / 3)
