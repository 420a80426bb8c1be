"""Anti-entropy sync (``/zoo/dso/sync/1``): a node that was away converges on what peers hold.

1. ``digest``: per time bucket (1 h of ``created_at``) the count and the XOR of the ids a node
   knows (records and tombstones). Equal buckets are skipped without listing anything.
2. ``ids``: for a differing bucket, the sorted ids the peer holds, at most ``MAX_IDS`` a
   page; ``"more": true`` when the page was cut there, and the next page is asked with
   ``"after"`` (the last id received), so a bucket of any size is listed in full.
3. ``get``: the missing records' wire bytes, ``MAX_GET`` at a time. They are validated like
   gossip and go through the same embedding check before the store.
Bounded by size (frames, ids, records per request) and by rate (buckets per round, rounds per
peer per interval). The digest is kept in memory and updated on every insert (pure class).
"""

from __future__ import annotations

from collections.abc import Iterable

RECORD_TYPE = "experience"  # the record type a sync request is about ("type", optional)
FEEDBACK_TYPE = "feedback"  # feedback records (SPEC.md §8): their own digest, ids and get
BUCKET_MS = 3_600_000
MAX_IDS = 20_000
MAX_GET = 128
MAX_BUCKETS_PER_ROUND = 64


class Digest:
    """count and XOR of ids per time bucket: order-independent, updated in O(1) per id."""

    def __init__(self, bucket_ms: int = BUCKET_MS) -> None:
        self.bucket_ms = bucket_ms
        self.buckets: dict[int, list[int]] = {}

    def add(self, record_id: bytes, created_at: int) -> None:
        start = created_at - created_at % self.bucket_ms
        entry = self.buckets.setdefault(start, [0, 0])
        entry[0] += 1
        entry[1] ^= int.from_bytes(record_id[:16], "big")

    def remove(self, record_id: bytes, created_at: int) -> None:
        """Undo ``add`` (a feedback verdict replaced by a later one leaves the known set)."""
        start = created_at - created_at % self.bucket_ms
        entry = self.buckets.get(start)
        if entry is None:
            return
        entry[0] -= 1
        entry[1] ^= int.from_bytes(record_id[:16], "big")
        if entry[0] <= 0:
            del self.buckets[start]

    @classmethod
    def build(cls, items: Iterable[tuple[bytes, int]], bucket_ms: int = BUCKET_MS) -> Digest:
        digest = cls(bucket_ms)
        for record_id, created_at in items:
            digest.add(record_id, created_at)
        return digest

    def to_wire(self) -> dict[int, list]:
        return {
            start: [count, xor.to_bytes(16, "big")] for start, (count, xor) in self.buckets.items()
        }

    def differing(self, theirs: dict) -> list[int]:
        """Bucket starts where the peer has something we may lack, newest first."""
        out = []
        for start, value in theirs.items():
            if not isinstance(start, int) or not isinstance(value, list) or len(value) != 2:
                raise ValueError("malformed digest")
            count, xor = value
            ours = self.buckets.get(start)
            if count and (
                ours is None or ours[0] != count or ours[1] != int.from_bytes(xor, "big")
            ):
                out.append(start)
        return sorted(out, reverse=True)[:MAX_BUCKETS_PER_ROUND]
