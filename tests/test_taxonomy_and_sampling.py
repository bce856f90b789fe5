import hashlib
from collections import Counter

import pytest

from radcorpora.ops.sampling import (
    draw_index,
    draw_sample,
    draw_shuffle,
    largest_remainder_quotas,
    row_index,
    row_indices,
    row_rng,
    stratified_ranked_sample,
)
from radcorpora.schemas.taxonomy import normalise_label, radimagenet_vqa_taxonomy

# Table 3 of the paper, counted by hand: pathologies per region.
TABLE3_COUNTS = {"abdomen/pelvis": 30, "ankle foot": 24, "brain": 9, "hip": 13, "knee": 17,
                 "chest": 5, "shoulder": 13, "spine": 8}


def test_taxonomy_matches_table3():
    tax = radimagenet_vqa_taxonomy()
    assert {r.name: len(r.pathologies) for r in tax.regions} == TABLE3_COUNTS
    assert tax.find_pathology(tax.region("chest"), "Airspace_Opacity") == "airspace opacity"
    assert tax.find_pathology(tax.region("knee"), "nodule") is None
    assert normalise_label("Post-Operative_state ") == "post operative state"


def test_quotas_sum_and_are_proportional():
    counts = {"a": 701, "b": 199, "c": 100}
    quotas = largest_remainder_quotas(counts, 100)
    assert sum(quotas.values()) == 100
    for key, count in counts.items():
        assert abs(quotas[key] - 100 * count / 1000) < 1
    assert largest_remainder_quotas(counts, 5000) == counts  # capped at the population


def test_stratified_sample_ignores_input_order():
    items = [(f"s{i % 3}", f"row{i}") for i in range(60)]
    forward, q1 = stratified_ranked_sample(items, 10, seed=7, corpus="c")
    backward, q2 = stratified_ranked_sample(list(reversed(items)), 10, seed=7, corpus="c")
    assert forward == backward and q1 == q2
    other, _ = stratified_ranked_sample(items, 10, seed=8, corpus="c")
    assert other != forward


def test_row_rng_depends_only_on_identity():
    assert row_rng(1, "c", "k", "p").random() == row_rng(1, "c", "k", "p").random()
    assert row_rng(1, "c", "k", "p").random() != row_rng(1, "c", "k", "q").random()
    draws = Counter(row_rng(0, "c", f"k{i}").randrange(4) for i in range(4000))
    assert all(900 < n < 1100 for n in draws.values())


def test_row_indices_are_uniform_independent_and_read_from_the_digest():
    # the first pick is the digest's first 64 bits modulo the size, computed here independently
    material = "3\x1fc\x1fk9\x1fp".encode()
    assert row_index(3, "c", "k9", "p", 7) == int.from_bytes(hashlib.sha256(material).digest()[:8], "big") % 7
    assert row_indices(3, "c", "k9", "p", (7, 5)) == row_indices(3, "c", "k9", "p", (7, 5))
    pairs = Counter(row_indices(0, "c", f"k{i}", "p", (4, 3)) for i in range(12000))
    assert len(pairs) == 12 and all(800 < n < 1200 for n in pairs.values())  # uniform, and the two picks independent
    assert Counter(row_index(0, "c", "k", f"p{i}", 2) for i in range(2000))[0] in range(900, 1100)  # purpose matters
    with pytest.raises(ValueError, match="empty"):
        row_index(0, "c", "k", "p", 0)
    with pytest.raises(ValueError, match="at most four"):
        row_indices(0, "c", "k", "p", (2,) * 5)


def test_fast_draws_are_uniform_distinct_and_seeded():
    rng = row_rng(0, "c", "k")
    assert Counter(draw_index(rng, 3) for _ in range(6000)).keys() == {0, 1, 2}
    assert all(1800 < n < 2200 for n in Counter(draw_index(rng, 3) for _ in range(6000)).values())
    samples = [tuple(draw_sample(rng, "abcde", 3)) for _ in range(12000)]
    assert all(len(set(s)) == 3 for s in samples)
    assert len(Counter(samples)) == 60 and all(140 < n < 270 for n in Counter(samples).values())  # 5*4*3 orders, ~200 each
    orders = Counter()
    for _ in range(12000):
        items = [1, 2, 3, 4]
        draw_shuffle(rng, items)
        orders[tuple(items)] += 1
    assert len(orders) == 24 and all(380 < n < 620 for n in orders.values())  # every permutation, ~500 each
    assert draw_sample(row_rng(5, "c", "k"), range(10), 4) == draw_sample(row_rng(5, "c", "k"), range(10), 4)
    with pytest.raises(ValueError, match="distinct"):
        draw_sample(rng, "ab", 3)


def test_quota_of_empty_population():
    assert largest_remainder_quotas({}, 10) == {}
