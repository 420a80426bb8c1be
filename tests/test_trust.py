"""Personalised trust (zoonode/trust.py): pure, on small hand-built endorsement graphs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from zoonode.trust import (
    TrustSettings,
    VoteTable,
    author_standing_from,
    compute_trust,
    compute_trust_many,
    established_reference,
)


def k(name: str) -> bytes:
    return name.encode().ljust(32, b".")


ROOT = k("root")
HONEST = [k(f"h{i}") for i in range(6)]


def honest_votes() -> list[tuple[bytes, bytes, int]]:
    """The root endorses every honest author; honest authors endorse each other."""
    rows = [(ROOT, h, 1) for h in HONEST]
    rows += [(a, b, 1) for a in HONEST for b in HONEST if a != b]
    return rows


def trust(rows, roots=(ROOT,), **settings):
    table = VoteTable()
    table.add(rows)
    return compute_trust(table, roots, TrustSettings(**settings))


def test_trust_sums_to_one_and_roots_are_established():
    result = trust(honest_votes())
    assert result.endorsed.sum() == pytest.approx(1.0)
    assert result.standing(ROOT) == 1.0
    assert all(result.standing(h) == 1.0 for h in HONEST)
    assert result.root_endorsements == len(HONEST)
    assert result.votes == len(honest_votes())


def test_a_ring_nobody_trusted_endorses_has_zero_trust_however_large():
    sleepers = [k(f"s{i}") for i in range(200)]
    ring = [(a, b, 1) for a in sleepers for b in sleepers[:20] if a != b]
    ring += [(s, h, -1) for s in sleepers for h in HONEST]  # and they denounce the honest
    base = trust(honest_votes())
    attacked = trust(honest_votes() + ring)
    assert all(attacked.trust_of(s) == 0.0 for s in sleepers)
    assert all(attacked.standing(s) == 0.0 for s in sleepers)
    for h in HONEST:  # untrusted voters' harmful verdicts weigh nothing
        assert attacked.trust_of(h) == pytest.approx(base.trust_of(h), rel=1e-9)


def test_a_region_holds_at_most_its_attack_edges_inflow_over_one_minus_d():
    sleepers = [k(f"s{i}") for i in range(50)]
    ring = [(a, b, 1) for a in sleepers for b in sleepers if a != b]
    attack = [(HONEST[0], sleepers[0], 1)]  # one honest voter was fooled once
    d = 0.5
    result = trust(honest_votes() + ring + attack, damping=d)
    voter = result.index[HONEST[0]]
    out_votes = len(HONEST)  # h0's pairs: 5 honest authors + the sleeper
    inflow = d * result.endorsed[voter] / out_votes
    region = sum(result.endorsed[result.index[s]] for s in sleepers)
    assert 0 < region <= inflow / (1 - d) + 1e-12


def test_a_harmful_verdict_from_a_trusted_voter_lowers_its_target():
    rows = honest_votes()
    before = trust(rows)
    after = trust([*rows, (ROOT, HONEST[1], -1), (ROOT, HONEST[1], -1)])  # net -1 from root
    assert after.trust_of(HONEST[1]) < before.trust_of(HONEST[1])
    assert after.trust_of(HONEST[1]) < after.trust_of(HONEST[2])


def test_a_vote_on_ones_own_lesson_counts_for_nothing():
    rows = honest_votes()
    assert np.allclose(
        trust(rows + [(HONEST[3], HONEST[3], 1)] * 5).trust, trust(rows).trust[: len(HONEST) + 1]
    )


def test_withdrawn_verdicts_are_no_edge_and_bad_verdicts_raise():
    table = VoteTable()
    table.add([(ROOT, HONEST[0], 0)])
    assert len(table) == 0
    with pytest.raises(ValueError):
        table.add([(ROOT, HONEST[0], 2)])
    with pytest.raises(ValueError):
        compute_trust(VoteTable(), [])


def test_a_newcomer_is_established_after_a_few_helpful_verdicts_from_trusted_voters():
    """Six honest authors the root endorses and who endorse each other: the newcomer's
    standing grows with each of their verdicts and is 1 after four; the node's own verdict
    (its agents used the lesson) establishes it at once."""
    newcomer = k("new")
    standings = []
    for n in range(0, 5):
        rows = honest_votes() + [(h, newcomer, 1) for h in HONEST[:n]]
        standings.append(trust(rows).standing(newcomer))
    assert standings[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(standings))
    assert standings[3] < 1.0 and standings[4] == 1.0
    assert trust([*honest_votes(), (ROOT, newcomer, 1)]).standing(newcomer) == 1.0
    assert trust(honest_votes(), established_mass=0.8).standing(HONEST[0]) == 1.0


def test_the_established_reference_is_mass_weighted():
    values = np.array([0.5, 0.35, 0.15])
    is_root = np.array([False, False, False])
    assert established_reference(values, is_root, 0.8) == 0.35
    # Splitting a small mass over many identities does not move it.
    split = np.concatenate([values, np.full(1000, 1e-7)])
    assert established_reference(split, np.zeros(len(split), bool), 0.8) == 0.35
    assert established_reference(np.zeros(3), is_root, 0.8) == float("inf")


def test_standing_from_trust_and_time():
    assert author_standing_from(0.0, 1.0, ready=False, unendorsed_cap=0.2) == 1.0
    assert author_standing_from(0.0, 1.0, ready=True, unendorsed_cap=0.2) == 0.2
    assert author_standing_from(0.7, 1.0, ready=True, unendorsed_cap=0.2) == 0.7


def test_vouched_needs_a_chain_from_the_roots_enough_trust_and_no_trusted_harmful_verdict():
    sleepers = [k(f"s{i}") for i in range(50)]
    ring = [(a, b, 1) for a in sleepers for b in sleepers if a != b]
    alone = trust(honest_votes() + ring)
    assert all(alone.vouched(h) for h in HONEST) and alone.vouched(ROOT)
    assert not any(alone.vouched(s) for s in sleepers)  # no root reaches them
    assert not alone.vouched(k("stranger"))
    # One fooled honest voter: the whole ring is reached (trust > 0), but its inflow is
    # split over 50 identities, far under what one endorsement gives an honest author.
    fooled = trust(honest_votes() + ring + [(HONEST[0], sleepers[0], 1)])
    assert all(fooled.trust_of(s) > 0 for s in sleepers)
    assert all(fooled.vouched(s) for s in sleepers)  # min_standing 0: reached is enough
    assert not any(fooled.vouched(s, 0.2) for s in sleepers[1:])
    assert list(fooled.vouched_mask(0.2)) == [fooled.vouched(i, 0.2) for i in fooled.identities]
    # A harmful verdict from a trusted voter withdraws it.
    rows = [r for r in honest_votes() if r[:2] != (HONEST[1], HONEST[2])]
    denounced = trust([*rows, (HONEST[1], HONEST[2], -1)])
    assert denounced.trust_of(HONEST[2]) > 0 and not denounced.vouched(HONEST[2])


def test_trust_of_many_root_sets_at_once_equals_one_at_a_time():
    rng = np.random.default_rng(5)
    people = [k(f"p{i}") for i in range(40)]
    sleepers = [k(f"s{i}") for i in range(10)]
    rows = [(a, b, 1) for a in sleepers for b in sleepers if a != b]
    rows += [(s, people[j], -1) for s in sleepers for j in rng.choice(40, 5, replace=False)]
    for i, a in enumerate(people):
        rows += [(a, people[j], 1) for j in rng.choice(40, 4, replace=False) if j != i]
        rows += [(a, people[j], -1) for j in rng.choice(40, 1) if j != i]
    rows.append((people[3], sleepers[0], 1))
    roots = [[p] for p in people[:12]] + [[people[0], sleepers[2]]]
    table = VoteTable()
    table.add(rows)
    many = compute_trust_many(table, roots)
    for keys, got in zip(roots, many, strict=True):
        one = trust(rows, roots=keys)
        assert np.allclose(got.trust, one.trust, atol=1e-9)
        assert np.allclose(got.denounced, one.denounced, atol=1e-9)
        assert got.reference == pytest.approx(one.reference, rel=1e-6)
        assert got.root_endorsements == one.root_endorsements
        assert np.array_equal(got.vouched_mask(0.2), one.vouched_mask(0.2))
    with pytest.raises(ValueError, match="root"):
        compute_trust_many(table, [[people[0]], []])
