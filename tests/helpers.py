"""Builders shared by the tests: real records from real text through the real encoder."""

from __future__ import annotations

from zoonode.experiences import create_experiences
from zoonode.store import Incoming


def lessons(encoder, key, texts, domain="test.lessons", confidence=0.5, created_at=None):
    """Signed add records plus their exact compact vectors, as the node would ingest them."""
    records = create_experiences(
        encoder,
        key,
        [{"text": t, "domain": domain, "confidence": confidence} for t in texts],
        created_at=created_at,
    )
    vectors = encoder.encode_compact(list(texts))
    return [Incoming(r, v) for r, v in zip(records, vectors, strict=True)]
