"""The relative embedding check and proportional punishment (zoonode.embedcheck), on real
codes of the shipped encoder; the cross-backbone cases run in tests/test_hetero.py."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from zoonode.embedcheck import (
    Punishment,
    RelativeAgreement,
    Standing,
    agreement_and_rank,
    code_vectors,
)
from zoonode.native.codec import compress_many


def _lessons() -> list[str]:
    path = resources.files("zoonode") / "data" / "lessons.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_rank_counts_references_the_code_prefers():
    refs = np.eye(4, dtype=np.float32)
    s = np.array([[1.0, 0.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]], np.float32)
    u = np.array([[0.8, 0.6, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
    agreement, rank = agreement_and_rank(s, u, refs)
    np.testing.assert_allclose(agreement, [0.8, 0.0], atol=1e-6)
    assert rank.tolist() == [1, 4]  # e0 beats 0.8; e0, e1 beat 0.0, and e2, e3 tie it
    with pytest.raises(ValueError, match="shapes"):
        agreement_and_rank(s, u[:1], refs)


def test_shipped_references_are_this_encoders(encoder):
    from zoonode.native.encoder import reference_texts

    refs = encoder.references()
    texts = reference_texts()
    assert refs.shape == (len(texts), 384) == (5085, 384)
    picked = [0, 1084, 1085, 5084]  # both ends of the reference corpus and of the anchors
    again = encoder.encode_compact([texts[i] for i in picked])
    np.testing.assert_allclose(again, refs[picked], atol=2e-3)  # float16 on disk


def test_relative_rule_accepts_honest_codes_and_rejects_hijacks(encoder):
    texts = _lessons()
    space = encoder.space_info
    u = encoder.encode_compact(texts)
    codes = compress_many(encoder.lift(u), space.v_ref)
    rule = RelativeAgreement(encoder.references())
    honest = rule.scores(code_vectors(codes, space.head, space.v_ref), u)
    assert all(s.accept for s in honest), [s for s in honest if not s.accept]
    assert max(s.score for s in honest) == 0 and min(s.agreement for s in honest) > 0.9
    # Hijack: each text carries the code of the text most unlike it among the lessons.
    sims = u @ u.T
    farthest = sims.argmin(1)
    hijack = rule.scores(code_vectors([codes[j] for j in farthest], space.head, space.v_ref), u)
    assert not any(s.accept for s in hijack)
    # Random sign bits at an honest scale: rejected, and decisive enough to ban at once.
    rng = np.random.default_rng(0)
    rand = [codes[0][:4] + rng.integers(0, 256, 960, dtype=np.uint8).tobytes() for _ in texts]
    scores = rule.scores(code_vectors(rand, space.head, space.v_ref), u)
    assert not any(s.accept for s in scores)


def test_one_failure_never_bans_an_honest_author():
    rule = Punishment(strikes=3, share=0.2)
    standing, banned = rule.update(Standing(), accepted=False, decisive=False)
    assert standing == Standing(1, 1) and not banned
    for _ in range(20):
        standing, banned = rule.update(standing, accepted=True, decisive=False)
        assert not banned
    standing, banned = rule.update(standing, accepted=False, decisive=False)
    assert not banned  # two failures of 22
    standing, banned = rule.update(standing, accepted=False, decisive=False)
    assert not banned and standing == Standing(23, 3)  # 3 of 23: under 20 %


def test_early_bad_luck_of_an_honest_peer_is_no_ban():
    # The case that banned an honest paraphrase-MiniLM-L3 peer under the old share rule:
    # three failures among its first ten checks (30 %, while its true rate is ~5 %).
    rule = Punishment(strikes=3, share=0.2)
    standing, banned = Standing(), False
    for accepted in [False, True, True, False, True, True, True, False, True, True]:
        standing, banned = rule.update(standing, accepted=accepted, decisive=False)
        assert not banned
    assert standing == Standing(10, 3) and rule.evidence(standing) > 0.3


def test_an_honest_peer_failing_5_percent_is_never_banned_in_1000_records():
    rule = Punishment(strikes=3, share=0.2)
    rng = np.random.default_rng(22)
    for _trial in range(50):
        standing = Standing()
        for fails in rng.random(1000) < 0.05:
            standing, banned = rule.update(standing, accepted=not fails, decisive=False)
            assert not banned, standing


def test_repeated_failures_ban_and_a_decisive_one_bans_at_once():
    rule = Punishment(strikes=3, share=0.2)
    standing, banned = Standing(), False
    for i in range(5):
        assert not banned, i  # 4 straight failures: P = 0.2**4 = 1.6e-3, not yet proof
        standing, banned = rule.update(standing, accepted=False, decisive=False)
    assert banned and standing == Standing(5, 5)  # 0.2**5 = 3.2e-4 < 1e-3
    assert rule.update(Standing(50, 0), accepted=False, decisive=True)[1]
    assert not rule.update(Standing(50, 0), accepted=True, decisive=True)[1]


def test_a_liar_mixing_in_honest_records_is_banned_as_its_failures_grow():
    rule = Punishment(strikes=3, share=0.2)
    standing, banned, seen = Standing(), False, 0
    while not banned:
        seen += 1
        standing, banned = rule.update(standing, accepted=seen % 2 == 0, decisive=False)
        assert seen < 60
    assert standing.failed >= 10 and standing.checked <= 30, standing
    assert rule.evidence(Standing(10, 0)) == 1.0


def test_failures_are_explained_against_their_bounds():
    """The checker's log line: rank and agreement each against its bound, and the author's
    failures so far with the binomial evidence."""
    from zoonode.embedcheck import AbsoluteAgreement, Score

    rule = RelativeAgreement(np.eye(4, dtype=np.float32))
    assert rule.explain(Score(False, 6, 0.41, False)) == "rank 6 > 5, agreement 0.410"
    assert rule.explain(Score(False, 2, 0.05, False)) == "rank 2, agreement 0.050 < 0.1"
    assert "decisive" in rule.explain(Score(False, 3000, 0.02, True))
    assert AbsoluteAgreement().explain(Score(False, 0.41, 0.41, True)) == "agreement 0.410 < 0.9"
    p = Punishment()
    assert (
        p.explain(Standing(10, 3), False, False) == "3 failures of 10 checked, not banned (P=0.32)"
    )
    assert p.explain(Standing(5, 5), True, False).endswith("banned (P=0.00032 < 0.001)")
    assert p.explain(Standing(1, 1), True, True).endswith("banned (a decisive failure)")
