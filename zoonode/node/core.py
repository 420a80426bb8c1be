"""The node: identity, encoder, knowledge base, libp2p host and gossip under one trio
nursery, and the rooms that do its jobs:

- ``ingest``: publish, import, revoke, and peers' records into the store as pending;
- ``checker``: the embedding check of pending records, in the background and on demand;
- ``query``: robust selection, local and federated, and the query protocol's server;
- ``antientropy``: the sync protocol, both sides;
- ``discovery``: bootstrap and mDNS dialling.

All knowledge-base work (SQLite, the replica index, the encoder) runs in one worker thread at
a time (``trio.to_thread`` with a CapacityLimiter of 1, :meth:`Node.in_kb`), so the trio loop
stays free for libp2p.
"""

from __future__ import annotations

import json
import logging
import signal
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio

from zoonode.config import Config
from zoonode.datadir import DataDirLock
from zoonode.identity import IDENTITY_FILE, load_or_create_identity
from zoonode.knowledge import Filters, KnowledgeBase
from zoonode.native.encoder import Encoder, EncoderSettings
from zoonode.net.validation import BacklogBounds, Policy, backlog_admits
from zoonode.node.antientropy import AntiEntropy
from zoonode.node.checker import Checker
from zoonode.node.discovery import Discovery, unwrap
from zoonode.node.feedback import Feedback
from zoonode.node.ingest import Ingest
from zoonode.node.query import Answer, Query
from zoonode.protocol import Op, SignedRecord, public_key_bytes
from zoonode.selection import Selection
from zoonode.store import Row

log = logging.getLogger("zoonode.node")

API_URL_FILE = "api.url"


def encoder_from_config(cfg: Config) -> Encoder:
    e = cfg.encoder
    return Encoder.from_settings(
        EncoderSettings(
            backbone=e.backbone,
            adapter=e.adapter or None,
            space_manifest=e.space_manifest or None,
            threads=e.threads or None,
            device=e.device,
            precision=e.precision,
            batch_size=e.batch_size,
            runtime=e.runtime,
            cache_dir=e.cache_dir or None,
        )
    )


def open_knowledge(cfg: Config, space: bytes, hidden: int) -> KnowledgeBase:
    s = cfg.store
    return KnowledgeBase(
        cfg.data_path,
        space,
        hidden,
        capacity=s.capacity,
        duplicate_cosine=s.duplicate_cosine,
        snapshot_every=s.snapshot_every,
        hnsw_m=s.hnsw_m,
        hnsw_ef_construction=s.hnsw_ef_construction,
        hnsw_ef_search=s.hnsw_ef_search,
        replica_backend=s.replica_backend,
        ivf_lists=s.ivf_lists,
    )


@dataclass
class NodeInfo:
    peer_id: str
    addrs: list[str]
    space: str
    data_dir: str
    counts: dict[str, int]
    api: str | None = None
    # The encoder in use (every node shares the space id, so it alone says nothing about the
    # backbone): the backbone as configured (a model folder or package:MODULE) and the
    # fitted head's file, None for the anchor backbone.
    backbone: str | None = None
    adapter: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Node:
    def __init__(self, cfg: Config, *, encoder: Encoder | None = None) -> None:
        self.cfg = cfg
        # First: a second node on this data dir stops here, naming the first one's PID.
        self.lock = DataDirLock(cfg.data_path).acquire()
        try:
            self._open(cfg, encoder)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, cfg: Config, encoder: Encoder | None) -> None:
        from zoonode.net.gossip import Gossip
        from zoonode.net.host import make_host
        from zoonode.net.sync import Digest

        if cfg.node.blas_threads > 0:
            # Process-wide: numpy's BLAS pool. Selection's 150 x 384 products took 5-10x longer
            # with 2 threads than with 1 while another process held a core (query_path.py).
            from threadpoolctl import threadpool_limits

            threadpool_limits(cfg.node.blas_threads, user_api="blas")
        self.key = load_or_create_identity(cfg.data_path / IDENTITY_FILE)
        self.author = public_key_bytes(self.key)
        self.trusted_authors = {bytes.fromhex(a) for a in cfg.selection.trusted_authors}
        self.encoder = encoder or encoder_from_config(cfg)
        self.kb = open_knowledge(cfg, self.encoder.space, self.encoder.space_info.hidden)
        self.digest = Digest.build(self.kb.store.all_ids())
        self.banned = self.kb.store.banned_authors()
        net = cfg.network
        self.policy = Policy(
            space=self.encoder.space,
            max_future_ms=net.max_future_s * 1000,
            horizon_ms=net.horizon_days * 86_400_000,
            author_rate=net.author_rate,
            author_burst=net.author_burst,
            feedback_rate=net.feedback_rate,
            feedback_burst=net.feedback_burst,
        )
        # cos(W^T v_hat, u): honest records 0.963-0.985 on real text; a random text's code
        # median 0.09 (benchmarks/embedding_check.py).
        self.embedding_threshold = net.embedding_threshold
        self.bounds = BacklogBounds(cfg.ingest.max_pending, cfg.ingest.max_pending_per_author)
        self.kb.backlog.vouched |= self.trusted_authors | {self.author}
        self.counters: dict[str, int] = defaultdict(int)
        self.ingest = Ingest(self)
        self.checker = Checker(self)
        self.queries = Query(self)
        self.antientropy = AntiEntropy(self)
        self.discovery = Discovery(self)
        self.host = make_host(self.key, cfg.network.listen, (), cfg.network.mdns)
        self.gossip = Gossip(
            self.host,
            self.policy,
            self.kb.store.known,
            self.banned.__contains__,
            self.ingest.on_gossip,
            flood_rate=net.flood_rate,
            backlog=self.backlog_admits,
            room=self.ingest.room,
            known_many=self.kb.store.known_many,
        )
        # Feedback (issue #24): its own table, digest, topic, queue and room (node/feedback.py).
        self.feedback_digest = Digest.build(self.kb.store.feedback.all_ids())
        self.feedback = Feedback(self)
        self.gossip.add_feedback(
            self.kb.store.feedback.known,
            self.kb.store.feedback.standing,
            self.feedback.on_gossip,
            room=self.feedback.room,
            target_held=self.kb.store.has,
            admits=self.feedback.admits,
        )
        self._kb_lock = trio.CapacityLimiter(1)
        self._cancel: trio.CancelScope | None = None
        self.api_url: str | None = None
        self.started = trio.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def peer_id(self) -> str:
        return self.host.get_id().to_string()

    def info(self, counts: dict[str, int] | None = None) -> NodeInfo:
        return NodeInfo(
            self.peer_id,
            [str(a) for a in self.host.get_addrs()],
            self.encoder.space_info.hex,
            str(self.cfg.data_path),
            self.kb.store.counts() if counts is None else counts,
            self.api_url,
            self.encoder.backbone.name,
            (self.cfg.encoder.adapter or "(set in process)")
            if self.encoder.adapter is not None
            else None,
        )

    async def current_info(self) -> NodeInfo:
        """``info()`` with the counts read on the knowledge-base thread: counting is a scan
        (~12 ms at 100k records) that must not stall the trio loop."""
        return self.info(await self.in_kb(self.kb.store.counts))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        import multiaddr

        from zoonode.net.rpc import QUERY_PROTOCOL, SYNC_PROTOCOL, serve

        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                await nursery.start(self.gossip.run_services)  # before listening: pitfall 3
                self.host.set_stream_handler(SYNC_PROTOCOL, serve(self.antientropy.serve))
                self.host.set_stream_handler(QUERY_PROTOCOL, serve(self.queries.serve))
                listen = [multiaddr.Multiaddr(a) for a in self.cfg.network.listen]
                async with self.host.run(listen_addrs=listen):
                    try:
                        nursery.start_soon(self.ingest.run)
                        nursery.start_soon(self.checker.run)
                        nursery.start_soon(self.feedback.run)
                        nursery.start_soon(self.antientropy.run)
                        nursery.start_soon(self.discovery.watch_departures)
                        if self.cfg.network.mdns:
                            nursery.start_soon(self.discovery.run_mdns_dialer)
                        if self.cfg.api.listen:
                            from zoonode.api import serve_api

                            urls = await nursery.start(serve_api, self, self.cfg.api.listen)
                            self.api_url = urls[0]
                            (self.cfg.data_path / API_URL_FILE).write_text(self.api_url + "\n")
                        await self.dial_bootstrap(self.cfg.network.bootstrap)
                        if self.cfg.network.bootstrap:
                            nursery.start_soon(
                                self.discovery.keep_bootstrap, self.cfg.network.bootstrap
                            )
                        self.started.set()
                        task_status.started(self.info())
                        await trio.sleep_forever()
                    finally:
                        # Inside host.run(): after it, close() finds nothing to close and
                        # peers keep seeing us for 20+ s (pitfall 4).
                        with trio.CancelScope(shield=True), trio.move_on_after(5):
                            try:
                                await self.host.close()
                            except Exception as exc:
                                log.warning("host close: %s", unwrap(exc))
        finally:
            try:
                if self.api_url is not None:  # ours: nobody else writes it while we hold the lock
                    (self.cfg.data_path / API_URL_FILE).unlink(missing_ok=True)
                self.kb.close()
            finally:
                self.lock.release()
            log.info("node %s stopped", self.peer_id)

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    async def dial_bootstrap(self, addrs: Sequence[str]) -> int:
        return await self.discovery.dial_bootstrap(addrs)

    async def connect(self, addr: str) -> None:
        if not await self.dial_bootstrap([addr]):
            raise ConnectionError(f"could not connect to {addr}")

    def backlog_admits(self, record: SignedRecord, ahead: Counter[bytes] | None = None) -> bool:
        """May this record wait for the embedding check now (``ingest`` bounds)? Read on the
        trio thread from the in-memory backlog counts, records in the ingest queue included:
        no SQLite in the validator. ``ahead``: lessons by author accepted before this one and
        not queued yet (earlier gossip messages and the rest of its own: ``check_message``);
        by default (sync) those of gossip messages accepted and not yet handed over."""
        if record.experience.op is Op.REVOKE:
            return True  # stored without the check
        backlog, queued = self.kb.backlog, self.ingest
        author = record.experience.author
        if ahead is None:
            ahead = self.gossip.channels[self.gossip.topic].inflight_of
        return backlog_admits(
            queued.waiting() + ahead.total(),
            queued.waiting_of(author) + ahead[author],
            author in backlog.vouched,
            self.bounds,
        )

    # -- knowledge-base work, one thread at a time ---------------------------------------------
    async def in_kb(self, fn: Callable, *args: Any) -> Any:
        """Run ``fn(*args)`` on the knowledge-base thread (one call at a time)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._kb_lock)

    # -- the rooms' public calls -----------------------------------------------------------------
    async def publish(self, items: Sequence[dict]) -> list[tuple[bytes, str]]:
        return await self.ingest.publish(items)

    async def import_records(self, wires: Sequence[bytes]) -> list[tuple[bytes | None, str]]:
        return await self.ingest.import_records(wires)

    async def revoke(self, record_id: bytes) -> str:
        return await self.ingest.revoke(record_id)

    async def query(
        self,
        text: str | None = None,
        vector: np.ndarray | None = None,
        k: int | None = None,
        filters: Filters | None = None,
        federated: bool = False,
    ) -> tuple[Selection, dict[bytes, SignedRecord]]:
        answer = await self.answer(text, vector, k, filters, federated)
        return answer.selection, answer.records

    async def answer(
        self,
        text: str | None = None,
        vector: np.ndarray | None = None,
        k: int | None = None,
        filters: Filters | None = None,
        federated: bool = False,
        votes: bool = False,
    ) -> Answer:
        """:meth:`query`, with the verdicts on its answers if ``votes`` (``Query.answer``)."""
        self.checker.queries += 1  # the background check waits for running queries
        try:
            return await self.queries.answer(text, vector, k, filters, federated, votes)
        finally:
            self.checker.queries -= 1
            self.checker.active()

    async def experience(self, record_id: bytes) -> Row | None:
        """One stored record by id, for ``GET /v1/experiences/{id}`` (:meth:`read_by_id`)."""
        return await self.in_kb(self.read_by_id, record_id)

    def read_by_id(self, record_id: bytes) -> Row | None:
        """Knowledge-base thread: the stored record ``record_id`` as every read or use by id
        sees it (``GET /v1/experiences/{id}``, feedback on it): a record still waiting for the
        embedding check is checked first, on demand; None if it fails (or its check could not
        be recorded: a full disk), as for an id not held."""
        row = self.kb.get(record_id)
        if row is not None and row.pending:
            if row.seq in self.checker.check_now([row.seq]).removed:
                return None
            row = self.kb.get(record_id)
        return row

    async def export_page(
        self, after_seq: int, limit: int, domain: str | None = None
    ) -> list[tuple[int, SignedRecord]]:
        return await self.queries.export_page(after_seq, limit, domain)

    async def sync_with(self, peer) -> int:
        return await self.antientropy.sync_with(peer)

    def note_stored(self, records: Sequence[SignedRecord]) -> None:
        """Every newly stored record enters the sync digest."""
        for r in records:
            self.digest.add(r.id, r.experience.created_at)
        if records:
            self.feedback.changed()  # verdicts on a lesson we lacked now join the graph

    def connected_peers(self) -> list:
        return list(self.host.get_network().connections.keys())

    def metrics(self) -> dict[str, Any]:
        from zoonode.net.host import library_noise

        verdicts = dict(self.gossip.stats.verdicts)
        # The library's per-attempt error lines, counted instead of printed (per process).
        counters = dict(self.counters) | {f"libp2p:{k}": v for k, v in library_noise.items()}
        # Weighed searches that stopped widening at the cap (a flooded neighbourhood).
        counters["query:pools_capped"] = self.kb.pools_capped
        return {
            "counters": counters,
            "gossip_verdicts": verdicts,
            "messages_in": self.gossip.stats.messages_in,
            "messages_out": self.gossip.stats.messages_out,
            "messages_not_forwarded": self.gossip.stats.not_forwarded,
            "gossip_reader_wait_s": self.gossip.stats.reader_wait_s,
            "gossip_malformed_rpc": self.gossip.stats.malformed_rpc,
            "ingest_queue": self.ingest.queued(),
            "backlog": self.checker.status(),
            "replica": len(self.kb.replica),
            "peers": len(self.connected_peers()),
            "banned": len(self.banned),
            "feedback_verdicts": dict(self.gossip.feedback.stats.verdicts)
            if self.gossip.feedback
            else {},
            "trust": self.feedback.status().as_dict(),
        }

    async def rate(self, target: bytes, verdict: int, task: str | None = None) -> dict[str, Any]:
        """This node's agents' verdict on an experience (``Feedback.rate``)."""
        from zoonode.node.feedback import task_digest
        from zoonode.protocol import FeedbackVerdict

        return await self.feedback.rate(
            target, FeedbackVerdict(verdict), task_digest(task) if task else None
        )


async def run_node(cfg: Config, *, announce: Callable[[NodeInfo], None] | None = None) -> None:
    """``zoonode start``: run until SIGINT/SIGTERM, then shut down cleanly."""
    node = Node(cfg)
    # The receiver is open before anything is announced: a signal sent as soon as the
    # addresses appear must still mean "shut down cleanly".
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(node.run)
            log.info("node started: peer %s, author %s", info.peer_id, node.author.hex())
            if announce is None:
                _print_info(info, peers=len(node.connected_peers()))
            else:
                announce(info)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
            node.stop()


def _print_info(info: NodeInfo, peers: int = 0) -> None:
    print(f"zoonode node running  peer id {info.peer_id}", flush=True)
    for addr in info.addrs:
        print(f"  listening on {addr}", flush=True)
    waiting = info.counts.get("pending", 0)
    print(
        f"  space {info.space}  data {info.data_dir}  experiences {info.counts['active']}"
        + (f" (+{waiting} waiting for the embedding check)" if waiting else ""),
        flush=True,
    )
    print(f"  backbone {info.backbone}  adapter {info.adapter or 'none (the anchor)'}", flush=True)
    if info.api:
        print(f"  HTTP API {info.api}  (token in {info.data_dir}/api.token)", flush=True)
    if not peers:
        from zoonode.humanview import JOIN_HINT

        print("  " + JOIN_HINT, flush=True)
        for addr in info.addrs:
            print(f"    --bootstrap {addr}", flush=True)
    log.info("started %s", json.dumps(info.as_dict()))  # the same, for log collectors
