"""The lessons of the retrieval benchmarks at 20k-100k: eg/cheat tips among real filler text.

The first 20,000 lessons are the 1,334 cheat tips (benchmarks/datasets.py) and the first
18,666 filler texts (benchmarks/filler.py), shuffled with a fixed seed; lessons 20,000 onwards
are filler only, so every store size from 20k up holds every tip and a 100k store is the 20k
store plus 80k more. Queries: the 443 eg examples; relevant: the tips of the same command.
Vectors are cached in .bench-cache/ (filler.encoded).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.experiences import sign_lessons
from zoonode.identity import IDENTITY_FILE, load_or_create_identity
from zoonode.knowledge import KnowledgeBase
from zoonode.native.encoder import Encoder
from zoonode.protocol.record import _CONTROL_RE, MAX_TEXT_BYTES
from zoonode.store import Incoming

from datasets import load as load_retrieval_set
from filler import CHUNK, encoded
from filler import load as load_filler

MIXED = 20_000  # the tips are spread over the first MIXED lessons
SEED = 25
DOMAIN = "shell.tips"
AUTHORS = 64


@dataclass
class Corpus:
    texts: list[str]
    vectors: np.ndarray  # (n, 384) compact coordinates, unit norm
    queries: list[str]
    query_vectors: np.ndarray
    relevant: list[set[int]]  # per query: indices into texts
    filler: dict  # where the filler came from (filler.load)


def _valid_text(text: str) -> bool:
    return not _CONTROL_RE.search(text) and len(text.encode("utf-8")) <= MAX_TEXT_BYTES


def load(size: int, enc) -> Corpus:
    data = load_retrieval_set()
    tips = len(data.corpus)
    need = max(size, MIXED) - tips
    loaded, info = load_filler(-(-need // CHUNK) * CHUNK)  # whole cache chunks
    vectors_all = encoded(enc, loaded)
    # A few docstrings hold control characters or exceed 1 KB of UTF-8: not valid lesson text
    # (protocol/record.py); they are skipped (after encoding, so the cache stays valid).
    usable = [i for i, t in enumerate(loaded) if _valid_text(t)]
    if len(usable) < need:
        raise SystemExit(f"only {len(usable)} usable filler texts, {need} needed")
    filler = [loaded[i] for i in usable[:need]]
    filler_vectors = vectors_all[usable[:need]]
    info = {**info, "count": need, "sha256": hashlib.sha256("\n".join(filler).encode()).hexdigest()}
    order = np.random.default_rng(SEED).permutation(MIXED)  # position -> source index
    source = [*data.corpus, *filler[: MIXED - tips]]
    texts = [source[i] for i in order] + filler[MIXED - tips :]
    vectors = np.concatenate([encoded(enc, data.corpus), filler_vectors])
    first = vectors[:MIXED][order]
    vectors = np.concatenate([first, vectors[MIXED:]])[:size]
    position = np.empty(MIXED, dtype=np.int64)
    position[order] = np.arange(MIXED)  # source index -> position
    relevant = [{int(position[j]) for j in data.relevant(i)} for i in range(len(data.queries))]
    return Corpus(
        texts[:size],
        vectors,
        data.queries,
        encoded(enc, data.queries),
        relevant,
        info,
    )


def author_keys(n: int = AUTHORS) -> list[Ed25519PrivateKey]:
    """Fixed keys: the same 64 authors in every run."""
    return [
        Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"author-{i}".encode()).digest())
        for i in range(n)
    ]


def signed(enc: Encoder, keys: list[Ed25519PrivateKey], texts, vectors, first: int) -> list:
    """Lesson ``first + i`` is signed by ``keys[(first + i) % len(keys)]``."""
    items = [{"text": t, "domain": DOMAIN, "confidence": 0.7} for t in texts]
    records: list = [None] * len(items)
    for j, key in enumerate(keys):
        idx = [i for i in range(len(items)) if (first + i) % len(keys) == j]
        if idx:
            for i, r in zip(
                idx, sign_lessons(enc, key, [items[i] for i in idx], vectors[idx]), strict=True
            ):
                records[i] = r
    return records


def fill(data_dir: Path, enc: Encoder, texts, vectors, start: int, end: int, mode: str) -> float:
    """Lessons ``start`` to ``end`` into a node data dir, in process (KnowledgeBase.ingest,
    batches of 256, as the node stores them); returns seconds."""
    t0 = time.perf_counter()
    own = load_or_create_identity(data_dir / IDENTITY_FILE)
    keys = [own] if mode == "own" else author_keys()
    peer = "local" if mode == "own" else "import"
    kb = KnowledgeBase(data_dir, enc.space, enc.space_info.hidden, snapshot_every=1 << 30)
    for a in range(start, end, 4096):
        b = min(end, a + 4096)
        records = signed(enc, keys, texts[a:b], vectors[a:b], a)
        for i in range(0, len(records), 256):
            kb.ingest(
                [
                    Incoming(r, v, peer)
                    for r, v in zip(records[i : i + 256], vectors[a:b][i : i + 256], strict=True)
                ]
            )
    kb.replica.save(data_dir)
    kb.close()
    return time.perf_counter() - t0
