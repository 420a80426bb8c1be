"""What an agent gets when it asks a node for the target queries, with and without defences.

Defended: the node's real path, minus I/O: the node's holdings -> top ``candidates`` by exact
cosine -> near-duplicate clusters by the store's rule (cos >= 0.9, arrival order) -> the real
``select``. Undefended: plain top-k over everything the attackers published that decodes,
as a node without validation, embedding check or robust selection would hold it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoonode.protocol import SignedRecord
from zoonode.selection import Candidate, SelectionSettings, plain_top_k, select
from zoonode.sim.workload import Workload

CANDIDATES = 150
MIN_SIMILARITY = 0.4  # the node's default floor (config selection.min_similarity)
DUPLICATE_COSINE = 0.9


def clusters_in_order(vectors: np.ndarray, threshold: float = DUPLICATE_COSINE) -> list[int]:
    ids = list(range(len(vectors)))
    reps: list[int] = []
    for i in range(len(vectors)):
        if reps:
            sims = vectors[reps] @ vectors[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                ids[i] = ids[reps[j]]
                continue
        reps.append(i)
    return ids


def candidates_for(
    query: np.ndarray,
    records: Sequence[SignedRecord],
    workload: Workload,
    trust_code: bool = False,
) -> list[Candidate]:
    if not records:
        return []
    vectors = np.stack([workload.vector_of(r, trust_code) for r in records])
    scores = vectors @ query
    top = np.argsort(-scores)[:CANDIDATES]
    top = np.sort(top)  # arrival order, as the store assigns clusters
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


def agent_outcomes(
    workload: Workload,
    holdings: dict[int, list[bytes]],
    records_by_id: dict[bytes, SignedRecord],
    k: int = 5,
    attack_records: Sequence[SignedRecord] = (),
) -> dict:
    """Attack success (share of top-k slots held by adversaries) and relevant-hit rate, per
    querying node, defended and undefended."""
    settings = SelectionSettings(k=k, min_similarity=MIN_SIMILARITY)
    bad = workload.adversarial_authors
    out: dict[str, list[float]] = {
        "defended": [],
        "undefended": [],
        "hit_defended": [],
        "hit_undefended": [],
    }
    honest_records = [r for rs in workload.honest.values() for r in rs]
    for ids in holdings.values():
        held = [records_by_id[i] for i in ids if i in records_by_id]
        everything = _unique(honest_records + list(attack_records))
        for q, relevant in zip(workload.query_vectors, workload.relevant, strict=True):
            selection = select(q, candidates_for(q, held, workload), settings)
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
