"""Geometric median, baselines and robust selection: known cases, breakdown, properties."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zoonode.selection import (
    Candidate,
    SelectionSettings,
    agreement_factor,
    author_slots,
    author_standing,
    coordinate_median,
    geometric_median,
    krum_scores,
    mean,
    medoid,
    multi_krum,
    plain_top_k,
    quantile,
    select,
    similarity_floor,
    similarity_floors,
    trimmed_mean,
)


def test_known_cases():
    # Collinear points: the median is the middle point.
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    np.testing.assert_allclose(geometric_median(pts).median, [1.0, 0.0], atol=1e-3)
    # Square corners: the centre.
    square = np.array([[0, 0], [0, 2], [2, 0], [2, 2]], dtype=float)
    np.testing.assert_allclose(geometric_median(square).median, [1, 1], atol=1e-5)
    # Equilateral triangle: the Fermat point is the centroid.
    tri = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])
    np.testing.assert_allclose(geometric_median(tri).median, tri.mean(0), atol=1e-4)


def test_weights_move_the_median():
    pts = np.array([[0.0, 0.0], [10.0, 0.0]])
    assert geometric_median(pts, np.array([3.0, 1.0])).median[0] == pytest.approx(0, abs=1e-3)


def test_degenerate_inputs():
    one = np.array([[1.0, 2.0, 3.0]])
    result = geometric_median(one)
    np.testing.assert_allclose(result.median, one[0])
    same = np.tile([0.5, -0.5], (7, 1))
    result = geometric_median(same)
    np.testing.assert_allclose(result.median, [0.5, -0.5], atol=1e-6)
    assert result.converged
    for bad in (np.array([[np.nan, 1.0]]), np.zeros((0, 3)), np.array([1.0, 2.0])):
        with pytest.raises(ValueError):
            geometric_median(bad)
    with pytest.raises(ValueError):
        geometric_median(np.eye(2), np.array([-1.0, 1.0]))
    with pytest.raises(ValueError):
        geometric_median(np.eye(2), np.array([0.0, 0.0]))


def test_converges_and_beats_the_mean_objective():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(200, 384))
    result = geometric_median(pts)
    assert result.converged and result.iterations < 100
    objective = lambda z: np.linalg.norm(pts - z, axis=1).sum()  # noqa: E731
    assert objective(result.median) <= objective(pts.mean(0)) + 1e-6
    for _ in range(5):  # no nearby point is better
        nudged = result.median + rng.normal(scale=1e-2, size=384)
        assert objective(result.median) <= objective(nudged) + 1e-3


def test_wide_points_start_from_the_medoid_and_reach_the_same_median():
    """200 x 7680 takes the Gram-matrix path; it must find the median a plain, slow
    Weiszfeld from the coordinate median finds, and the medoid must match brute force."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 2000))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fast = geometric_median(x)
    z = np.median(x, axis=0)
    for _ in range(500):
        b = 1 / np.maximum(np.linalg.norm(x - z, axis=1), 1e-12)
        z = b @ x / b.sum()
    assert np.linalg.norm(fast.median - z) < 1e-4
    assert fast.objective == pytest.approx(np.linalg.norm(x - z, axis=1).mean(), rel=1e-6)
    brute = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2).sum(axis=1)
    assert medoid(x) == int(np.argmin(brute))


@pytest.mark.parametrize("share", [0.1, 0.3, 0.45, 0.49])
def test_breakdown_point_half(share):
    """With < 50 % of points moved arbitrarily far, the median stays near the honest one."""
    rng = np.random.default_rng(1)
    n, d = 200, 64
    honest = rng.normal(size=(n, d))
    honest_median = geometric_median(honest).median
    radius = float(np.max(np.linalg.norm(honest - honest_median, axis=1)))
    bad = int(share * n)
    for far in (1e3, 1e6):
        attacked = honest.copy()
        attacked[:bad] = far * np.ones(d) + rng.normal(size=(bad, d))
        moved = np.linalg.norm(geometric_median(attacked, max_iter=500).median - honest_median)
        # Minsker (2015): with a corrupted share a < 1/2 the median moves at most
        # C_a = 2 (1 - a) / (1 - 2a) times the honest radius, however far the attackers go.
        bound = 2 * (1 - share) / (1 - 2 * share) * radius
        assert moved <= bound, (share, far, moved, bound)
        assert np.linalg.norm(mean(attacked) - honest_median) > moved


def test_majority_attack_does_break_it():
    """Past 50 % nothing holds: the test documents the limit instead of hiding it."""
    rng = np.random.default_rng(2)
    honest = rng.normal(size=(40, 8))
    attacked = np.concatenate([honest, 1e3 + rng.normal(size=(60, 8))])
    assert np.linalg.norm(geometric_median(attacked).median) > 100


def test_baselines():
    pts = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [100.0, 100.0]])
    np.testing.assert_allclose(mean(pts), [25.75, 25.75])
    np.testing.assert_allclose(coordinate_median(pts), [1.5, 1.5])
    np.testing.assert_allclose(trimmed_mean(pts, 0.25), [1.5, 1.5])
    assert medoid(pts) in (1, 2)
    assert 3 not in multi_krum(pts, f=1, m=2)
    assert np.argmax(krum_scores(pts, f=1)) == 3


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64, st.tuples(st.integers(1, 30), st.integers(1, 6)), elements=st.floats(-1e3, 1e3)
    ),
    st.floats(-100, 100),
    arrays(np.float64, 6, elements=st.floats(-10, 10)),
)
def test_properties_translation_and_hull(pts, scale, shift):
    result = geometric_median(pts, tol=1e-10, max_iter=500)
    # Inside the bounding box of the points.
    assert np.all(result.median >= pts.min(0) - 1e-3)
    assert np.all(result.median <= pts.max(0) + 1e-3)
    # Translation equivariance (up to convergence tolerance).
    moved = geometric_median(pts + shift[: pts.shape[1]], tol=1e-10, max_iter=500).median
    tol = 1e-2 * (1 + np.abs(pts).max())
    np.testing.assert_allclose(moved, result.median + shift[: pts.shape[1]], atol=tol)


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def make(i, vec, rel, author, cluster=None, confidence=0.5):
    return Candidate(
        id=bytes([i]) * 32,
        vector=unit(vec).astype(np.float32),
        relevance=rel,
        author=author,
        cluster=i if cluster is None else cluster,
        confidence=confidence,
    )


def test_selection_resists_an_outlier_flood_and_explains_itself():
    rng = np.random.default_rng(3)
    topic = unit(rng.normal(size=32))
    poison_dir = unit(rng.normal(size=32))
    honest = [
        make(i, topic + 0.3 * unit(rng.normal(size=32)), 0.70 + 0.01 * (i % 5), bytes([i]) * 32)
        for i in range(12)
    ]
    # One attacker, 30 near-duplicates of one poison, very relevant: one cluster, one author.
    poison = [
        make(
            100 + j,
            topic + 1.2 * poison_dir + 0.01 * rng.normal(size=32),
            0.95,
            b"\xee" * 32,
            cluster=100,
        )
        for j in range(30)
    ]
    everything = honest + poison
    assert all(c.author == b"\xee" * 32 for c in plain_top_k(everything, 5))
    result = select(topic, everything, SelectionSettings(k=5))
    chosen = [s.candidate for s in result.selected]
    assert len(chosen) == 5
    assert sum(c.author == b"\xee" * 32 for c in chosen) == 0
    assert result.down_weighted["near_duplicate_merged"] == 29
    assert result.groups == 13 and result.authors == 13
    for s in result.selected:
        assert s.relevance >= 0.6 and s.group_size == 1 and -1 <= s.agreement <= 1


def test_floor_and_author_slots():
    """A new author gets one slot while other authors' lessons clear the floor; its other
    lessons fill what is left, so slots order the answer without shortening it."""
    topic = unit(np.ones(8))
    rng = np.random.default_rng(2)
    newcomer = [
        replace(
            make(i, topic + 0.3 * unit(rng.normal(size=8)), 0.9 - 0.01 * i, b"a" * 32),
            reputation=0.5,
        )
        for i in range(4)
    ]
    other = replace(make(8, topic + 0.3 * unit(rng.normal(size=8)), 0.7, b"c" * 32), reputation=0.5)
    low = [make(10, topic, 0.3, b"b" * 32)]
    result = select(topic, [*newcomer, other, *low], SelectionSettings(k=2, alpha=0))
    assert {s.candidate.id for s in result.selected} == {newcomer[0].id, other.id}
    assert result.down_weighted["below_similarity_floor"] == 1
    assert result.down_weighted["author_slot_limit"] == 3
    assert result.floor == 0.6
    filled = select(topic, [*newcomer, other, *low], SelectionSettings(k=3, alpha=0))
    assert {s.candidate.id for s in filled.selected} == {newcomer[0].id, newcomer[1].id, other.id}
    assert [s.score for s in filled.selected] == sorted(
        (s.score for s in filled.selected), reverse=True
    )
    assert select(topic, low).selected == []


def test_similarity_floor_follows_a_weak_best_candidate_down_to_its_minimum():
    assert similarity_floor(0.9, 0.4, 0.3, 0.1) == 0.4  # a clear best: the fixed floor
    assert similarity_floor(0.5, 0.4, 0.3, 0.1) == 0.4
    assert similarity_floor(0.45, 0.4, 0.3, 0.1) == pytest.approx(0.35)
    assert similarity_floor(0.35, 0.4, 0.3, 0.1) == 0.3  # never under floor_min
    assert similarity_floor(0.1, 0.4, 0.3, 0.1) == 0.3
    assert similarity_floor(0.35, 0.4, None, 0.1) == 0.4  # no minimum: the fixed floor
    assert similarity_floor(0.35, 0.4, 0.4, 0.1) == 0.4
    assert similarity_floor(0.35, 0.4, 0.3, 0.0) == 0.35  # margin 0: the best always answers


@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=20),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 0.5),
)
def test_similarity_floor_properties(rels, lo, hi, margin):
    lo, hi = min(lo, hi), max(lo, hi)
    best = max(rels)
    floor = similarity_floor(best, hi, lo, margin)
    assert lo <= floor <= hi
    # More candidates can only raise it, never lower it (an attacker cannot lower the floor).
    assert similarity_floor(max(best, 0.99), hi, lo, margin) >= floor
    # Where the best candidate reaches floor_min, it clears the floor: no empty answer.
    if best >= lo:
        assert best >= floor


def test_author_slots():
    assert author_slots(1.0, 5, 1, 0) == 5  # established: up to k
    assert author_slots(1.0, 10, 1, 0) == 10
    assert author_slots(1.0, 5, 1, 2) == 2
    assert author_slots(1.0, 5, 1, 9) == 5
    assert author_slots(0.99, 5, 1, 0) == 1  # not yet established: per_author
    assert author_slots(0.0, 5, 2, 0) == 2


def test_one_established_author_fills_k_slots_and_a_weak_query_still_answers():
    """A node whose lessons all share its own identity (standing 1) answers with k of them;
    a query whose best lesson sits under the fixed floor still gets it."""
    rng = np.random.default_rng(4)
    topic = unit(rng.normal(size=32))
    own = [
        make(i, topic + 0.4 * unit(rng.normal(size=32)), 0.8 - 0.02 * i, b"o" * 32)
        for i in range(12)
    ]
    settings = SelectionSettings(k=5, min_similarity=0.4, floor_min=0.3, newcomer_weight=0.2)
    result = select(topic, own, settings)
    assert len(result.selected) == 5
    assert "author_slot_limit" not in result.down_weighted
    assert len(select(topic, own, replace(settings, k=10)).selected) == 10
    weak = [replace(c, relevance=0.36 - 0.01 * i) for i, c in enumerate(own[:4])]
    answer = select(topic, weak, settings)
    assert answer.floor == pytest.approx(0.3)
    assert len(answer.selected) == 4
    assert select(topic, weak, replace(settings, floor_min=None)).selected == []  # fixed 0.4


def test_author_standing_grows_with_time_known_and_cannot_be_negative():
    day = 86_400_000
    now = 100 * day
    assert author_standing(None, now, 7 * day) == 0.0  # never seen: a newcomer
    assert author_standing(now, now, 7 * day) == 0.0
    assert author_standing(now - 3.5 * day, now, 7 * day) == pytest.approx(0.5)
    assert author_standing(now - 30 * day, now, 7 * day) == 1.0
    assert author_standing(now + day, now, 7 * day) == 0.0  # a clock step back
    assert author_standing(now, now, 0) == 1.0  # maturity 0: everyone is established


def test_fresh_identities_lose_to_established_authors():
    """Colluders outnumber the honest authors near the query and copy its wording: without
    standing they take the top slots; fresh identities (standing 0) do not."""
    rng = np.random.default_rng(5)
    topic = unit(rng.normal(size=32))
    honest = [
        make(i, topic + 0.8 * unit(rng.normal(size=32)), 0.55, bytes([i]) * 32) for i in range(6)
    ]
    poison = [
        make(50 + j, topic + 0.2 * unit(rng.normal(size=32)), 0.9, bytes([50 + j]) * 32)
        for j in range(10)
    ]
    fresh = [replace(c, reputation=0.0) for c in poison]
    blind = select(topic, honest + poison, SelectionSettings(k=5, min_similarity=0.4))
    assert all(s.candidate.id in {c.id for c in poison} for s in blind.selected)
    aware = select(
        topic, honest + fresh, SelectionSettings(k=5, min_similarity=0.4, newcomer_weight=0.2)
    )
    assert len(aware.selected) == 5
    assert not {s.candidate.id for s in aware.selected} & {c.id for c in poison}
    assert aware.down_weighted["low_reputation"] == 10
    # With nothing established to offer, newcomers still answer: down-weighted, not banned.
    alone = select(topic, fresh, SelectionSettings(k=5, min_similarity=0.4, newcomer_weight=0.2))
    assert len(alone.selected) == 5


def test_newcomers_on_probation_do_not_fill_slots_established_authors_leave():
    """Two established lessons answer; ten fresh identities must not fill the other three
    slots. An author close to maturity with a strong match still answers."""
    rng = np.random.default_rng(9)
    topic = unit(rng.normal(size=32))
    honest = [
        make(i, topic + 0.8 * unit(rng.normal(size=32)), 0.55, bytes([i]) * 32) for i in range(2)
    ]
    fresh = [
        replace(
            make(50 + j, topic + 0.2 * unit(rng.normal(size=32)), 0.9, bytes([50 + j]) * 32),
            reputation=0.0,
        )
        for j in range(10)
    ]
    maturing = replace(
        make(90, topic + 0.3 * unit(rng.normal(size=32)), 0.9, b"m" * 32), reputation=0.95
    )
    settings = SelectionSettings(k=5, min_similarity=0.4, newcomer_weight=0.2)
    result = select(topic, honest + fresh + [maturing], settings)
    chosen = {s.candidate.id for s in result.selected}
    assert chosen == {c.id for c in honest} | {maturing.id}
    assert result.down_weighted["newcomer_on_probation"] == 10
    # Alone, the fresh ones answer by default; not when newcomers may not answer alone.
    assert len(select(topic, fresh, settings).selected) == 5
    strict = replace(settings, newcomers_alone=False)
    assert select(topic, fresh, strict).selected == []
    assert [s.candidate.id for s in select(topic, [*fresh, maturing], strict).selected] == [
        maturing.id
    ]
    # Standing unused (newcomer weight 1): no probation, the fresh lessons answer.
    plain = select(topic, honest + fresh, SelectionSettings(k=5, min_similarity=0.4))
    assert len(plain.selected) == 5
    assert "newcomer_on_probation" not in plain.down_weighted


def test_vouched_authors_answer_where_no_established_author_does():
    """Newcomers may not answer alone (an established network), but an author the node's
    trust vouches for does, down-weighted, where nothing established answers; where an
    established author answers it stays on probation, and without ``vouched_alone`` (or
    unvouched, like a sleeper at the unendorsed cap) it is held back as before."""
    rng = np.random.default_rng(4)
    topic = unit(rng.normal(size=32))
    capped = [  # standing 0.2: age alone, once trust is ready
        replace(
            make(50 + j, topic + 0.2 * unit(rng.normal(size=32)), 0.9, bytes([50 + j]) * 32),
            reputation=0.2,
        )
        for j in range(4)
    ]
    reached = [replace(c, vouched=True) for c in capped[:2]]
    strict = SelectionSettings(k=5, min_similarity=0.4, newcomer_weight=0.2, newcomers_alone=False)
    assert select(topic, capped, strict).selected == []
    result = select(topic, reached + capped[2:], strict)
    assert {s.candidate.id for s in result.selected} == {c.id for c in reached}
    assert result.down_weighted["vouched_alone"] == 2
    assert result.down_weighted["newcomer_on_probation"] == 2
    assert select(topic, reached, replace(strict, vouched_alone=False)).selected == []
    established = make(1, topic + 0.8 * unit(rng.normal(size=32)), 0.55, b"e" * 32)
    held = select(topic, [established, *reached], strict)
    assert [s.candidate.id for s in held.selected] == [established.id]


def test_a_fresh_variant_does_not_speak_for_an_established_group():
    topic = unit(np.ones(8))
    established = make(1, topic, 0.7, b"h" * 32, cluster=7)
    variant = replace(make(2, topic, 0.8, b"s" * 32, cluster=7), reputation=0.0)
    result = select(topic, [established, variant], SelectionSettings(k=1, newcomer_weight=0.2))
    assert result.selected[0].candidate.id == established.id


def test_agreement_factor_only_penalises_under_the_gate():
    assert agreement_factor(0.8, None, 2.0) == pytest.approx(0.64)
    assert agreement_factor(0.8, 0.5, 2.0) == 1.0  # above the gate: nothing lost
    assert agreement_factor(0.25, 0.5, 2.0) == pytest.approx(0.25)
    assert agreement_factor(-0.3, 0.5, 2.0) == 0.0
    assert agreement_factor(0.25, 0.5, 0.0) == 1.0


def test_near_duplicates_answer_side_by_side_unless_nearly_identical():
    """Members of one near-duplicate cluster (cos >= 0.9) keep one vote in the centre but
    may each answer while their cosine stays under answer_duplicate; copies do not."""
    rng = np.random.default_rng(6)
    topic = unit(rng.normal(size=64))
    base = unit(topic + 0.3 * unit(rng.normal(size=64)))
    sibling = unit(base + 0.35 * unit(rng.normal(size=64)))  # cos ~0.94: a distinct lesson
    copy = unit(base + 0.02 * unit(rng.normal(size=64)))  # cos ~0.9998: the same lesson
    assert 0.9 <= float(base @ sibling) < 0.95 and float(base @ copy) > 0.99
    same_cluster = [
        make(1, base, 0.8, b"o" * 32, cluster=1),
        make(2, sibling, 0.78, b"o" * 32, cluster=1),
        make(3, copy, 0.79, b"o" * 32, cluster=1),
    ]
    others = [
        make(10 + i, topic + 0.5 * unit(rng.normal(size=64)), 0.5, bytes([i]) * 32)
        for i in range(4)
    ]
    settings = SelectionSettings(k=3, min_similarity=0.4, answer_duplicate=0.95)
    result = select(topic, same_cluster + others, settings)
    chosen = {s.candidate.id for s in result.selected}
    assert {same_cluster[0].id, same_cluster[1].id} <= chosen and same_cluster[2].id not in chosen
    assert result.down_weighted["near_duplicate_in_answer"] == 1
    assert result.groups == 5  # the cluster still votes once
    one_per_group = select(topic, same_cluster + others, replace(settings, answer_duplicate=None))
    assert len({s.candidate.cluster for s in one_per_group.selected}) == 3


def test_near_copies_fill_an_answer_that_would_be_short():
    """k answers whenever k candidates clear the floor: an established author's near-copy of
    a lesson already in the answer, from an author already answering, comes last, and only
    where nothing else clears the floor."""
    rng = np.random.default_rng(7)
    topic = unit(rng.normal(size=64))
    base = unit(topic + 0.3 * unit(rng.normal(size=64)))
    copy = unit(base + 0.02 * unit(rng.normal(size=64)))
    other = unit(topic + 0.5 * unit(rng.normal(size=64)))
    cands = [
        make(1, base, 0.8, b"o" * 32, cluster=1),
        make(2, copy, 0.79, b"o" * 32, cluster=1),
        make(3, other, 0.5, b"p" * 32, cluster=2),
    ]
    settings = SelectionSettings(k=3, min_similarity=0.4, answer_duplicate=0.95)
    result = select(topic, cands, settings)
    assert [s.candidate.id for s in result.selected] == [cands[0].id, cands[2].id, cands[1].id]
    assert result.down_weighted.get("near_duplicate_in_answer", 0) == 0
    short = select(topic, cands, replace(settings, k=2))  # room for two: the copy stays out
    assert [s.candidate.id for s in short.selected] == [cands[0].id, cands[2].id]
    assert short.down_weighted["near_duplicate_in_answer"] == 1
    # A fresh identity's copy never fills (Sybil variants of one poison are such copies).
    fresh = [cands[0], replace(cands[1], reputation=0.0), cands[2]]
    sybil = select(topic, fresh, replace(settings, newcomer_weight=1.0))
    assert [s.candidate.id for s in sybil.selected] == [cands[0].id, cands[2].id]
    # Nor an established copy by an author not already answering (aged Sybil identities).
    other = [cands[0], replace(cands[1], author=b"q" * 32), cands[2]]
    aged = select(topic, other, settings)
    assert [s.candidate.id for s in aged.selected] == [cands[0].id, cands[2].id]


@settings(max_examples=300, deadline=None)
@given(
    values=arrays(
        np.float64,
        st.integers(1, 300),
        elements=st.floats(-1.0, 1.0, allow_nan=False, allow_subnormal=False),
    ),
    q=st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]), st.floats(0.0, 1.0)),
)
def test_quantile_is_numpys_to_the_bit(values, q):
    """Selection's gate must not move when its quantile gets cheaper: same float, every time
    (ties, one value, both ends, q exactly at an index)."""
    assert quantile(values, q) == float(np.quantile(values, q))


def test_a_fresh_lure_cannot_raise_the_floor_over_weak_established_answers():
    """Two floors (similarity_floors): established lessons are kept against the floor of the
    best established one (0.37: 0.3), newer authors' against the floor of all (a fresh
    identity's 0.85: 0.4). The lure neither empties the answer ("never") nor answers alone
    ("bootstrap"): before, one floor of 0.4 dropped every established answer (issue 25
    review)."""
    rng = np.random.default_rng(8)
    topic = unit(rng.normal(size=32))
    own = [
        replace(
            make(i, topic + 0.5 * unit(rng.normal(size=32)), 0.37 - 0.01 * i, b"o" * 32),
            reputation=1.0,
        )
        for i in range(6)
    ]
    lure = replace(make(9, topic, 0.85, b"f" * 32), reputation=0.0)
    settings = SelectionSettings(
        k=5, min_similarity=0.4, floor_min=0.3, floor_margin=0.1, newcomer_weight=0.2
    )
    assert similarity_floors([*own, lure], settings) == (0.4, pytest.approx(0.3))
    assert similarity_floors([lure], settings) == (0.4, 0.4)  # none established: one floor
    assert similarity_floors([], settings) == (0.3, 0.3)
    for alone in (False, True):
        sel = select(topic, [*own, lure], replace(settings, newcomers_alone=alone))
        assert sel.floor == 0.4 and sel.established_floor == pytest.approx(0.3)
        authors = [s.candidate.author for s in sel.selected]
        assert len(authors) == 5 and authors.count(b"o" * 32) >= 4, (alone, sel.down_weighted)
        assert sel.down_weighted.get("newcomer_on_probation", 0) == (0 if alone else 1)
        # Fewer established answers than k: the lure may answer beside them, never alone.
        few = select(topic, [*own[:2], lure], replace(settings, newcomers_alone=alone))
        got = {s.candidate.id for s in few.selected}
        assert {c.id for c in own[:2]} <= got and got <= {c.id for c in [*own[:2], lure]}
        assert (lure.id in got) == alone


def test_a_just_met_peers_strong_lesson_answers_beside_weak_established_ones():
    """The other side (tests/test_hetero.py): a peer this node has just met (standing 0.1)
    matches a query at 0.7, the node's own lessons at 0.33-0.35. While newcomers may answer
    where no established lesson clears the floor of all candidates (0.4), the peer's lesson
    is not on probation behind the own weak ones: both answer. Where an established lesson
    does clear it (0.45), probation holds: a newer author's standing-weighted relevance
    (0.7 x 0.28) must clear it too."""
    rng = np.random.default_rng(9)
    topic = unit(rng.normal(size=32))
    own = [
        replace(
            make(i, topic + 0.6 * unit(rng.normal(size=32)), 0.35 - 0.01 * i, b"o" * 32),
            reputation=1.0,
        )
        for i in range(3)
    ]
    peer = replace(make(9, topic + 0.2 * unit(rng.normal(size=32)), 0.7, b"p" * 32), reputation=0.1)
    settings = SelectionSettings(
        k=5, min_similarity=0.4, floor_min=0.3, floor_margin=0.1, newcomer_weight=0.2
    )
    sel = select(topic, [*own, peer], settings)
    got = {s.candidate.id for s in sel.selected}
    assert got == {peer.id, *(c.id for c in own)}, sel.down_weighted
    assert "newcomer_on_probation" not in sel.down_weighted
    strong = replace(own[0], relevance=0.45)
    sel = select(topic, [strong, *own[1:], peer], settings)
    assert peer.id not in {s.candidate.id for s in sel.selected}
    assert sel.down_weighted["newcomer_on_probation"] == 1
    assert sel.floor == 0.4 and sel.established_floor == pytest.approx(0.35)
    assert [c.candidate.id for c in sel.selected] == [strong.id]  # 0.34, 0.33 < 0.35


@given(
    st.lists(
        st.tuples(st.floats(-0.2, 1.0), st.sampled_from([0.0, 0.5, 1.0])), min_size=1, max_size=12
    ),
    st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_the_established_floor_bounds_what_select_keeps(cands, alone):
    """What the knowledge base may cut early (query.floor_of): any candidate under the
    established floor of a subset is dropped by select on the whole set too; select keeps
    nothing under either of its floors, and never reports the established floor above the
    other."""
    rng = np.random.default_rng(0)
    topic = unit(rng.normal(size=8))
    pool = [
        replace(make(i, topic + unit(rng.normal(size=8)), rel, bytes([i % 3]) * 32), reputation=rep)
        for i, (rel, rep) in enumerate(cands)
    ]
    s = SelectionSettings(
        k=5,
        min_similarity=0.4,
        floor_min=0.3,
        floor_margin=0.1,
        newcomer_weight=0.2,
        newcomers_alone=alone,
    )
    sel = select(topic, pool, s)
    assert sel.established_floor <= sel.floor
    for chosen in sel.selected:
        c = chosen.candidate
        assert c.relevance >= (sel.established_floor if c.reputation >= 1 else sel.floor)
    _, sub_floor = similarity_floors(pool[: len(pool) // 2 + 1], s)
    ours = [c for c in pool[: len(pool) // 2 + 1] if c.reputation >= 1]
    if ours:  # an established one among the first: its floor is a lower bound for all
        assert sub_floor <= sel.established_floor <= sel.floor
