"""Personalised trust from signed feedback (pure: votes in, numbers out; scipy.sparse).

The **endorsement graph** has an edge from a voter to the author of every experience it gave
a standing verdict (feedback records, SPEC.md §8). Per (voter, author) pair the verdicts are
summed (+1 helpful, -1 harmful): the positive part is an endorsement, the negative part a
denunciation. A vote on one's own lesson is dropped: it counts for nothing.

**Trust** is personalised PageRank (Haveliwala 2002), the computation of EigenTrust with
pre-trusted peers (Kamvar et al. 2003), seeded only at this node's **roots** (its own identity
and ``selection.trusted_authors``)::

    t = (1 - d) p + d C^T t + (mass not passed on) p

``p`` is uniform over the roots; ``C[v, a]`` = v's net endorsements of a / v's total net votes
(all its helpful and harmful pairs), so every voter passes on at most the share ``d`` of its
own trust, split over everything it voted on; what it does not pass on (harmful shares,
dangling voters, the ``1 - d``) returns to the roots. Total trust is 1. Then, one step, the
harmful shares: ``u = d N^T t`` (``N`` like ``C`` for the negative parts) is subtracted,
``T = max(0, t - u)``; a second pass scales every voter's votes by the share of its trust it
kept (a denounced voter's votes weigh less) and computes ``t`` and ``u`` again.

**Sybil bound.** Trust is conserved and enters only at the roots: an identity no root reaches
by a chain of helpful verdicts has trust exactly 0, and so have its votes, however many
identities, votes and rings it adds. A region of identities (Sybils, sleepers) can hold no
more trust than flows into it over the edges honest voters gave it ("attack edges"), times
1 / (1 - d) for what it can keep circulating (2x at the default d = 0.5); votes inside the
region add nothing. So it holds at most that mass / ``reference`` established identities.

**Standing.** ``standing(a) = min(1, T(a) / reference)``. ``reference`` is the trust level
above which the most trusted non-root authors hold ``established_mass`` (0.95) of all non-root
trust: a mass-weighted quantile, so splitting a small mass over many identities cannot move it
(it is not a count-based mean or median, which new identities would shift). Roots have
standing 1.

**Established by distinct voters** (``established_voters`` k, 0: off). Trust mass alone
makes a newcomer wait: one verdict passes on ``d`` x its voter's trust / the voter's number of
rated pairs, so an honest newcomer needed ~10-13 verdicts from established voters to reach
``reference`` (benchmarks/trust_robustness.py). An author also has standing 1 when at least k
distinct voters that trust *mass* establishes (T >= reference, or roots) hold a net helpful
verdict on it, its own trust standing is at least ``voters_min_standing`` and no voter the
roots trust rated it harmful (u = 0). Bound: (1) it counts only mass-established voters, and an
author established this way is not one, so it cannot pass it on (no chain: k fooled voters
establish one identity, not a ring behind it); identities nobody trusted reaches count 0 as
before; (2) each such author holds at least ``voters_min_standing`` x reference of trust, so
a region holds at most (its inflow x 1 / (1 - d)) / (voters_min_standing x reference) of
them, 1 / ``voters_min_standing`` (5x) the mass-only bound, and at most (helpful verdicts of
mass-established voters into it) / k; (3) one harmful verdict of a trusted voter withdraws it.
What it costs: k fooled established voters on one sleeper make it established, where trust
mass needed ~10.

Cost: one sparse matrix-vector product per iteration (O(votes)); the iterations converge
geometrically at rate ``d`` (~30 at d = 0.5 to 1e-9). ``benchmarks/trust.py`` measures it at
100k authors and 1M votes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class TrustSettings:
    damping: float = 0.5  # share of a voter's trust its votes pass on (PageRank's d)
    established_mass: float = 0.95  # top-down share of non-root trust whose holders are established
    passes: int = 2  # the second pass lets a denounced voter's own votes weigh less
    # Endorsed by this many distinct voters established by trust mass (0: off), an author
    # with trust standing >= voters_min_standing and no trusted harmful verdict is established
    established_voters: int = 0
    voters_min_standing: float = 0.2
    tol: float = 1e-10  # L1 change that stops the power iteration
    max_iter: int = 200

    def __post_init__(self) -> None:
        if not 0.0 < self.damping < 1.0:
            raise ValueError("damping must be in (0, 1)")
        if not 0.0 < self.established_mass <= 1.0:
            raise ValueError("established_mass must be in (0, 1]")
        if self.passes < 1 or self.max_iter < 1:
            raise ValueError("passes and max_iter must be at least 1")
        if self.established_voters < 0 or not 0.0 <= self.voters_min_standing <= 1.0:
            raise ValueError("established_voters >= 0 and voters_min_standing in [0, 1]")


@dataclass
class VoteTable:
    """Standing verdicts as integer arrays: identities are numbered on first sight.

    ``add`` appends (voter, author of the target, verdict) rows; a pure container the node
    fills page by page from its store."""

    identities: list[bytes] = field(default_factory=list)
    index: dict[bytes, int] = field(default_factory=dict)
    _voters: list[int] = field(default_factory=list)
    _authors: list[int] = field(default_factory=list)
    _verdicts: list[int] = field(default_factory=list)

    def number(self, key: bytes) -> int:
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.identities)
            self.identities.append(key)
        return i

    def add(self, rows: Iterable[tuple[bytes, bytes, int]]) -> None:
        number = self.number
        for voter, author, verdict in rows:
            if verdict not in (-1, 1):
                if verdict == 0:
                    continue  # withdrawn: no edge
                raise ValueError(f"verdict must be -1, 0 or 1, got {verdict!r}")
            self._voters.append(number(voter))
            self._authors.append(number(author))
            self._verdicts.append(verdict)

    def __len__(self) -> int:
        return len(self._verdicts)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.asarray(self._voters, np.int64),
            np.asarray(self._authors, np.int64),
            np.asarray(self._verdicts, np.float64),
        )


@dataclass(frozen=True)
class Graph:
    """The endorsement graph: ``positive`` and ``negative`` (n x n CSR, voter row, author
    column) hold each pair's net helpful and harmful counts; ``out`` each voter's total."""

    n: int
    positive: sp.csr_matrix
    negative: sp.csr_matrix
    out: np.ndarray
    votes: int  # votes counted (self-votes and withdrawn ones excluded)


def build_graph(table: VoteTable) -> Graph:
    """Net (voter, author) pairs from the votes; a vote on one's own lesson is dropped."""
    n = len(table.identities)
    voters, authors, verdicts = table.arrays()
    keep = voters != authors
    voters, authors, verdicts = voters[keep], authors[keep], verdicts[keep]
    net = sp.coo_matrix((verdicts, (voters, authors)), shape=(n, n)).tocsr()
    net.sum_duplicates()
    positive = net.maximum(0).tocsr()
    negative = (-net).maximum(0).tocsr()
    positive.eliminate_zeros()
    negative.eliminate_zeros()
    out = np.asarray(abs(net).sum(axis=1)).ravel()
    return Graph(n, positive, negative, out, int(keep.sum()))


def personalised_pagerank(
    transition: sp.csr_matrix,
    restart: np.ndarray,
    damping: float,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> tuple[np.ndarray, int]:
    """Stationary ``t = d A^T t + (1 - sum(d A^T t)) p`` by power iteration.

    ``transition`` (n x n) has rows summing to at most 1 (sub-stochastic: what a row does not
    pass on returns to ``restart``, a probability vector); returns (t, iterations). t sums to
    1; the error after k iterations is at most d^k."""
    flow_matrix = transition.T.tocsr()
    t = restart.copy()
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - returned
        flow = damping * (flow_matrix @ t)
        new = flow + max(0.0, 1.0 - float(flow.sum())) * restart
        change = float(np.abs(new - t).sum())
        t = new
        if change < tol:
            break
    return t, iterations


@dataclass(frozen=True)
class TrustResult:
    """Every identity's trust as seen from ``roots``; see the module's docstring."""

    identities: list[bytes]
    index: dict[bytes, int]
    trust: np.ndarray  # T: after denunciations, sums to at most 1
    endorsed: np.ndarray  # t: before them
    denounced: np.ndarray  # u
    reference: float  # the trust of an established author (inf: nobody is reached)
    roots: frozenset[bytes]
    root_endorsements: int  # distinct non-root authors the roots endorse (net helpful)
    iterations: int
    votes: int
    voters: int
    authors: int
    # distinct voters established by trust mass (T >= reference, or a root) whose net
    # verdicts on each identity are helpful; None: not counted (established_voters 0)
    endorsers: np.ndarray | None = None
    established_voters: int = 0  # TrustSettings.established_voters
    voters_min_standing: float = 0.2  # TrustSettings.voters_min_standing

    def trust_of(self, key: bytes) -> float:
        i = self.index.get(key)
        return float(self.trust[i]) if i is not None else 0.0

    def mass_standing(self, key: bytes) -> float:
        """min(1, T / reference) in [0, 1] (the trust mass alone); 1 for a root."""
        if key in self.roots:
            return 1.0
        i = self.index.get(key)
        if i is None or not np.isfinite(self.reference):
            return 0.0
        return float(min(1.0, self.trust[i] / self.reference))

    def standing(self, key: bytes) -> float:
        """1 for a root and for an author established by distinct established voters
        (``by_voters``); otherwise ``mass_standing``, min(1, T / reference), in [0, 1]."""
        mass = self.mass_standing(key)
        if mass < 1.0 and self.established_voters > 0 and self.endorsers is not None:
            i = self.index.get(key)
            if (
                i is not None
                and self.endorsers[i] >= self.established_voters
                and mass >= self.voters_min_standing
                and self.trust[i] > 0.0
                and self.denounced[i] <= 0.0
            ):
                return 1.0
        return mass

    def mass_standings(self) -> np.ndarray:
        """``mass_standing`` of every identity, in ``identities`` order."""
        out = np.minimum(1.0, self.trust / self.reference) if np.isfinite(self.reference) else None
        out = np.zeros(len(self.identities)) if out is None else out
        for key in self.roots:
            i = self.index.get(key)
            if i is not None:
                out[i] = 1.0
        return out

    def by_voters(self) -> np.ndarray:
        """Whom distinct established voters establish (bool array, ``identities`` order):
        net helpful verdicts from at least ``established_voters`` distinct voters that trust
        *mass* establishes (T >= reference, or roots; an author established this way does
        not count as such a voter, so it cannot pass it on), trust standing at least
        ``voters_min_standing`` (what a region can hold bounds how many), and no harmful
        verdict from a voter the roots trust."""
        n = len(self.identities)
        if self.established_voters <= 0 or self.endorsers is None:
            return np.zeros(n, bool)
        return (
            (self.endorsers >= self.established_voters)
            & (self.mass_standings() >= self.voters_min_standing)
            & (self.trust > 0.0)
            & (self.denounced <= 0.0)
        )

    def standings(self) -> np.ndarray:
        """``standing`` of every identity, in ``identities`` order."""
        out = self.mass_standings()
        out[self.by_voters()] = 1.0
        return out

    def vouched(self, key: bytes, min_standing: float = 0.0) -> bool:
        """Whether the roots vouch for ``key``: a root, or reached by helpful verdicts from the
        roots with trust standing (``standing``) at least ``min_standing`` and more than 0,
        and denounced by no voter they trust (harmful share u = 0). An identity no root
        reaches (a fresh Sybil, a sleeper ring without attack edges) is never vouched for,
        however many votes it holds; a ring reached through a few fooled voters holds only
        their inflow, split over its identities, which ``min_standing`` leaves out; one
        harmful verdict from a trusted voter withdraws it. Selection lets vouched authors
        answer where no established author does (``SelectionSettings.vouched_alone``)."""
        if key in self.roots:
            return True
        i = self.index.get(key)
        if i is None or self.trust[i] <= 0.0 or self.denounced[i] > 0.0:
            return False
        return self.standing(key) >= min_standing

    def vouched_mask(self, min_standing: float = 0.0) -> np.ndarray:
        """``vouched`` of every identity, in ``identities`` order (bool array)."""
        out = (self.trust > 0.0) & (self.denounced <= 0.0) & (self.standings() >= min_standing)
        for key in self.roots:
            i = self.index.get(key)
            if i is not None:
                out[i] = True
        return out

    @property
    def informative(self) -> bool:
        """Whether the roots' verdicts reach anyone: without, trust tells nobody apart."""
        return bool(np.isfinite(self.reference))


def mass_established_endorsers(
    positive: sp.csr_matrix, trust: np.ndarray, is_root: np.ndarray, reference: np.ndarray
) -> np.ndarray:
    """Per identity (per column for 2-D ``trust``): how many distinct voters established by
    trust mass (T >= ``reference``, or a root) hold a net helpful verdict on it."""
    established = (is_root | ((trust > 0) & (trust >= reference))).astype(np.float64)
    pairs = positive.copy()
    pairs.data[:] = 1.0  # a pair counts once, however many lessons the voter rated
    return np.rint(pairs.T @ established).astype(np.int64)


def established_reference(trust: np.ndarray, is_root: np.ndarray, mass: float) -> float:
    """The trust level t* such that non-root identities with trust >= t* hold ``mass`` of all
    non-root trust (a mass-weighted quantile, from the top). inf when no non-root has any."""
    values = np.sort(trust[~is_root & (trust > 0)])[::-1]
    total = float(values.sum())
    if total <= 0.0:
        return float("inf")
    cumulative = np.cumsum(values)
    k = int(np.searchsorted(cumulative, mass * total * (1 - 1e-12)))
    return float(values[min(k, len(values) - 1)])


def compute_trust(
    table: VoteTable, roots: Iterable[bytes], settings: TrustSettings | None = None
) -> TrustResult:
    """Personalised trust of every identity in ``table`` from ``roots`` (module docstring).

    Raises ValueError without roots. Cost O(passes x iterations x votes)."""
    s = settings or TrustSettings()
    root_keys = frozenset(roots)
    if not root_keys:
        raise ValueError("trust needs at least one root")
    for key in sorted(root_keys):
        table.number(key)
    graph = build_graph(table)
    n = graph.n
    root_idx = np.array(sorted(table.index[k] for k in root_keys), np.int64)
    is_root = np.zeros(n, bool)
    is_root[root_idx] = True
    restart = np.zeros(n)
    restart[root_idx] = 1.0 / len(root_idx)
    scale = np.divide(1.0, graph.out, out=np.zeros(n), where=graph.out > 0)
    keep = np.ones(n)
    iterations = 0
    endorsed = restart
    denounced = np.zeros(n)
    trust = restart
    for _ in range(s.passes):
        weights = sp.diags(scale * keep)
        endorsed, its = personalised_pagerank(
            (weights @ graph.positive).tocsr(), restart, s.damping, s.tol, s.max_iter
        )
        iterations += its
        denounced = s.damping * ((weights @ graph.negative).T @ endorsed)
        trust = np.where(is_root, endorsed, np.maximum(0.0, endorsed - denounced))
        keep = np.divide(trust, endorsed, out=np.zeros(n), where=endorsed > 0)
    root_rows = graph.positive[root_idx]
    endorsed_authors = np.unique(root_rows.indices)
    root_endorsements = int((~is_root[endorsed_authors]).sum()) if len(endorsed_authors) else 0
    reference = established_reference(trust, is_root, s.established_mass)
    endorsers = (
        mass_established_endorsers(graph.positive, trust, is_root, np.float64(reference))
        if s.established_voters > 0
        else None
    )
    return TrustResult(
        identities=table.identities,
        index=table.index,
        trust=trust,
        endorsed=endorsed,
        denounced=denounced,
        reference=reference,
        roots=root_keys,
        root_endorsements=root_endorsements,
        iterations=iterations,
        votes=graph.votes,
        voters=int((graph.out > 0).sum()),
        authors=int(
            np.count_nonzero(
                np.asarray(graph.positive.sum(axis=0)).ravel()
                + np.asarray(graph.negative.sum(axis=0)).ravel()
            )
        ),
        endorsers=endorsers,
        established_voters=s.established_voters,
        voters_min_standing=s.voters_min_standing,
    )


def author_standing_from(
    trust_standing: float,
    time_standing: float,
    *,
    ready: bool,
    unendorsed_cap: float,
) -> float:
    """An author's standing with a node (what selection receives as ``reputation``).

    Before the node's trust graph is ``ready`` (its roots have endorsed too few authors to
    tell anyone apart) time known still counts as it did: max(trust, time). Once ready, time
    alone gives at most ``unendorsed_cap`` (below what probation asks, so age without
    endorsements never makes an author established): max(trust, cap x time)."""
    if not ready:
        return max(trust_standing, time_standing)
    return max(trust_standing, unendorsed_cap * time_standing)


def compute_trust_many(
    table: VoteTable, roots: list[Iterable[bytes]], settings: TrustSettings | None = None
) -> list[TrustResult]:
    """``compute_trust(table, roots[j], settings)`` for every j at once (a simulation's
    thousand nodes, each seeded at its own roots): the graph is built once and every power
    iteration is one sparse x dense product over all root sets. Voters no root set reaches
    by helpful edges have trust 0 in every column and are left out of the products (their
    votes pass nothing on). The same numbers as ``compute_trust`` within ``settings.tol``
    (every column iterates until the slowest has converged). Cost O(passes x iterations x
    reached votes x len(roots)); raises ValueError for an empty root set."""
    s = settings or TrustSettings()
    root_sets = [frozenset(r) for r in roots]
    if any(not r for r in root_sets):
        raise ValueError("trust needs at least one root")
    for keys in root_sets:
        for key in sorted(keys):
            table.number(key)
    graph = build_graph(table)
    n, m = graph.n, len(root_sets)
    restart = np.zeros((n, m))
    is_root = np.zeros((n, m), bool)
    for j, keys in enumerate(root_sets):
        idx = [table.index[k] for k in keys]
        restart[idx, j] = 1.0 / len(idx)
        is_root[idx, j] = True
    # Voters reached from some root over helpful edges; the others pass on nothing.
    reached = restart.any(axis=1)
    frontier = reached.copy()
    while frontier.any():
        step = np.asarray(graph.positive[frontier].sum(axis=0)).ravel() > 0
        frontier = step & ~reached
        reached |= step
    keep_rows = sp.diags(reached.astype(float))
    positive = (keep_rows @ graph.positive).tocsr()
    negative = (keep_rows @ graph.negative).tocsr()
    scale = np.divide(1.0, graph.out, out=np.zeros(n), where=graph.out > 0)
    flow_t = positive.T.tocsr()
    deny_t = negative.T.tocsr()
    keep = np.ones((n, m))
    endorsed = restart
    denounced = np.zeros((n, m))
    trust = restart
    iterations = 0
    for _ in range(s.passes):
        weights = scale[:, None] * keep
        t = restart.copy()
        for its in range(1, s.max_iter + 1):  # noqa: B007 - counted below
            flow = s.damping * (flow_t @ (weights * t))
            new = flow + np.maximum(0.0, 1.0 - flow.sum(axis=0))[None, :] * restart
            change = float(np.abs(new - t).sum(axis=0).max())
            t = new
            if change < s.tol:
                break
        iterations += its
        endorsed = t
        denounced = s.damping * (deny_t @ (weights * endorsed))
        trust = np.where(is_root, endorsed, np.maximum(0.0, endorsed - denounced))
        keep = np.divide(trust, endorsed, out=np.zeros((n, m)), where=endorsed > 0)
    voters = int((graph.out > 0).sum())
    authors = int(
        np.count_nonzero(
            np.asarray(graph.positive.sum(axis=0)).ravel()
            + np.asarray(graph.negative.sum(axis=0)).ravel()
        )
    )
    references = np.array(
        [established_reference(trust[:, j], is_root[:, j], s.established_mass) for j in range(m)]
    )
    endorsers = (
        mass_established_endorsers(graph.positive, trust, is_root, references[None, :])
        if s.established_voters > 0
        else None
    )
    out = []
    for j, keys in enumerate(root_sets):
        root_idx = np.flatnonzero(is_root[:, j])
        endorsed_authors = np.unique(graph.positive[root_idx].indices)
        col = np.ascontiguousarray(trust[:, j])
        out.append(
            TrustResult(
                identities=table.identities,
                index=table.index,
                trust=col,
                endorsed=np.ascontiguousarray(endorsed[:, j]),
                denounced=np.ascontiguousarray(denounced[:, j]),
                reference=float(references[j]),
                roots=keys,
                root_endorsements=int((~is_root[endorsed_authors, j]).sum())
                if len(endorsed_authors)
                else 0,
                iterations=iterations,
                votes=graph.votes,
                voters=voters,
                authors=authors,
                endorsers=np.ascontiguousarray(endorsers[:, j]) if endorsers is not None else None,
                established_voters=s.established_voters,
                voters_min_standing=s.voters_min_standing,
            )
        )
    return out
