"""The rule-based prior-study detector: what fires (and by which rule), what must not fire,
sentence splitting on radiology text, and sentence-level removal on whole reports."""

from __future__ import annotations

import pytest

from radcorpora.ops.prior_study import (
    RULES,
    Match,
    has_prior_reference,
    prior_study_phrases,
    remove_prior_sentences,
    split_sentences,
)

# (sentence, rule expected among the matches, phrase expected for that rule)
MUST_FIRE = [
    ("Compared to the prior study of ___, the cardiomediastinal silhouette is similar.", "compared", "Compared to"),
    ("In comparison with the radiograph from ___, there is less atelectasis.", "comparison", "comparison"),
    ("COMPARISON: ___.", "comparison", "COMPARISON"),
    ("Left basilar opacity is smaller than on the prior.", "as_before", "than on the prior"),
    ("PA and lateral views of the chest were obtained and compared with the prior CT.", "prior_study", "prior CT"),
    ("Findings are similar to the previous chest radiograph.", "prior_study", "previous chest radiograph"),
    ("The heart is enlarged, similar to the previous PA and lateral views.", "prior_study",
     "previous PA and lateral views"),
    ("Lung volumes are lower than on the prior ___.", "as_before", "than on the prior"),
    ("Small bilateral effusions, similar to prior.", "prior_noun", "to prior"),
    ("Since the prior radiograph, the left effusion has increased.", "since_prior", "Since the prior"),
    ("Mild pulmonary edema has developed since ___.", "since_prior", "since ___"),
    ("Right upper lobe opacity is more conspicuous than 12/04/2011.", "date_reference", "than 12/04/2011"),
    ("Tip of the right PICC is at the cavoatrial junction, as on the radiograph from ___.", "date_reference",
     "radiograph from ___"),
    ("The cardiac silhouette is unchanged.", "unchanged", "unchanged"),
    ("NO INTERVAL CHANGE IN THE APPEARANCE OF THE CHEST.", "no_change", "NO INTERVAL CHANGE"),
    ("There is no change in the small left pleural effusion.", "no_change", "no change"),
    ("No acute cardiopulmonary change.", "no_change", "No acute cardiopulmonary change"),
    ("Moderate cardiomegaly is not significantly changed.", "changed", "changed"),
    ("Right lower lobe consolidation is again seen.", "again", "again"),
    ("AGAIN NOTED IS A LEFT RETROCARDIAC OPACITY.", "again", "AGAIN"),
    ("The previously described nodule in the right upper lobe is not well seen.", "previously", "previously"),
    ("Interval improvement in pulmonary vascular congestion.", "interval", "Interval improvement"),
    ("Interval resolution of the right pneumothorax.", "interval", "Interval resolution"),
    ("Mild interstitial edema appears as before.", "as_before", "as before"),
    ("Large left pleural effusion is new.", "is_new", "is new"),
    ("New since ___ is a right basilar opacity.", "new_since", "New since"),
    ("Newly placed left-sided chest tube with tip at the apex.", "newly", "Newly"),
    ("New tracheostomy tube in place.", "new", "New"),
    ("There is a new right lower lobe opacity concerning for aspiration.", "new", "new"),
    ("The left pleural effusion has decreased.", "has_changed", "has decreased"),
    ("Bibasilar atelectasis has slightly improved.", "has_changed", "has slightly improved"),
    ("The right hilar mass has increased in size.", "has_changed", "has increased"),
    ("The left upper lobe nodule is decreased in size.", "size_change", "decreased in size"),
    ("Persistent left lower lobe collapse.", "persistent", "Persistent"),
    ("PERSISTENTLY LOW LUNG VOLUMES.", "persistent", "PERSISTENTLY"),
    ("Redemonstration of a moderate hiatal hernia.", "redemonstrated", "Redemonstration"),
    ("Re-demonstrated calcified granuloma in the left lower lobe.", "redemonstrated", "Re-demonstrated"),
    ("Stable cardiomegaly.", "stable", "Stable"),
    ("The mediastinal contours are grossly stable compared to ___.", "stable", "stable"),
    ("Heart size remains stable.", "remains", "remains"),
    ("Pre-existing right basilar atelectasis.", "pre_existing", "Pre-existing"),
    ("Known left upper lobe mass with post-obstructive atelectasis.", "known", "Known"),
    ("THE ENDOTRACHEAL TUBE REMAINS IN STANDARD POSITION.", "remains", "REMAINS"),
    ("The lungs continue to be hyperinflated.", "continues", "continue to be"),
    ("Consolidation in the right lower lobe continues to improve.", "continues", "continues to"),
    ("Resolving right middle lobe pneumonia.", "resolving", "Resolving"),
    ("Worsening bilateral airspace opacities.", "worsening", "Worsening"),
    ("Increasing right pleural effusion.", "trend", "Increasing"),
    ("The nasogastric tube is no longer seen.", "no_longer", "no longer"),
    ("The left chest tube has been removed.", "has_changed", "has been removed"),
    ("There has been interval placement of a right internal jugular line.", "interval", "interval placement"),
    ("Right PICC now terminates in the low SVC.", "now", "now terminates"),
    ("Mediastinal widening is unchanged from yesterday's radiograph.", "unchanged", "unchanged"),
    ("Re-expansion of the right lung.", "re_change", "Re-expansion"),
    ("Complete resolution of the left effusion.", "resolution", "Complete resolution"),
    ("Lung volumes are lower than baseline.", "baseline", "than baseline"),
    ("There is little change from the examination of ___.", "no_change", "little change"),
    ("Change from the earlier film is minimal.", "change_from", "Change from"),
    ("Mild edema is similar to yesterday.", "yesterday", "yesterday"),
    ("Improved aeration of the left lower lobe.", "improvement", "Improved"),
]

# (sentence, why it is current)
MUST_NOT_FIRE = [
    ("No new opacity.", "negated new: a statement about the present image"),
    ("There is no evidence of new consolidation, effusion, or pneumothorax.", "negated new"),
    ("NO NEWLY DEVELOPED FOCAL CONSOLIDATION.", "negated newly"),
    ("No pleural effusion or pneumothorax.", "plain negative finding"),
    ("Normal heart size.", "plain finding"),
    ("The heart size is normal and the lungs are clear.", "plain finding"),
    ("Status post median sternotomy with intact sternal wires.", "status post ... with is current"),
    ("Status post CABG with mediastinal clips.", "status post ... with is current"),
    ("Prior to intubation, the patient was hypoxic.", "prior to (preposition)"),
    ("Evaluate for pneumonia prior to surgery.", "prior to (preposition)"),
    ("Sequelae of prior granulomatous disease with calcified hilar lymph nodes.", "prior disease, not a study"),
    ("Cause of the opacity is unknown.", "unknown is not known"),
    ("A condition known as pneumothorax means air in the pleural space.", "known as"),
    ("Air is seen against the pleural line.", "against is not again"),
    ("Degenerative changes of the thoracic spine.", "changes as a finding"),
    ("Emphysematous changes in the upper lobes.", "changes as a finding"),
    ("No acute cardiopulmonary process.", "no acute process"),
    ("The patient is hemodynamically stable.", "clinical sense of stable"),
    ("UNSTABLE ANGINA, EVALUATE FOR EDEMA.", "unstable is not stable"),
    ("Left lung volume is decreased compared to the right.", "comparison with the other side"),
    ("Bilateral effusions, left worse than right.", "side comparison"),
    ("Increased interstitial markings at the bases.", "increased as a current description"),
    ("Decreased lung volumes with crowding of the bronchovascular markings.", "decreased as a current description"),
    ("The remaining lungs are clear.", "remaining is not remains"),
    ("Endotracheal tube tip 4.5 cm above the carina.", "decimal and device position"),
    ("NASOGASTRIC TUBE COURSES BELOW THE DIAPHRAGM WITH TIP IN THE STOMACH.", "ALL CAPS current finding"),
    ("Dr. ___ was notified of the findings by telephone.", "PHI but no prior study"),
    ("The right costophrenic angle is not included on the image.", "technique, current"),
    ("Cardiomediastinal silhouette is within normal limits.", "plain finding"),
    ("It remains unclear from a single image whether this is fluid.", "cautious wording"),
    ("Calcified granuloma in the left lower lobe.", "plain finding"),
    ("Surgical clips project over the right upper quadrant.", "plain finding"),
    ("The image quality could be improved with a deeper breath.", "modal: advice, not a comparison"),
    ("If your symptoms are worsening, please seek care.", "advice about symptoms"),
    ("A 70-year-old man's chest x-ray shows clear lungs.", "year-old is not an old film"),
]


@pytest.mark.parametrize(("sentence", "rule", "phrase"), MUST_FIRE)
def test_prior_language_fires_with_the_expected_rule(sentence, rule, phrase):
    matches = prior_study_phrases(sentence)
    assert (rule, phrase) in [(m.rule, m.phrase) for m in matches], matches
    assert has_prior_reference(sentence)


@pytest.mark.parametrize(("sentence", "why"), MUST_NOT_FIRE)
def test_current_findings_do_not_fire(sentence, why):
    assert prior_study_phrases(sentence) == [], why
    assert not has_prior_reference(sentence)


def test_enough_real_style_sentences_and_every_rule_is_exercised():
    assert len(MUST_FIRE) + len(MUST_NOT_FIRE) >= 40
    assert {rule for _, rule, _ in MUST_FIRE} == {r.name for r in RULES}
    assert len({r.name for r in RULES}) == len(RULES)


def test_match_carries_phrase_sentence_rule_and_offsets():
    text = "The lungs are clear. Small left effusion is unchanged."
    [m] = prior_study_phrases(text)
    assert m == Match("unchanged", "Small left effusion is unchanged.", "unchanged", 23, 32)
    assert m.sentence[m.start:m.end] == m.phrase


def test_overlapping_rules_report_one_phrase():
    # "stable" (rule stable) sits inside no longer match; "has improved" is one phrase, not two
    matches = prior_study_phrases("The effusion has improved.")
    assert [(m.rule, m.phrase) for m in matches] == [("has_changed", "has improved")]


# ------------------------------------------------------------------------------------ decisions


@pytest.mark.parametrize("sentence", [
    "Heart size is stable.", "Stable appearance of the support lines.", "STABLE POSITION OF THE ET TUBE.",
    "Stability of the left upper lobe nodule.",
])
def test_stable_about_an_imaging_finding_fires(sentence):
    assert [m.rule for m in prior_study_phrases(sentence)] == ["stable"]


@pytest.mark.parametrize("sentence", [
    "Patient is clinically stable, evaluate for line placement.", "Hemodynamically stable after the fall.",
    "History of stable angina.", "Patient in stable condition.",
])
def test_stable_in_its_clinical_sense_does_not_fire(sentence):
    assert prior_study_phrases(sentence) == []


def test_new_is_comparative_unless_negated_in_its_clause():
    assert prior_study_phrases("No pneumothorax or new effusion.") == []
    assert [m.rule for m in prior_study_phrases("No pneumothorax, new right effusion.")] == ["new"]
    assert [m.rule for m in prior_study_phrases("No pneumothorax but a new right effusion.")] == ["new"]
    assert prior_study_phrases("The newer portable technique limits assessment.") == []


def test_word_boundaries():
    assert prior_study_phrases("Unknown density projecting over the spine.") == []
    assert prior_study_phrases("The catheter lies against the lateral wall.") == []
    assert prior_study_phrases("The interventricular septum is not assessed.") == []
    assert [m.rule for m in prior_study_phrases("KNOWN METASTATIC DISEASE.")] == ["known"]


def test_again_as_a_discourse_marker_and_previously_about_a_conversation():
    assert prior_study_phrases("Again, a single image cannot show this with certainty.") == []
    assert prior_study_phrases("As I previously mentioned, the heart looks enlarged.") == []


# ------------------------------------------------------------------------------------ sentences


def test_split_sentences_radiology_text():
    text = ("FINDINGS: 1. ET tube tip is approx. 4.5 cm above the carina. 2. Dr. ___ was paged at 10 a.m. on ___.\n"
            " e.g. low volumes. Heart size is normal!")
    assert split_sentences(text) == [
        "FINDINGS: 1. ET tube tip is approx. 4.5 cm above the carina.",
        "2. Dr. ___ was paged at 10 a.m. on ___.",
        "e.g. low volumes.",
        "Heart size is normal!",
    ]


def test_split_sentences_wrapped_mimic_lines_and_blocks():
    text = (" FINDINGS:\n \n The lungs are clear without focal consolidation. There is no\n pleural effusion or"
            " pneumothorax.\n \n IMPRESSION:\n No acute cardiopulmonary process.\n")
    assert split_sentences(text) == [
        "FINDINGS: The lungs are clear without focal consolidation.",
        "There is no pleural effusion or pneumothorax.",
        "IMPRESSION: No acute cardiopulmonary process.",
    ]


def test_split_sentences_chexpert_plus_all_caps_numbered():
    text = "1.TRACHEOSTOMY TUBE REMAINS IN PLACE.2.NO PNEUMOTHORAX. 3. MILD CARDIOMEGALY, 2.5 CM NODULE."
    assert split_sentences(text) == [
        "1.TRACHEOSTOMY TUBE REMAINS IN PLACE.",
        "2.NO PNEUMOTHORAX.",
        "3. MILD CARDIOMEGALY, 2.5 CM NODULE.",
    ]


def test_split_sentences_lists_without_periods_bullets_and_edges():
    assert split_sentences("1. clear lungs 2. no effusion 3. normal heart") == [
        "1. clear lungs", "2. no effusion", "3. normal heart"]
    assert split_sentences("- Clear lungs\n- No effusion\n* Normal heart") == [
        "- Clear lungs", "- No effusion", "* Normal heart"]
    assert split_sentences("Nodule measures 2.5. The heart is normal.") == [
        "Nodule measures 2.5.", "The heart is normal."]
    assert split_sentences("Lesion of 3 cm. in diameter. Clear lungs.") == [
        "Lesion of 3 cm. in diameter.", "Clear lungs."]
    assert split_sentences("") == []
    assert split_sentences("  \n\n ") == []
    assert split_sentences("Addendum text.\n ______________\n Findings: Clear lungs.") == [
        "Addendum text.", "Findings: Clear lungs."]
    assert split_sentences("Is there fluid? No. Heart normal") == ["Is there fluid?", "No.", "Heart normal"]


# ------------------------------------------------------------------------------------ removal


def test_remove_prior_sentences_mimic_findings_paragraph():
    report = ("PA and lateral views of the chest provided. Compared to the prior study of ___, the left basilar\n"
              " opacity has improved. The heart size is normal. Again seen is a small right pleural effusion.\n"
              " No pneumothorax. The endotracheal tube remains in standard position. Degenerative changes of the\n"
              " thoracic spine. No new focal consolidation.")
    kept, removed = remove_prior_sentences(report)
    assert kept == ("PA and lateral views of the chest provided. The heart size is normal. No pneumothorax. "
                    "Degenerative changes of the thoracic spine. No new focal consolidation.")
    assert removed == [
        "Compared to the prior study of ___, the left basilar opacity has improved.",
        "Again seen is a small right pleural effusion.",
        "The endotracheal tube remains in standard position.",
    ]
    assert not has_prior_reference(kept)


def test_remove_prior_sentences_chexpert_plus_caps_keeps_blocks():
    report = ("NARRATIVE: SINGLE VIEW OF THE CHEST.\n\n"
              "IMPRESSION: 1.TRACHEOSTOMY TUBE REMAINS IN PLACE. 2.LOW LUNG VOLUMES WITH BIBASILAR ATELECTASIS.\n"
              "3. INTERVAL INCREASE IN THE SIZE OF THE RIGHT PLEURAL EFFUSION SINCE 03/14/2012.\n"
              "4. NO PNEUMOTHORAX.")
    kept, removed = remove_prior_sentences(report)
    assert kept == ("NARRATIVE: SINGLE VIEW OF THE CHEST.\n"
                    "2.LOW LUNG VOLUMES WITH BIBASILAR ATELECTASIS.\n"
                    "4. NO PNEUMOTHORAX.")
    assert removed == ["IMPRESSION: 1.TRACHEOSTOMY TUBE REMAINS IN PLACE.",
                       "3. INTERVAL INCREASE IN THE SIZE OF THE RIGHT PLEURAL EFFUSION SINCE 03/14/2012."]


def test_remove_prior_sentences_nothing_current():
    report = "No significant change since ___. Stable cardiomegaly. Persistent small bilateral effusions."
    kept, removed = remove_prior_sentences(report)
    assert kept == ""
    assert removed == ["No significant change since ___.", "Stable cardiomegaly.",
                       "Persistent small bilateral effusions."]


def test_remove_prior_sentences_without_prior_language_changes_only_spacing():
    report = "The lungs are clear.  No effusion.\nNormal heart size."
    assert remove_prior_sentences(report) == ("The lungs are clear. No effusion. Normal heart size.", [])
    assert remove_prior_sentences("") == ("", [])


@pytest.mark.parametrize("sentence", [s for s, _, _ in MUST_FIRE] + [s for s, _ in MUST_NOT_FIRE])
def test_removal_output_never_carries_prior_language(sentence):
    text = f"{sentence} The lungs are clear. {sentence}"
    kept, removed = remove_prior_sentences(text)
    assert not has_prior_reference(kept)
    assert (removed == []) == (not has_prior_reference(sentence))
