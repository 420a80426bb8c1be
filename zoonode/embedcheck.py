"""The embedding check for a world of several backbones (pure: numpy in, verdicts out).

A peer's record carries a 964-byte code (its author's encoder's vector of the text) and the
text; the receiver re-encodes the text with its own encoder and asks whether the code is that
text's. Two statistics per record, both from the code's vector ``s`` (the code decoded and
projected onto the space's basis, unit norm) and the text's re-encoding ``u``:

- ``agreement = s . u``: the absolute cosine. Same-backbone records score 0.96-0.99; a peer
  on another backbone with a fitted head scores far lower (all-mpnet-base-v2: median ~0.73,
  minimum ~0.35), as low as many hijacks, so no threshold on it alone separates the two.
- ``rank``: how many texts of a fixed *reference set* (5,085 shipped texts: the space's
  reference corpus and the fit-head anchors, encoded once by the receiver's own encoder; see
  ``Encoder.references``) the code scores at least as high as the record's own text:
  ``#{j : s . r_j >= s . u}``. An honest code singles out its own text among unrelated ones
  whatever backbone made it (cross-backbone same-text retrieval is near perfect, R@5
  1.000), while a code lifted from another text points at that text's neighbourhood, where
  reference texts outscore the unrelated text the record carries.

:class:`RelativeAgreement` accepts a record when ``rank <= max_rank`` and ``agreement >=
floor`` (a low floor that every honest backbone measured clears by a margin, there only to
stop codes that point nowhere, such as random bits, from winning a rank among references
that point nowhere either). Thresholds come from ``benchmarks/hetero_check.py`` (numbers in
benchmarks/README.md, "Heterogeneous peers"). Cost: one (m x h) product per record, m = 5,085
references, h = 384: ~2 MFLOP, well under a millisecond, next to the ~10 ms re-encoding.

:class:`Punishment` turns failed checks into bans in proportion to the evidence: a failure an
honest backbone may produce a few times in a hundred records is a strike, not a ban; an author
is banned once a binomial test shows its failure rate above ``share`` at confidence
1 - ``alpha`` (and it failed at least ``strikes`` times), or at once for a *decisive* failure
(a code no honest encoder produced: far outside both bounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from zoonode.native.codec import decompress_many
from zoonode.native.head import lower

if TYPE_CHECKING:
    from zoonode.native.space import Space


def code_vectors(codes: Sequence[bytes], head: np.ndarray, v_ref: np.ndarray) -> np.ndarray:
    """Unit vectors (n, h) the 964-byte codes imply in compact coordinates: each code decoded
    to its 7680-d BitDelta vector, projected onto the head's basis (``W^T v_hat``), normalised.
    Raises ``ProtocolError`` for a malformed code (zoonode.protocol.check_code)."""
    if not codes:
        return np.zeros((0, head.shape[1]), np.float32)
    sketch = lower(decompress_many(list(codes), v_ref), head)
    return sketch / np.linalg.norm(sketch, axis=1, keepdims=True)


def agreement_and_rank(
    code_vecs: np.ndarray, text_compact: np.ndarray, references: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per record: ``agreement`` (n,) float32 = ``s_i . u_i`` and ``rank`` (n,) int64 =
    ``#{j : s_i . r_j >= s_i . u_i}`` over the reference vectors ``references`` (m, h).
    Shapes: ``code_vecs`` and ``text_compact`` (n, h), unit rows. Raises ValueError on shape
    mismatch."""
    s = np.asarray(code_vecs, np.float32)
    u = np.asarray(text_compact, np.float32)
    refs = np.asarray(references, np.float32)
    if s.shape != u.shape or s.ndim != 2 or refs.ndim != 2 or refs.shape[1] != s.shape[1]:
        raise ValueError(f"shapes: codes {s.shape}, texts {u.shape}, references {refs.shape}")
    agreement = np.einsum("ij,ij->i", s, u)
    rank = (s @ refs.T >= agreement[:, None]).sum(axis=1)
    return agreement, rank.astype(np.int64)


@dataclass(frozen=True)
class Score:
    """One record's check: ``accept``; ``score`` the statistic tested (the rank; lower is
    better); ``agreement`` the cosine; ``ban`` whether this failure alone is decisive."""

    accept: bool
    score: float
    agreement: float
    ban: bool


@dataclass(frozen=True)
class RelativeAgreement:
    """Accept when the code ranks its own text among the top ``max_rank`` of the reference
    set and agrees with it at least ``floor``; a failure is decisive (``ban``) when the rank
    exceeds ``decisive_rank`` and the agreement is under ``decisive_floor``. A record whose
    agreement reaches ``accept_above`` (the single-backbone check's own bound: honest
    same-backbone codes score 0.96-0.99) is accepted without ranking (its ``score`` is 0),
    which spares the (m x h) product for same-backbone traffic."""

    references: np.ndarray  # (m, h) this node's encoder's vectors of the reference texts
    max_rank: int = 5
    floor: float = 0.1
    decisive_rank: int = 500
    decisive_floor: float = 0.15
    accept_above: float = 0.9

    def scores(self, code_vecs: np.ndarray, text_compact: np.ndarray) -> list[Score]:
        s = np.asarray(code_vecs, np.float32)
        u = np.asarray(text_compact, np.float32)
        if s.shape != u.shape or s.ndim != 2:
            raise ValueError(f"shapes: codes {s.shape}, texts {u.shape}")
        agreement = np.einsum("ij,ij->i", s, u)
        rank = np.zeros(len(s), np.int64)
        todo = np.flatnonzero(agreement < self.accept_above)
        if len(todo):
            _, rank[todo] = agreement_and_rank(s[todo], u[todo], self.references)
        out = []
        for a, r in zip(agreement.tolist(), rank.tolist(), strict=True):
            accept = a >= self.accept_above or (r <= self.max_rank and a >= self.floor)
            decisive = r > self.decisive_rank and a < self.decisive_floor
            out.append(Score(accept, float(r), float(a), (not accept) and decisive))
        return out

    def __call__(
        self, codes: Sequence[bytes], text_compact: np.ndarray, space: Space
    ) -> list[Score]:
        """The node's rule interface: codes and their texts' vectors -> one Score each."""
        return self.scores(code_vectors(codes, space.head, space.v_ref), text_compact)

    def explain(self, score: Score) -> str:
        """A failed record's statistics for the operator's log, each against its bound:
        ``rank 6 > 5, agreement 0.410`` (and ``; decisive`` when it alone bans)."""
        rank = f"rank {int(score.score)}" + (
            f" > {self.max_rank}" if score.score > self.max_rank else ""
        )
        agreement = f"agreement {score.agreement:.3f}" + (
            f" < {self.floor:g}" if score.agreement < self.floor else ""
        )
        decisive = (
            f"; decisive (rank > {self.decisive_rank} and agreement < {self.decisive_floor:g})"
            if score.ban
            else ""
        )
        return f"{rank}, {agreement}{decisive}"


@dataclass(frozen=True)
class AbsoluteAgreement:
    """The single-backbone rule: accept when ``agreement >= threshold``; every failure is
    decisive (honest same-backbone records score 0.96-0.99, so one failure is proof)."""

    threshold: float = 0.9

    def scores(self, code_vecs: np.ndarray, text_compact: np.ndarray) -> list[Score]:
        a = np.einsum("ij,ij->i", np.asarray(code_vecs, np.float32), text_compact)
        return [Score(x >= self.threshold, x, x, x < self.threshold) for x in a.tolist()]

    def __call__(
        self, codes: Sequence[bytes], text_compact: np.ndarray, space: Space
    ) -> list[Score]:
        return self.scores(code_vectors(codes, space.head, space.v_ref), text_compact)

    def explain(self, score: Score) -> str:
        """``agreement 0.410 < 0.9``: a failed record's cosine against the threshold."""
        return f"agreement {score.agreement:.3f} < {self.threshold:g}"


def make_rule(
    kind: str, references: np.ndarray | None, max_rank: int, floor: float, threshold: float
) -> RelativeAgreement | AbsoluteAgreement:
    """The node's embedding rule from its settings (``network.embedding_*``). ``references``
    (m, h) is needed for ``relative`` only. Raises ValueError for an unknown kind."""
    if kind == "absolute":
        return AbsoluteAgreement(threshold)
    if kind == "relative":
        if references is None:
            raise ValueError("the relative embedding check needs reference vectors")
        return RelativeAgreement(np.asarray(references, np.float32), max_rank, floor)
    raise ValueError(f"unknown embedding check {kind!r}")


@dataclass(frozen=True)
class Standing:
    """An author's record on this node: records checked and failures among them."""

    checked: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Punishment:
    """Ban an author once its failed checks prove, beyond reasonable doubt, a failure rate
    above ``share``; or at once after a decisive failure.

    The evidence test is a one-sided binomial test: with ``n`` checked records and ``f``
    failures, ban when ``f >= strikes`` and ``P(X >= f) < alpha`` for ``X ~ Binomial(n,
    share)`` (``scipy.stats.binom.sf``), i.e. an author failing at most ``share`` of the time
    would show this many failures less than once in 1/alpha tries. An honest peer on another
    backbone fails a few records per hundred (paraphrase-MiniLM-L3 with an 800-anchor head:
    ~5 % at ``max_rank`` 5; all-mpnet-base-v2: under 0.5 %), and early bad luck must not ban it:
    the old rule (``strikes`` failures over ``share`` of the checks) banned an honest L3 peer
    after 3 failures in its first 20 records (15 %, but 3 of its first 10). Under this test
    3 of 10 is ``P = 0.32``, no ban, and even 6 of 20 is ``P = 0.20``. A liar whose every
    check fails is banned after 5 (``0.2**5 = 3.2e-4``), or at once when its failure is
    decisive; one failing a share well above ``share`` is banned as its count grows.
    Probabilities for the default ``share`` 0.2 and ``alpha`` 0.001."""

    strikes: int = 3
    share: float = 0.2
    alpha: float = 1e-3

    def update(self, standing: Standing, accepted: bool, decisive: bool) -> tuple[Standing, bool]:
        """The author's new standing after one more checked record, and whether to ban it."""
        new = Standing(standing.checked + 1, standing.failed + (not accepted))
        if accepted:
            return new, False
        if decisive:
            return new, True
        return new, new.failed >= self.strikes and self.evidence(new) < self.alpha

    def explain(self, standing: Standing, banned: bool, decisive: bool) -> str:
        """An author's standing for the operator's log: ``2 failures of 14 checked, not
        banned (P=0.23)``."""
        counts = (
            f"{standing.failed} failure{'s' * (standing.failed != 1)} of {standing.checked} checked"
        )
        if banned and decisive:
            return f"{counts}, banned (a decisive failure)"
        p = self.evidence(standing)
        if banned:
            return f"{counts}, banned (P={p:.2g} < {self.alpha:g})"
        why = (
            f"P={p:.2g}"
            if standing.failed >= self.strikes
            else f"under {self.strikes} strikes, P={p:.2g}"
        )
        return f"{counts}, not banned ({why})"

    def evidence(self, standing: Standing) -> float:
        """P(X >= failed) for X ~ Binomial(checked, share): how likely an author failing at
        most ``share`` of its checks is to show this record (1.0 for no failure)."""
        from scipy.stats import binom  # a second's import; only needed once a check fails

        if standing.failed <= 0:
            return 1.0
        return float(binom.sf(standing.failed - 1, standing.checked, self.share))
