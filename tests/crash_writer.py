"""Subprocess for test_store's crash test: ingest real vectors, print each acknowledged id.

argv: data_dir vectors.npy texts.txt start replica_backend ivf_lists
"""

import sys
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.knowledge import KnowledgeBase
from zoonode.native.codec import compress_many
from zoonode.native.head import lift
from zoonode.native.space import load_space
from zoonode.protocol import Experience, Op, public_key_bytes, sign
from zoonode.store import Incoming, Outcome

data_dir, vectors_path, texts_path, start, backend, lists = sys.argv[1:7]
space = load_space()
key = Ed25519PrivateKey.from_private_bytes(bytes(32))
vectors = np.load(vectors_path)
texts = Path(texts_path).read_text().splitlines()
kb = KnowledgeBase(
    Path(data_dir),
    space.id,
    space.hidden,
    snapshot_every=40,
    replica_backend=backend,
    ivf_lists=int(lists),
)
i = int(start)
while i < len(texts):
    batch = []
    for j in range(i, min(i + 8, len(texts))):
        code = compress_many(lift(vectors[j][None], space.head), space.v_ref)[0]
        exp = Experience(
            op=Op.ADD,
            author=public_key_bytes(key),
            space=space.id,
            created_at=1_700_000_000_000 + j,
            text=texts[j],
            domain="crash.test",
            confidence=0.5,
            code=code,
        )
        batch.append(Incoming(sign(exp, key), vectors[j]))
    for result in kb.ingest(batch):
        assert result.outcome is not Outcome.REJECTED
        print(result.id.hex(), flush=True)
    i += len(batch)
print("done", flush=True)
kb.close()
