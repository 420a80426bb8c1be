"""What an agent gets when it asks a node for the target queries, with and without defences.

Defended: the node's real path, minus I/O: the node's holdings -> top candidates by exact
cosine x standing factor, one per near-duplicate cluster (the store's rule: cos >= 0.9, arrival
order; its member of highest weighted relevance speaks for it), as ``KnowledgeBase.search``
hands them over -> the real ``select`` with the node's default selection settings. Standing
comes from the scenario's ``history``: how long, when the run starts, the node has known the
honest authors and the attackers. Undefended: plain top-k over everything the attackers
published that decodes, as a node without validation, embedding check or robust selection
would hold it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from zoonode.config import SelectionConfig
from zoonode.protocol import SignedRecord
from zoonode.selection import (
    Candidate,
    SelectionSettings,
    author_standing,
    plain_top_k,
    select,
    standing_factor,
)
from zoonode.sim.scenario import History
from zoonode.sim.workload import Workload

DEFAULTS = SelectionConfig()  # what a node runs with unless its operator changes it
CANDIDATES = DEFAULTS.candidates
MIN_SIMILARITY = DEFAULTS.min_similarity
DUPLICATE_COSINE = 0.9
DAY_MS = 86_400_000


def standings(workload: Workload, history: History) -> dict[bytes, float]:
    """Every author's standing at query time, as an honest node sees it."""
    maturity = int(DEFAULTS.maturity_days * DAY_MS)

    def aged(days: float) -> float:
        return author_standing(0, int(days * DAY_MS), maturity)

    out = {
        r.experience.author: aged(history.honest_age_days)
        for rs in workload.honest.values()
        for r in rs
    }
    out |= {a: aged(history.attacker_age_days) for a in workload.adversarial_authors}
    return out


def settings_for(history: History, k: int) -> SelectionSettings:
    """The node's default settings; ``newcomers_alone`` resolved as ``Node`` resolves it."""
    mode = DEFAULTS.newcomers_alone
    alone = mode == "always" or (
        mode == "bootstrap" and history.honest_age_days < DEFAULTS.maturity_days
    )
    return SelectionSettings(
        k=k,
        min_similarity=DEFAULTS.min_similarity,
        author_cap=DEFAULTS.author_cap,
        newcomer_weight=DEFAULTS.newcomer_weight,
        newcomers_alone=alone,
    )


def clusters_in_order(
    vectors: np.ndarray, threshold: float = DUPLICATE_COSINE, keys: Sequence | None = None
) -> list[int]:
    """The store's rule: in arrival order, a vector joins the cluster of its most similar
    representative if that cosine is >= ``threshold``, else it starts one. ``keys`` (equal
    keys => equal vectors, e.g. the text) gives the same result faster: the cosines are
    computed once per distinct key, and a key's decision is reused until a representative is
    added."""
    ids = list(range(len(vectors)))
    reps: list[int] = []
    if keys is None:
        for i in range(len(vectors)):
            if reps:
                sims = vectors[reps] @ vectors[i]
                j = int(np.argmax(sims))
                if sims[j] >= threshold:
                    ids[i] = ids[reps[j]]
                    continue
            reps.append(i)
        return ids
    first: dict = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    distinct = list(first)
    slot = {key: n for n, key in enumerate(distinct)}
    gram = vectors[[first[k] for k in distinct]] @ vectors[[first[k] for k in distinct]].T
    rep_slots: list[int] = []
    decided: dict = {}  # key -> cluster id, valid while no representative is added
    for i, key in enumerate(keys):
        if key in decided:
            ids[i] = decided[key]
            continue
        if reps:
            sims = gram[slot[key], rep_slots]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                ids[i] = decided[key] = ids[reps[j]]
                continue
        reps.append(i)
        rep_slots.append(slot[key])
        decided.clear()
    return ids


def candidates_for(
    query: np.ndarray,
    records: Sequence[SignedRecord],
    workload: Workload,
    trust_code: bool = False,
    standing: dict[bytes, float] | None = None,
    vouched: set[bytes] | frozenset[bytes] = frozenset(),
    vectors: np.ndarray | None = None,
) -> list[Candidate]:
    """Without ``standing``: the raw top candidates, near-duplicates included. With it: what
    the node's store search returns, one candidate per cluster ordered by cosine x factor,
    widening the fetch (x4) until enough clusters are found, as ``KnowledgeBase.search``.
    ``vectors`` (len(records) x d): the records' vectors when already stacked."""
    if not records:
        return []
    if vectors is None:
        vectors = np.stack([workload.vector_of(r, trust_code) for r in records])
    scores = vectors @ query
    ranked = np.argsort(-scores, kind="stable")
    if standing is None:
        top = np.sort(ranked[:CANDIDATES])  # arrival order, as the store assigns clusters
        clusters = clusters_in_order(vectors[top])
        return [
            Candidate(
                records[i].id,
                vectors[i],
                float(scores[i]),
                records[i].experience.author,
                clusters[n],
                records[i].experience.confidence,
            )
            for n, i in enumerate(top)
        ]

    def author_of(i: int) -> bytes:
        return records[i].experience.author

    fetch = CANDIDATES + max(CANDIDATES // 4, 16)
    while True:
        top = np.sort(ranked[:fetch])  # arrival order, as the store assigns clusters
        clusters = clusters_in_order(vectors[top], keys=[records[i].experience.text for i in top])
        factors = np.array(
            [
                standing_factor(DEFAULTS.newcomer_weight, standing.get(author_of(i), 0.0))
                for i in top
            ]
        )
        weighed = scores[top] * factors
        best: dict[int, int] = {}
        for n in np.argsort(-weighed, kind="stable"):
            best.setdefault(clusters[n], int(n))
        if len(best) >= CANDIDATES or fetch >= len(records):
            break
        fetch *= 4
    keep = sorted(best.values(), key=lambda n: -weighed[n])[:CANDIDATES]
    sizes = Counter(clusters)
    return [
        Candidate(
            records[top[n]].id,
            vectors[top[n]],
            float(scores[top[n]]),
            author_of(top[n]),
            clusters[n],
            records[top[n]].experience.confidence,
            standing.get(author_of(top[n]), 0.0),
            sizes[clusters[n]],
            author_of(top[n]) in vouched,
        )
        for n in keep
    ]


def agent_outcomes(
    workload: Workload,
    holdings: dict[int, list[bytes]],
    records_by_id: dict[bytes, SignedRecord],
    k: int = 5,
    attack_records: Sequence[SignedRecord] = (),
    history: History | None = None,
    standing_of: dict[int, dict[bytes, float]] | None = None,
    vouched_of: dict[int, set[bytes]] | None = None,
    settings: SelectionSettings | None = None,
) -> dict:
    """Attack success (share of top-k slots held by adversaries) and relevant-hit rate, per
    querying node, defended and undefended. ``standing_of`` (node -> author -> standing)
    replaces the time-known standing per node (the feedback loop's trust), ``vouched_of``
    (node -> authors its trust vouches for) and ``settings`` go with it."""
    history = history or History()
    settings = settings or settings_for(history, k)
    time_standing = standings(workload, history)
    bad = workload.adversarial_authors
    out: dict[str, list[float]] = {
        "defended": [],
        "undefended": [],
        "hit_defended": [],
        "hit_undefended": [],
    }
    honest_records = [r for rs in workload.honest.values() for r in rs]
    for node, ids in holdings.items():
        standing = (standing_of or {}).get(node, time_standing)
        vouched = (vouched_of or {}).get(node, frozenset())
        held = [records_by_id[i] for i in ids if i in records_by_id]
        everything = _unique(honest_records + list(attack_records))
        for q, relevant in zip(workload.query_vectors, workload.relevant, strict=True):
            cands = candidates_for(q, held, workload, standing=standing, vouched=vouched)
            selection = select(q, cands, settings)
            chosen = [s.candidate for s in selection.selected]
            pool = candidates_for(q, everything, workload, trust_code=True)
            plain = plain_top_k([c for c in pool if c.relevance >= MIN_SIMILARITY], k)
            for name, picked, pool in (
                ("defended", chosen, held),
                ("undefended", plain, everything),
            ):
                texts = {r.id: r.experience.text for r in pool}
                out[name].append(sum(c.author in bad for c in picked) / k)
                out[f"hit_{name}"].append(float(any(texts[c.id] == relevant for c in picked)))
    return {key: float(np.mean(v)) if v else 0.0 for key, v in out.items()} | {
        "queries": len(out["defended"]),
        "query_nodes": len(holdings),
    }


def _unique(records: list[SignedRecord]) -> list[SignedRecord]:
    seen, out = set(), []
    for r in records:
        if r.id not in seen:
            seen.add(r.id)
            out.append(r)
    return out
