"""The anti-entropy room (``/zoo/dso/sync/1``): serve our digest, ids and records to peers,
and every ``SYNC_INTERVAL`` per connected peer fetch what we lack (``zoonode.net.sync`` holds
the pure digest). Fetched records are validated like gossip and join the ingest queue; a
round that brought records is followed by the next at once (a joining node catches up at the
store's pace, not one round per interval), and a round stops when the backlog of records
waiting for the embedding check is full for their authors (they are fetched after it drains).

Records waiting for the embedding check are held, so they are in the digest and served to
peers (who check them themselves, as they check gossip); one that fails becomes a tombstone,
which the digest counts the same, so the digest does not change when a record is checked."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from zoonode.experiences import now_ms
from zoonode.net.validation import AuthorLimiter, Verdict, check_record

if TYPE_CHECKING:
    from zoonode.node.core import Node

log = logging.getLogger("zoonode.node.sync")

SYNC_INTERVAL = 30.0  # seconds between rounds with one peer
ROUND_TIMEOUT = 120.0
MAX_GET_ROOM = 128  # one ``get`` of records
SYNC_PARALLEL = 4  # buckets fetched at a time from one peer


class AntiEntropy:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._synced: dict[str, float] = {}

    async def serve(self, peer: str, req: dict) -> dict[str, Any]:
        from zoonode.net.sync import MAX_GET, MAX_IDS

        node = self.node
        op = req.get("op")
        if op == "digest":
            return {"buckets": node.digest.to_wire(), "bucket_ms": node.digest.bucket_ms}
        if op == "ids":
            start, end = int(req["start"]), int(req["end"])
            ids = await node.in_kb(node.kb.store.ids_between, start, end, MAX_IDS)
            return {"ids": ids}
        if op == "get":
            ids = [i for i in req["ids"][:MAX_GET] if isinstance(i, bytes)]
            return {"wires": await node.in_kb(node.kb.store.wires, ids)}
        return {"error": "unknown op"}

    async def run(self) -> None:
        while True:
            for peer in self.node.connected_peers():
                key = str(peer)
                if time.monotonic() - self._synced.get(key, -1e9) >= SYNC_INTERVAL:
                    fetched = 0
                    with trio.move_on_after(ROUND_TIMEOUT):
                        fetched = await self.sync_with(peer)
                    # More may be waiting: the next round at once (unless the backlog is full).
                    self._synced[key] = time.monotonic() if not fetched else -1e9
            await trio.sleep(0.5)

    async def sync_with(self, peer) -> int:
        """One anti-entropy round with ``peer``; returns how many records were fetched.
        ``SYNC_PARALLEL`` differing buckets are fetched at a time (each costs two or more
        request round trips; one at a time, a joining node waited on the network)."""
        from zoonode.net.rpc import SYNC_PROTOCOL, RpcError, request

        node = self.node
        limiter = AuthorLimiter(rate=1e9, burst=1e9)  # backlog, not a live flood
        try:
            theirs = await request(node.host, peer, SYNC_PROTOCOL, {"op": "digest"})
            if theirs.get("bucket_ms") != node.digest.bucket_ms:
                return 0
            starts = node.digest.differing(theirs["buckets"])
        except (RpcError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.debug("sync with %s failed: %s", peer, exc)
            return 0
        fetched = [0]

        async def worker() -> None:
            while starts and self._room():
                start = starts.pop(0)
                try:
                    fetched[0] += await self._bucket(peer, start, limiter)
                except (RpcError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    log.debug("sync with %s failed: %s", peer, exc)
                    starts.clear()

        async with trio.open_nursery() as nursery:
            for _ in range(SYNC_PARALLEL):
                nursery.start_soon(worker)
        if starts:
            log.info("sync: backlog full, fetching the rest after it drains")
        if fetched[0]:
            log.info("sync: fetched %d records from %s", fetched[0], peer)
        return fetched[0]

    async def _bucket(self, peer, start: int, limiter: AuthorLimiter) -> int:
        """Fetch what we lack of one time bucket; returns how many records were queued."""
        from zoonode.net.rpc import SYNC_PROTOCOL, request
        from zoonode.net.sync import MAX_GET

        node = self.node
        fetched = 0
        listed = await request(
            node.host,
            peer,
            SYNC_PROTOCOL,
            {"op": "ids", "start": start, "end": start + node.digest.bucket_ms},
        )
        ids = [i for i in listed.get("ids", []) if isinstance(i, bytes)]
        missing = await node.in_kb(lambda: [i for i in ids if not node.kb.store.known(i)])
        for chunk in range(0, len(missing), MAX_GET):
            if not self._room():
                break
            got = await request(
                node.host,
                peer,
                SYNC_PROTOCOL,
                {"op": "get", "ids": missing[chunk : chunk + MAX_GET]},
            )
            for wire in got.get("wires", []):
                checked = check_record(
                    wire,
                    node.policy,
                    now_ms(),
                    node.kb.store.known,
                    limiter,
                    node.banned.__contains__,
                    backlog=node.backlog_admits,
                )
                node.counters[f"sync:{checked.verdict.value}:{checked.reason}"] += 1
                if checked.verdict is Verdict.ACCEPT:
                    await node.ingest.enqueue(checked.record, str(peer))
                    fetched += 1
        return fetched

    def _room(self) -> bool:
        """Room in the backlog for a newcomer's records (an ingest queue's worth spare)."""
        node = self.node
        waiting = node.kb.backlog.total + node.ingest.queued()
        return waiting + MAX_GET_ROOM <= node.bounds.total
