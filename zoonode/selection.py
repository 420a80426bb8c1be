"""Byzantine-robust experience selection (pure: numpy in, numbers out, no I/O).

A query's candidates come from the replica. Poisoned and Sybil-flooded experiences must not
win, so selection does not simply take the top k by relevance:

1. **Floor** (``similarity_floor``): candidates below the query's similarity floor are
   dropped. The floor is ``min_similarity`` (DSO: 0.6; this space: 0.4), lowered for a query
   whose best candidate is weak, to ``floor_margin`` below it and never under ``floor_min``:
   no empty answer while some lesson reaches ``floor_min``. Two floors
   (``similarity_floors``): established authors' lessons are kept against the floor of the
   best established one, newer authors' against the floor of the best of all, so a fresh
   identity's strong lesson cannot raise the floor over weak established answers.
2. **Groups, so that volume buys no votes**: one group per near-duplicate cluster; every
   author's total weight is capped (``author_cap``) and shared among the groups it appears in,
   so 1000 copies, or 1000 Sybil identities behind one cluster, still weigh one vote, and one
   author with many distinct lessons weighs no more than one author with one.
3. **Robust centre**: the weighted geometric median of the groups' representatives, computed by
   smoothed Weiszfeld (RFA, Pillutla et al. 2019). Its breakdown point is 1/2: while honest
   weight is the majority, no placement of the rest moves it far from the honest centre.
4. **Ranking**: ``score = relevance * agreement_factor * confidence factor * standing
   factor``. ``agreement_factor`` is ``(agreement / gate) ** alpha`` capped at 1, the gate
   being a low quantile (``agreement_quantile``) of the groups' agreement (cosine) with the
   robust centre: outliers pushed towards the query but away from the consensus lose, while
   the ordinary spread of honest lessons around a query keeps its plain relevance order (the
   ungated ``agreement ** 2`` cost a sixth of plain top-k's recall on clean data,
   benchmarks/selection_clean.py). Answer **slots**: an established author (standing 1) may
   fill all k, an author not yet established ``per_author`` while others' lessons remain
   (``author_slots``); members of one near-duplicate group answer side by side while their
   cosine with a lesson already in the answer stays under ``answer_duplicate`` (copies and
   Sybil variants, cos >= 0.976 in benchmarks/robustness.py, do not).

**Standing** (``author_standing``) is the information the embedding cannot carry: how long this
node has known the author. It grows from 0 for an identity whose first lesson this node
accepted just now to 1 after ``maturity`` (the node's own clock, so it cannot be backdated),
and weighs both the author's vote in the centre and its score (``newcomer_weight`` is what a
brand-new author's score keeps). Where an established author (standing 1) answers above the
floor of all candidates, newer authors are on *probation*: their standing-weighted relevance
must clear that floor too, so
fresh identities cannot fill the slots that established lessons leave empty. Where nobody
established answers, newer authors answer (down-weighted) only if ``newcomers_alone``; the node
turns that off once it has known some peer for the maturity (``selection.newcomers_alone =
"bootstrap"``), so a node that has just joined still hears its peers. Fresh identities, the cheap
resource of Sybil floods and of crafted one-off poison, then lose to established authors; identities
aged past the maturity ("sleepers") are not stopped by it (README, robustness table).

Baselines for comparison live here too: plain top-k, mean, coordinate-wise median, trimmed
mean, Krum / Multi-Krum and the medoid. The seed DSO paper's "geometric median" (its eq. 13)
picks the candidate minimising the summed distance to the others: that is the *medoid*, which
must be one of the inputs, not the geometric median, which need not be.

Vectors are the compact coordinates of the canonical space (the head is orthonormal, so every
distance and inner product equals the 7680-d one).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


# --------------------------------------------------------------------------------------------
# Aggregators
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MedianResult:
    median: np.ndarray
    weights: np.ndarray  # final Weiszfeld weight of each point (w_i / max(nu, d_i)), normalised
    iterations: int
    converged: bool
    objective: float  # sum_i w_i ||median - x_i||


def _check_points(points: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (n, d) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("points contain NaN or inf")
    if weights is None:
        w = np.ones(x.shape[0])
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (x.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be n finite non-negative numbers")
        if w.sum() <= 0:
            raise ValueError("weights sum to zero")
    return x, w / w.sum()


def _distances_from_products(
    sq: np.ndarray, xz: np.ndarray, zz: float, direct: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """||x_i - z|| from ||x_i||^2, x_i . z and ||z||^2 (no n x d temporary); the few that
    cancel badly (points within ~1e-3 of z) are recomputed by ``direct(mask)``."""
    d2 = sq - 2.0 * xz + zz
    d = np.sqrt(np.maximum(d2, 0.0))
    close = d2 < 1e-6 * (sq + zz)
    if close.any():
        d[close] = direct(close)
    return d


def _distances(x: np.ndarray, sq: np.ndarray, z: np.ndarray) -> np.ndarray:
    return _distances_from_products(
        sq, x @ z, float(z @ z), lambda close: np.linalg.norm(x[close] - z, axis=1)
    )


def geometric_median(
    points: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    nu: float = 1e-6,
    tol: float = 1e-7,
    max_iter: int = 100,
) -> MedianResult:
    """argmin_z sum_i w_i ||z - x_i|| by smoothed Weiszfeld.

    Each step is z <- sum_i b_i x_i / sum_i b_i with b_i = w_i / max(nu, ||z - x_i||); the
    smoothing ``nu`` keeps a step defined when z lands on a point. Stops when a step moves z by
    less than ``tol * (1 + ||z||)`` (the objective is flat near the optimum, so its change is a
    poor stopping rule). It starts from a robust point, not the mean (RFA's start): under
    attack the mean starts far away and costs many iterations. That point is the
    coordinate-wise median, or, where points are wider than they are many (200 x 7680), the
    weighted medoid, and the iterations then run on the Gram matrix: a column-wise median of
    7680 columns alone costs ~40 ms (benchmarks/selection_speed.py).
    """
    x, w = _check_points(points, weights)
    if x.shape[1] > x.shape[0]:
        return _weiszfeld_in_span(x, w, nu, tol, max_iter)
    sq = np.einsum("ij,ij->i", x, x)
    z = np.median(x, axis=0)
    beta = w
    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported below
        dist = _distances(x, sq, z)
        beta = w / np.maximum(dist, nu)
        z_new = beta @ x / beta.sum()
        step = float(np.linalg.norm(z_new - z))
        z = z_new
        if step <= tol * (1.0 + float(np.linalg.norm(z))):
            converged = True
            break
    objective = float(w @ _distances(x, sq, z))
    return MedianResult(
        z.astype(np.float32),
        (beta / beta.sum()).astype(np.float32),
        iterations,
        converged,
        objective,
    )


def _weiszfeld_in_span(
    x: np.ndarray, w: np.ndarray, nu: float, tol: float, max_iter: int
) -> MedianResult:
    """Weiszfeld for points wider than they are many. Every iterate is a convex combination
    ``a`` of the points (the first is the medoid), so distances and steps come from the n x n
    Gram matrix and a step costs O(n^2) instead of O(n d)."""
    gram = x @ x.T
    sq = np.diag(gram).copy()
    a = np.zeros(len(x))
    a[_medoid_from_gram(gram, w)] = 1.0

    def distances(a: np.ndarray) -> np.ndarray:
        ga = gram @ a
        return _distances_from_products(
            sq, ga, float(a @ ga), lambda close: np.linalg.norm(x[close] - a @ x, axis=1)
        )

    beta = w
    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported below
        dist = distances(a)
        beta = w / np.maximum(dist, nu)
        a_new = beta / beta.sum()
        delta = a_new - a
        step = float(np.sqrt(max(float(delta @ gram @ delta), 0.0)))
        a = a_new
        if step <= tol * (1.0 + float(np.sqrt(max(float(a @ gram @ a), 0.0)))):
            converged = True
            break
    dist = distances(a)
    return MedianResult(
        (a @ x).astype(np.float32),
        (beta / beta.sum()).astype(np.float32),
        iterations,
        converged,
        float(w @ dist),
    )


def mean(points: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    x, w = _check_points(points, weights)
    return (w @ x).astype(np.float32)


def coordinate_median(points: np.ndarray) -> np.ndarray:
    x, _ = _check_points(points, None)
    return np.median(x, axis=0).astype(np.float32)


def trimmed_mean(points: np.ndarray, trim: float = 0.2) -> np.ndarray:
    """Per coordinate, drop the ``trim`` share at each end, average the rest."""
    x, _ = _check_points(points, None)
    if not 0 <= trim < 0.5:
        raise ValueError("trim must be in [0, 0.5)")
    cut = int(np.floor(trim * x.shape[0]))
    s = np.sort(x, axis=0)
    return s[cut : x.shape[0] - cut].mean(axis=0).astype(np.float32)


def krum_scores(points: np.ndarray, f: int) -> np.ndarray:
    """Krum (Blanchard et al. 2017): sum of squared distances to the n - f - 2 nearest."""
    x, _ = _check_points(points, None)
    n = x.shape[0]
    d2 = np.square(np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2))
    m = max(1, n - f - 2)
    return np.sort(d2, axis=1)[:, 1 : m + 1].sum(axis=1)


def multi_krum(points: np.ndarray, f: int, m: int) -> np.ndarray:
    """Indices of the ``m`` points with the lowest Krum scores (Krum itself is m = 1)."""
    return np.argsort(krum_scores(points, f), kind="stable")[:m]


def medoid(points: np.ndarray) -> int:
    """Index of the input point with the least summed distance to all others (DSO eq. 13)."""
    x, w = _check_points(points, None)
    return _medoid_from_gram(x @ x.T, w)


def _medoid_from_gram(gram: np.ndarray, w: np.ndarray) -> int:
    """The input point of least weighted summed distance, from the Gram matrix (n x n, not an
    n x n x d difference tensor)."""
    sq = np.diag(gram)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0))
    return int(np.argmin(d @ w))


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    id: bytes
    vector: np.ndarray  # compact coordinates, unit norm
    relevance: float  # cosine with the query
    author: bytes
    cluster: int  # near-duplicate cluster id (from the store)
    confidence: float = 0.5
    reputation: float = 1.0  # in [0, 1]; 1 = no information against the author
    cluster_size: int = 1  # active members of its near-duplicate cluster in the store
    # The node's trust vouches for the author (trust.TrustResult.vouched: reached by helpful
    # verdicts from its roots, denounced by none it trusts), established or not.
    vouched: bool = False


@dataclass(frozen=True)
class Selected:
    candidate: Candidate
    score: float
    relevance: float
    agreement: float  # cosine with the robust centre
    distance_to_centre: float
    group_size: int  # candidates in its near-duplicate group
    group_weight: float  # its vote in the robust centre


@dataclass(frozen=True)
class Selection:
    selected: list[Selected]
    centre: np.ndarray | None
    iterations: int
    considered: int
    groups: int
    authors: int
    down_weighted: dict[str, int] = field(default_factory=dict)
    # The similarity floors this query used (similarity_floors): ``floor`` of all candidates
    # (newer authors' lessons are kept against it), ``established_floor`` of the established
    # ones (theirs; never above ``floor``).
    floor: float = 0.0
    established_floor: float = 0.0


@dataclass(frozen=True)
class SelectionSettings:
    k: int = 5
    min_similarity: float = 0.6  # the floor (see similarity_floor): its ceiling
    floor_min: float | None = None  # the floor's lowest value; None: min_similarity (fixed)
    floor_margin: float = 0.1  # the floor follows the best relevance down to this below it
    author_cap: float = 1.0
    alpha: float = 2.0  # how strongly agreement with the centre counts against relevance
    confidence_weight: float = 0.1  # score factor (1 - cw) + cw * confidence
    per_author: int = 1  # answer slots of an author not yet established (standing < 1)
    established_slots: int = 0  # slots of an established author (standing 1); 0: up to k
    newcomer_weight: float = 1.0  # score factor of an author of standing 0 (1: standing unused)
    newcomers_alone: bool = True  # probation only where an established author answers
    # Where no established author answers, authors the node's trust vouches for
    # (Candidate.vouched) answer too, down-weighted, even when newcomers_alone is off.
    vouched_alone: bool = True
    # Agreement with the robust centre counts only under this quantile of the groups'
    # agreements (agreement_factor); 0: everywhere, as agreement ** alpha.
    agreement_quantile: float = 0.0
    # Near-duplicate members of one group may each answer unless their cosine with a lesson
    # already in the answer reaches this; None: one answer per group (its speaker).
    answer_duplicate: float | None = None


def lowest_floor(min_similarity: float, floor_min: float | None) -> float:
    """The lowest similarity floor :func:`similarity_floor` can give with these settings: a
    candidate under it is never selected (nor counts toward the robust centre)."""
    if floor_min is None or floor_min >= min_similarity:
        return min_similarity
    return floor_min


def similarity_floor(
    best: float, min_similarity: float, floor_min: float | None, margin: float
) -> float:
    """The similarity floor of one query: ``min_similarity``, lowered towards ``floor_min``
    when even the most relevant candidate (relevance ``best``) is weak, to ``margin`` below it:
    ``clamp(best - margin, floor_min, min_similarity)``.

    A fixed floor leaves a query whose best lesson sits just under it with nothing (0.4 in
    this space: 5 of 443 eg queries, benchmarks/versus_chroma.py); a floor relative to the
    best alone would let any query, however unrelated, fill k slots. This rule keeps the
    fixed floor wherever some candidate clears it by ``margin`` and never goes under
    ``floor_min``, so a query answers with nothing only when no candidate reaches
    ``floor_min``. Adding candidates can only raise it (to ``min_similarity`` at most): an
    attacker cannot lower it. ``floor_min`` None (or >= ``min_similarity``): the fixed floor.
    """
    if floor_min is None or floor_min >= min_similarity:
        return float(min_similarity)
    return float(min(min_similarity, max(floor_min, best - margin)))


def similarity_floors(
    candidates: Sequence[Candidate], settings: SelectionSettings
) -> tuple[float, float]:
    """The two similarity floors of one query: ``(floor, established_floor)``.

    ``floor`` follows the best relevance of all ``candidates`` (:func:`similarity_floor`);
    lessons of authors not yet established (``reputation < 1``) are kept against it.
    ``established_floor`` follows the best *established* candidate's (``floor`` where none
    is there); established lessons are kept against it. So one fresh identity's lesson made
    to match a query far better (0.84) than every established answer (0.30-0.38) raises the
    floor of newer authors' lessons only: the established answers stay (issue 25 review).
    ``established_floor <= floor`` always; adding candidates can only raise either."""
    s = settings
    best = max((c.relevance for c in candidates), default=0.0)
    floor = similarity_floor(best, s.min_similarity, s.floor_min, s.floor_margin)
    ours = [c.relevance for c in candidates if c.reputation >= 1.0]
    if not ours:
        return floor, floor
    return floor, similarity_floor(max(ours), s.min_similarity, s.floor_min, s.floor_margin)


def candidate_floor(candidate: Candidate, floor: float, established_floor: float) -> float:
    """The floor ``candidate`` must clear (:func:`similarity_floors`)."""
    return established_floor if candidate.reputation >= 1.0 else floor


def quantile(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (its default, linear method), to the bit, for the small
    arrays of one query (a few hundred values), without its generic machinery: ~5 us
    instead of ~60 us. ``values`` non-empty and finite, ``q`` in [0, 1]."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    n = len(v)
    index = (n - 1) * float(q)
    below = min(int(np.floor(index)), n - 1)
    above = min(below + 1, n - 1)
    gamma = index - below
    a, b = float(v[below]), float(v[above])
    diff = b - a
    # numpy's _lerp: from the nearer end, so that gamma 1 gives b exactly
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def agreement_factor(agreement: float, gate: float | None, alpha: float) -> float:
    """What a score keeps for its lesson's agreement (cosine) with the robust centre:
    ``agreement ** alpha`` without a gate; with one, ``min(1, agreement / gate) ** alpha``, so
    only lessons that agree less than the gate (a low quantile of the candidates'
    agreements) lose, in proportion. Negative agreement keeps nothing."""
    a = max(agreement, 0.0)
    if gate is not None:
        a = min(1.0, a / gate)
    return a**alpha


def author_slots(standing: float, k: int, per_author: int, established_slots: int) -> int:
    """Answer slots of one author in a top ``k``: an established author (standing 1: known to
    this node past the maturity, our own identity, an operator-trusted author) may fill up to
    ``established_slots`` (0: all k), so a node whose lessons share one identity answers with
    k of them; an author not yet established gets ``per_author``, so one fresh identity
    cannot fill a whole answer where newcomers answer alone."""
    if standing >= 1.0:
        return k if established_slots <= 0 else min(k, established_slots)
    return per_author


def author_standing(first_seen_ms: int | None, now_ms: int, maturity_ms: int) -> float:
    """How established an author is to this node, in [0, 1]: the time since this node first
    accepted one of its lessons, over ``maturity_ms``. Unknown authors have standing 0."""
    if first_seen_ms is None:
        return 0.0
    if maturity_ms <= 0:
        return 1.0
    return float(min(1.0, max(0.0, (now_ms - first_seen_ms) / maturity_ms)))


def standing_factor(newcomer_weight: float, standing: float) -> float:
    """What a score keeps for its author's standing: ``newcomer_weight`` at 0, all of it at 1."""
    return newcomer_weight + (1 - newcomer_weight) * standing


def _standing_factor(s: SelectionSettings, c: Candidate) -> float:
    return standing_factor(s.newcomer_weight, c.reputation)


def select(
    query: np.ndarray,
    candidates: Sequence[Candidate],
    settings: SelectionSettings | None = None,
    below_floor: int = 0,
    cluster_member_limit: int = 0,
) -> Selection:
    """Robust top-k of ``candidates`` for ``query``; every choice explains itself.

    ``below_floor``: candidates the caller left out already because they score under the
    lower of the query's floors (``established_floor``, :func:`similarity_floors`) taken from
    the rest (adding candidates can only raise both floors, so they would be dropped here
    too); counted in ``considered`` and ``below_similarity_floor`` as if they had been
    passed. ``cluster_member_limit``: candidates above that floor the caller left out as
    members of a near-duplicate cluster beyond its ``per_cluster`` best (KnowledgeBase.find);
    counted in ``considered`` and under that name."""
    s = settings or SelectionSettings()
    reasons: dict[str, int] = defaultdict(int)
    floor, established_floor = similarity_floors(candidates, s)
    kept = [c for c in candidates if c.relevance >= candidate_floor(c, floor, established_floor)]
    reasons["below_similarity_floor"] = len(candidates) - len(kept) + below_floor
    considered = len(candidates) + below_floor + cluster_member_limit
    if cluster_member_limit:
        reasons["cluster_member_limit"] = cluster_member_limit
    reasons["low_reputation"] = sum(1 for c in kept if c.reputation < 1.0)
    # An established lesson that clears the floor of all candidates: only then are newer
    # authors on probation. Weak established answers (kept under their own, lower floor) do
    # not put a newer author's strong lesson on probation (a just-met peer's lesson answers
    # beside the node's own weak ones), nor silence it where it is all that answers well.
    established = any(c.reputation >= 1.0 and c.relevance >= floor for c in kept)
    standing = {id(c): _standing_factor(s, c) for c in kept}  # read several times below
    if s.newcomer_weight < 1.0 and (not s.newcomers_alone or established):
        # Probation: where an established author answers, a newer one must clear the floor
        # with its standing-weighted relevance, so fresh identities cannot fill the slots
        # established lessons leave empty. With no established answer everyone may answer,
        # unless ``newcomers_alone`` is off; then still the authors the node's trust vouches
        # for (``vouched_alone``): without it, a lesson whose authors the roots reach only
        # through others' verdicts is never served, so never rated (a lock-in).
        free = s.vouched_alone and not established

        def clears(c: Candidate) -> bool:  # established ones: their own floor, kept already
            return c.relevance * standing[id(c)] >= candidate_floor(c, floor, established_floor)

        def passes(c: Candidate) -> bool:
            return clears(c) or (free and c.vouched)

        probation = [c for c in kept if not passes(c)]
        reasons["newcomer_on_probation"] = len(probation)
        alone = sum(1 for c in kept if not clears(c) and passes(c))
        if alone:
            reasons["vouched_alone"] = alone
        kept = [c for c in kept if passes(c)]
    if not kept:
        return Selection([], None, 0, considered, 0, 0, dict(reasons), floor, established_floor)

    groups: dict[int, list[Candidate]] = defaultdict(list)
    for c in kept:
        groups[c.cluster].append(c)
    group_ids = list(groups)
    reasons["near_duplicate_merged"] = len(kept) - len(group_ids)

    author_groups: dict[bytes, set[int]] = defaultdict(set)
    for g in group_ids:
        for c in groups[g]:
            author_groups[c.author].add(g)
    weights = np.zeros(len(group_ids))
    for i, g in enumerate(group_ids):
        share = [s.author_cap * c.reputation / len(author_groups[c.author]) for c in groups[g]]
        weights[i] = min(1.0, sum(share))  # one vote per group at most, whatever its volume
    reasons["author_capped"] = sum(1 for a in author_groups.values() if len(a) > 1)

    # A group shows its most relevant member, weighed by standing: a fresh identity's variant
    # of an established lesson does not speak for the group.
    reps = [max(groups[g], key=lambda c: c.relevance * standing[id(c)]) for g in group_ids]
    points = np.stack([r.vector for r in reps]).astype(np.float64, copy=False)
    if weights.sum() <= 0:
        weights = np.ones(len(group_ids))
    median = geometric_median(points, weights)
    centre = median.median / max(float(np.linalg.norm(median.median)), 1e-12)

    # Who may answer: every kept member (``answer_duplicate`` set) or each group's speaker.
    group_of = {id(c): i for i, g in enumerate(group_ids) for c in groups[g]}
    answering = kept if s.answer_duplicate is not None else reps
    vectors = np.stack([c.vector for c in answering]).astype(np.float32, copy=False)
    agreements = vectors @ centre
    distances = np.linalg.norm(vectors - median.median[None, :], axis=1)
    gate = None
    if s.agreement_quantile > 0:  # quantile over the groups' speakers: volume cannot move it
        gate = max(quantile(points @ centre, s.agreement_quantile), 1e-6)
    # Every answering candidate is scored (scalar by scalar, as before, so that scores and
    # their order stay the same to the bit), but a Selected is built only for those the loop
    # below reaches: ~10-20 of ~150 at 100k lessons (building all cost ~0.7 ms a query).
    confidence_weight = s.confidence_weight
    scores = [
        c.relevance
        * agreement_factor(agreement, gate, s.alpha)
        * ((1 - confidence_weight) + confidence_weight * c.confidence)
        * standing[id(c)]
        for c, agreement in zip(answering, agreements.tolist(), strict=True)
    ]
    order = sorted(range(len(answering)), key=lambda j: -scores[j])

    def scored_item(j: int) -> Selected:
        c = answering[j]
        i = group_of[id(c)]
        members = groups[group_ids[i]]
        return Selected(
            c,
            scores[j],
            c.relevance,
            float(agreements[j]),
            float(distances[j]),
            max(len(members), *(m.cluster_size for m in members)),
            float(weights[i]),
        )

    chosen: list[Selected] = []
    # The answer's vectors, row by row (one product per test, not a stack of all of them)
    chosen_vectors = np.empty((max(s.k, 1), vectors.shape[1]), np.float32)
    slots: dict[bytes, int] = defaultdict(int)
    held_back: list[tuple[Selected, np.ndarray]] = []
    near_copies: list[Selected] = []  # the last resort of a short answer

    def redundant(vector: np.ndarray) -> bool:
        return (
            s.answer_duplicate is not None
            and bool(chosen)
            and float(np.max(chosen_vectors[: len(chosen)] @ vector)) >= s.answer_duplicate
        )

    for j in order:
        if len(chosen) == s.k:
            break
        item, vector = scored_item(j), vectors[j]
        author = item.candidate.author
        if slots[author] >= author_slots(
            item.candidate.reputation, s.k, s.per_author, s.established_slots
        ):
            held_back.append((item, vector))
            continue
        if redundant(vector):
            near_copies.append(item)
            continue
        chosen_vectors[len(chosen)] = vector
        chosen.append(item)
        slots[author] += 1
    # Slots order the answer (other authors first); they do not shorten it: where fewer than
    # k lessons of other authors clear the floor, the held-back ones fill the rest, in order.
    for item, vector in held_back:
        if len(chosen) == s.k:
            reasons["author_slot_limit"] += 1
        elif not redundant(vector):
            chosen_vectors[len(chosen)] = vector
            chosen.append(item)
        else:
            near_copies.append(item)
    # Near-copies of a lesson already in the answer come last and only fill an answer that
    # would otherwise be short: k answers whenever k candidates clear the floor. Only an
    # established author's copy, and only from an author already in the answer: a copy adds
    # no new voice, and other identities' variants of one poison (a Sybil flood, fresh or
    # aged) must not fill the slots honest lessons leave empty (benchmarks/robustness.py with
    # every copy filling: "always" Sybil 0.5 % -> 1.5 %, sleepers 13.5 % -> 20.5 %).
    answering = {c.candidate.author for c in chosen}
    fillers = [
        c for c in near_copies if c.candidate.reputation >= 1.0 and c.candidate.author in answering
    ]
    fillers.sort(key=lambda x: -x.score)
    filled = fillers[: max(0, s.k - len(chosen))]
    reasons["near_duplicate_in_answer"] += len(near_copies) - len(filled)
    chosen.sort(key=lambda x: -x.score)
    chosen.extend(filled)
    return Selection(
        chosen,
        centre.astype(np.float32),
        median.iterations,
        considered,
        len(group_ids),
        len(author_groups),
        dict(reasons),
        floor,
        established_floor,
    )


def plain_top_k(candidates: Sequence[Candidate], k: int = 5) -> list[Candidate]:
    """The undefended baseline: highest relevance first."""
    return sorted(candidates, key=lambda c: -c.relevance)[:k]
