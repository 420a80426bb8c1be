"""A search never asks an index for more than it can return (issue #19, case 10): with fewer
near-duplicate clusters than ``selection.candidates`` the knowledge base widens its search to
the whole index, and every backend must answer that."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from zoonode.knowledge import KnowledgeBase
from zoonode.native.codec import compress_many
from zoonode.protocol import Experience, Op, public_key_bytes, sign
from zoonode.replica import BACKENDS, Replica
from zoonode.store import Incoming


def clustered(encoder, key, clusters: int, per_cluster: int) -> list[Incoming]:
    """Signed lessons whose vectors form tight near-duplicate clusters (cos ~0.99 inside)."""
    rng = np.random.default_rng(7)
    dim = encoder.space_info.hidden
    centres = rng.normal(size=(clusters, dim))
    labels = np.repeat(np.arange(clusters), per_cluster)
    vectors = centres[labels] + 0.05 * rng.normal(size=(len(labels), dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    codes = compress_many(encoder.lift(vectors), encoder.space_info.v_ref)
    items = []
    for i, (vector, code) in enumerate(zip(vectors, codes, strict=True)):
        exp = Experience(
            op=Op.ADD,
            author=public_key_bytes(key),
            space=encoder.space,
            created_at=1_700_000_000_000 + i,
            text=f"Templated lesson {i} of cluster {labels[i]}",
            domain="bounds.test",
            confidence=0.5,
            code=code,
        )
        items.append(Incoming(sign(exp, key), vector))
    return items


@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_clusters_than_candidates_on_every_backend(tmp_path, encoder, key, backend):
    items = clustered(encoder, key, clusters=4, per_cluster=75)
    kb = KnowledgeBase(
        tmp_path, encoder.space, encoder.space_info.hidden, replica_backend=backend, ivf_lists=2
    )
    try:
        kb.ingest(items)
        assert len(kb.replica) == 300
        for probe in (items[0].vector, items[150].vector):
            hits = kb.search(probe, k=150)  # selection.candidates: more than the 4 clusters
            assert len(hits) == 4  # one per cluster, the index searched to its end
            assert hits[0].row.id in {it.record.id for it in items}
            assert len({h.row.cluster for h in hits}) == 4
    finally:
        kb.close()


def test_hnswlib_refusing_k_answers_what_it_can(tmp_path):
    """hnswlib raises "Cannot return the results in a contiguous 2D array" when its walk
    reaches fewer than k labels (here: a third of them marked deleted, hnswlib's own way to
    hide labels). The replica asks again for fewer and pads with -1, as the others do."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    replica = Replica(384, backend="hnswlib")
    replica.add(np.arange(1, 301), vectors)
    for label in range(1, 301, 3):
        replica.index.index.mark_deleted(label)
    seqs, sims = replica.search_many(vectors[:2], k=300)
    assert seqs.shape == (2, 300) and sims.shape == (2, 300)
    found = seqs[seqs > 0]
    assert len(found) > 0 and not np.isin(found, np.arange(1, 301, 3)).any()
    assert (seqs[sims == -np.inf] == -1).all()
    one, _ = replica.search(vectors[1], k=300)
    assert one[0] == 2  # its own vector first


def test_an_onnx_encoder_loads_after_a_usearch_replica():
    """onnxruntime imported after usearch crashed the process (SIGSEGV): a script that opens a
    knowledge base first and an ONNX encoder second died without a traceback."""
    script = (
        "import numpy as np\n"
        "from zoonode.replica import Replica\n"
        "r = Replica(8)\n"
        "r.add(np.arange(1, 3), np.eye(2, 8, dtype=np.float32))\n"
        "import onnxruntime\n"
        "print('loaded', onnxruntime.__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded onnxruntime" in done.stdout
