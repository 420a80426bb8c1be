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


def test_distinct_established_voters_establish_a_newcomer_and_cannot_pass_it_on():
    """``established_voters`` = 3: three honest (mass-established) voters' helpful verdicts
    establish a newcomer that trust mass alone leaves under 1; an author established this
    way is not itself such a voter, so a ring behind it gains nothing; untrusted voters
    count for nothing; one harmful verdict from a trusted voter withdraws it."""
    newcomer = k("new")
    rule = {"established_voters": 3, "voters_min_standing": 0.2}

    def rows_with(n):
        return honest_votes() + [(h, newcomer, 1) for h in HONEST[:n]]

    mass_only = [trust(rows_with(n)).standing(newcomer) for n in range(4)]
    by_voters = [trust(rows_with(n), **rule) for n in range(4)]
    assert mass_only[3] < 1.0  # trust mass alone: not yet
    assert [r.standing(newcomer) for r in by_voters[:3]] == mass_only[:3]
    assert by_voters[3].standing(newcomer) == 1.0
    assert by_voters[3].endorsers[by_voters[3].index[newcomer]] == 3
    assert by_voters[3].mass_standing(newcomer) == pytest.approx(mass_only[3])
    result = by_voters[3]
    assert list(result.standings()) == [result.standing(i) for i in result.identities]
    assert result.vouched(newcomer, 0.2)
    # Off (the default of TrustSettings): the same numbers as trust mass alone.
    off = trust(rows_with(3))
    assert np.array_equal(off.standings(), off.mass_standings())

    # Its own verdict does not count towards another's: with two voters asked, the newcomer
    # (established by two) and one established voter endorse a second author, who stays
    # where trust mass puts it.
    second = k("second")
    passed = trust(
        [*rows_with(2), (newcomer, second, 1), (HONEST[2], second, 1)],
        established_voters=2,
        established_mass=0.8,  # in a graph this small 0.95 reaches down to the newcomers
        voters_min_standing=0.1,
    )
    assert passed.standing(newcomer) == 1.0 and passed.mass_standing(newcomer) < 1.0
    assert passed.endorsers[passed.index[second]] == 1
    assert passed.standing(second) == passed.mass_standing(second) < 1.0

    # Behind it, a ring of 40 endorsing each other: one voter (the newcomer) at most
    # reaches them, so none is established; they share what flows in.
    ring = [k(f"r{i}") for i in range(40)]
    ringed = rows_with(3) + [(newcomer, r, 1) for r in ring]
    ringed += [(a, b, 1) for a in ring for b in ring if a != b]
    behind = trust(ringed, **rule)
    assert behind.standing(newcomer) == 1.0
    assert all(behind.endorsers[behind.index[r]] <= 1 for r in ring)
    assert all(behind.standing(r) < 0.2 for r in ring)

    # 1,000 identities nobody trusted reaches count for nothing.
    sybils = [k(f"x{i}") for i in range(1000)]
    flooded = trust(rows_with(2) + [(x, newcomer, 1) for x in sybils], **rule)
    assert flooded.endorsers[flooded.index[newcomer]] == 2
    assert flooded.standing(newcomer) == pytest.approx(mass_only[2])

    # A harmful verdict from a trusted voter withdraws it.
    judged = trust([*rows_with(3), (HONEST[5], newcomer, -1)], **rule)
    assert judged.standing(newcomer) < 1.0 and not judged.by_voters()[judged.index[newcomer]]

    # The trust standing it must also hold bounds how many a region's trust can carry.
    strict = trust(rows_with(3), established_voters=3, voters_min_standing=0.99)
    assert strict.standing(newcomer) == pytest.approx(mass_only[3])


def test_established_voters_settings_are_checked_and_many_equals_one():
    with pytest.raises(ValueError):
        TrustSettings(established_voters=-1)
    with pytest.raises(ValueError):
        TrustSettings(voters_min_standing=1.5)
    newcomer = k("new")
    rows = honest_votes() + [(h, newcomer, 1) for h in HONEST[:3]]
    roots = [[ROOT], [HONEST[0]], [ROOT, HONEST[5]]]
    table = VoteTable()
    table.add(rows)
    settings = TrustSettings(established_voters=3)
    many = compute_trust_many(table, roots, settings)
    for keys, got in zip(roots, many, strict=True):
        one = trust(rows, roots=keys, established_voters=3)
        assert np.array_equal(got.endorsers, one.endorsers)
        assert np.allclose(got.standings(), one.standings(), atol=1e-9)
