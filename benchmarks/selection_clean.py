"""Selection rules side by side on clean data (nobody attacks): what each costs against exact
top-k, in-process on a real node data dir.

    python benchmarks/selection_clean.py [--size 20000] [--authors own 64]

The store: benchmarks/corpus.py's lessons (1,334 cheat tips among real filler text), signed by
the node's own identity ("own": shared through its API) or by 64 authors imported from a file
(fresh to the node: standing 0), written with KnowledgeBase.ingest into a real data dir that is
kept in .bench-cache/nodes/ for reruns. Per eg query: the node's candidates exactly as
``Query.answer`` gets them (KnowledgeBase.search, 150 candidates, one per near-duplicate
cluster, ordered by relevance x standing factor), then ``select`` under each rule. Reference:
exact top-k over every stored vector (what a plain vector store returns). Metrics: Recall@5
(relevant in the top 5 / min(5, relevant)), Hit@5, MRR@10 (k = 10 answers), results per
query, answers with nothing, answers with nothing although the exact top 5 holds a relevant
lesson at cosine >= 0.3, answers shorter than k although k candidates clear the query's floor.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from zoonode.config import SelectionConfig
from zoonode.identity import IDENTITY_FILE, load_or_create_identity
from zoonode.knowledge import KnowledgeBase
from zoonode.native.encoder import Encoder
from zoonode.protocol import decode, public_key_bytes
from zoonode.selection import (
    Candidate,
    SelectionSettings,
    author_standing,
    select,
    similarity_floor,
    standing_factor,
)

from common import table, write_json
from corpus import fill, load

NODES = Path(__file__).resolve().parent.parent / ".bench-cache" / "nodes"


def node_dir(enc: Encoder, corpus, size: int, mode: str) -> Path:
    path = NODES / f"{size}-{mode}"
    done = path / "filled"
    if not done.exists():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        seconds = fill(path, enc, corpus.texts, corpus.vectors, 0, size, mode)
        done.write_text(f"{seconds:.1f}\n")
    return path


def candidates_for(kb: KnowledgeBase, q: np.ndarray, own: bytes, sel: SelectionConfig):
    """What Query.answer hands select (no peers): standing from the store's first acceptance;
    our own identity is established."""
    now = int(time.time() * 1000)
    maturity = int(sel.maturity_days * 86_400_000)
    first: dict[bytes, int] = {}

    def standing(author: bytes) -> float:
        return 1.0 if author == own else author_standing(first.get(author), now, maturity)

    def weigh(authors):
        first.update(kb.authors_first_seen(set(authors) - first.keys()))
        return np.array([standing_factor(sel.newcomer_weight, standing(a)) for a in authors])

    hits = kb.search(q, k=sel.candidates, weigh=weigh, per_cluster=sel.cluster_members)
    return [
        Candidate(
            h.row.id,
            h.vector,
            h.score,
            h.row.author,
            h.row.cluster or -h.row.seq,
            h.row.confidence,
            reputation=standing(h.row.author),
            cluster_size=h.cluster_size,
        )
        for h in hits
    ]


def metrics(answers: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    """Over lesson texts (two cheat tips are repeated word for word: either copy counts)."""
    recall, hit, mrr = [], [], []
    for got, rel in zip(answers, relevant, strict=True):
        if not rel:
            continue
        top5 = got[:5]
        recall.append(len(set(top5) & rel) / min(5, len(rel)))
        hit.append(float(bool(set(top5) & rel)))
        first = next((r for r, i in enumerate(got[:10]) if i in rel), None)
        mrr.append(0.0 if first is None else 1.0 / (first + 1))
    return {
        "Recall@5": float(np.mean(recall)),
        "Hit@5": float(np.mean(hit)),
        "MRR@10": float(np.mean(mrr)),
    }


def rules(sel: SelectionConfig) -> dict[str, SelectionSettings]:
    base = SelectionSettings(
        k=10,
        min_similarity=0.4,
        author_cap=sel.author_cap,
        newcomer_weight=sel.newcomer_weight,
        per_author=1,
        established_slots=1,
    )
    slots = replace(base, established_slots=0)
    floor = replace(slots, floor_min=0.3)
    now = replace(
        floor,
        agreement_quantile=sel.agreement_quantile,
        answer_duplicate=sel.answer_duplicate,
    )
    return {
        "before: 1 slot per author, floor 0.4": base,
        "established authors k slots": slots,
        "+ floor clamp(best-0.1, 0.3, 0.4)": floor,
        "+ near-duplicates answer while cos < 0.95": replace(floor, answer_duplicate=0.95),
        "+ agreement counts under its q0.25 (default)": now,
        "default, alpha 0.5 instead of the gate": replace(now, agreement_quantile=0.0, alpha=0.5),
        "default, gate q0.1": replace(now, agreement_quantile=0.1),
        "default, gate q0.05": replace(now, agreement_quantile=0.05),
        "default, gate q0.25 alpha 1": replace(now, alpha=1.0),
        "default, no agreement (alpha 0)": replace(now, alpha=0.0),
        "default, answer_duplicate 0.97": replace(now, answer_duplicate=0.97),
        "default, floor 0.4 fixed": replace(now, floor_min=None),
    }


def run(enc: Encoder, corpus, size: int, mode: str) -> list[dict]:
    path = node_dir(enc, corpus, size, mode)
    own = public_key_bytes(load_or_create_identity(path / IDENTITY_FILE))
    kb = KnowledgeBase(path, enc.space, enc.space_info.hidden)
    sel = SelectionConfig()
    stored = corpus.vectors[:size]
    per_rule: dict[str, dict] = {
        name: {"answers": [], "short": 0, "empty": 0, "empty_rel": 0, "counts": []}
        for name in rules(sel)
    }
    exact_answers = []
    relevant = [{corpus.texts[i] for i in rel} for rel in corpus.relevant]
    for qi, q in enumerate(corpus.query_vectors):
        sims = stored @ q
        top = np.argsort(-sims)[:10]
        exact_answers.append([corpus.texts[i] for i in top])
        rel_above = any(int(i) in corpus.relevant[qi] and sims[i] >= 0.3 for i in top[:5])
        cands = candidates_for(kb, q, own, sel)
        for name, settings in rules(sel).items():
            result = select(q, cands, settings)
            got = [text_of(kb, s.candidate.id) for s in result.selected]
            floor = similarity_floor(
                max((c.relevance for c in cands), default=0.0),
                settings.min_similarity,
                settings.floor_min,
                settings.floor_margin,
            )
            clear = sum(1 for c in cands if c.relevance >= floor)
            out = per_rule[name]
            out["answers"].append(got)
            out["counts"].append(len(got))
            out["empty"] += not got
            out["empty_rel"] += (not got) and rel_above
            out["short"] += len(got) < min(settings.k, clear)
    rows = []
    reference = metrics(exact_answers, relevant)
    for name, dedupe in (("replica top-k", False), ("replica top-k, one per cluster", True)):
        answers = [
            [text_of(kb, h.row.id) for h in kb.search(q, k=10, dedupe=dedupe)]
            for q in corpus.query_vectors
        ]
        m = metrics(answers, relevant)
        rows.append(
            {
                "size": size,
                "authors": mode,
                "rule": name,
                **m,
                **{f"{k} ratio": m[k] / reference[k] for k in reference},
            }
        )
    rows.append(
        {"size": size, "authors": mode, "rule": "exact top-k (plain vector store)", **reference}
    )
    for name, out in per_rule.items():
        m = metrics(out["answers"], relevant)
        rows.append(
            {
                "size": size,
                "authors": mode,
                "rule": name,
                **m,
                **{f"{k} ratio": m[k] / reference[k] for k in reference},
                "results": float(np.mean(out["counts"])),
                "empty": out["empty"],
                "empty, relevant >= 0.3 in top 5": out["empty_rel"],
                "short of k with k clearing the floor": out["short"],
            }
        )
    kb.close()
    return rows


_TEXT: dict[bytes, str] = {}


def text_of(kb: KnowledgeBase, record_id: bytes) -> str:
    if record_id not in _TEXT:
        _TEXT[record_id] = decode(kb.get(record_id).wire).experience.text
    return _TEXT[record_id]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--authors", nargs="+", default=["own", "64"], choices=["own", "64"])
    args = parser.parse_args()
    enc = Encoder.default()
    corpus = load(args.size, enc)
    rows = []
    for mode in args.authors:
        rows += run(enc, corpus, args.size, mode)
        _TEXT.clear()
    columns = [
        "authors",
        "rule",
        "Recall@5",
        "Hit@5",
        "MRR@10",
        "Recall@5 ratio",
        "Hit@5 ratio",
        "MRR@10 ratio",
        "results",
        "empty",
        "empty, relevant >= 0.3 in top 5",
        "short of k with k clearing the floor",
    ]
    print(table(rows, columns))
    path = write_json(f"selection-clean-{args.size}", {"rows": rows, "filler": corpus.filler})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
