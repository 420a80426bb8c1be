"""The node: identity, encoder, knowledge base, libp2p host, gossip, sync and query, under one
trio nursery.

Data flow of a peer's record: gossip validator (decode, signature, space, time, known, author
rate; REJECT penalises the forwarder) -> forwarded by GossipSub -> ingest queue -> embedding
check (re-encode the text; the code must agree) -> store (durable) -> replica. A record that
fails the embedding check is never stored or returned; its id is tombstoned and its author
banned on this node. Records missed while away come back through sync and take the same path.

All knowledge-base work (SQLite, hnswlib, the encoder) runs in one worker thread at a time
(``trio.to_thread`` with a CapacityLimiter of 1), so the trio loop stays free for libp2p.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import trio

from zoonode.config import Config
from zoonode.experiences import create_revocation, now_ms, sign_lessons
from zoonode.identity import IDENTITY_FILE, load_or_create_identity
from zoonode.knowledge import Filters, KnowledgeBase
from zoonode.native.encoder import Encoder, EncoderSettings
from zoonode.net.validation import (
    AuthorLimiter,
    Checked,
    Policy,
    Reason,
    Verdict,
    check_record,
    embedding_agreement,
)
from zoonode.protocol import Op, SignedRecord, public_key_bytes
from zoonode.selection import (
    Candidate,
    Selection,
    SelectionSettings,
    author_standing,
    select,
    standing_factor,
)
from zoonode.store import Incoming, InsertResult, Outcome

log = logging.getLogger("zoonode.node")

INGEST_BATCH = 64
API_URL_FILE = "api.url"
SYNC_INTERVAL = 30.0
DISCOVERY_INTERVAL = 2.0  # seconds between dials of peers mDNS found
DIAL_BACKOFF = 60.0  # seconds before a discovered peer that failed is tried again


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

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _unwrap(exc: BaseException) -> str:
    """ExceptionGroups from libp2p nest 10+ deep (pitfall 11): show the innermost cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class Node:
    def __init__(self, cfg: Config, *, encoder: Encoder | None = None) -> None:
        from zoonode.net.gossip import Gossip
        from zoonode.net.host import make_host
        from zoonode.net.sync import Digest

        self.cfg = cfg
        self.key = load_or_create_identity(cfg.data_path / IDENTITY_FILE)
        self.author = public_key_bytes(self.key)
        self.trusted_authors = {bytes.fromhex(a) for a in cfg.selection.trusted_authors}
        self._knows_peers_long = False  # set once a peer has been known past the maturity
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
        )
        # cos(W^T v_hat, u): honest records 0.963-0.985 on real text; a random text's code
        # median 0.09 (benchmarks/embedding_check.py).
        self.embedding_threshold = net.embedding_threshold
        self.host = make_host(self.key, cfg.network.listen, (), cfg.network.mdns)
        self.gossip = Gossip(
            self.host,
            self.policy,
            self.kb.store.known,
            self.banned.__contains__,
            self._on_gossip,
            flood_rate=net.flood_rate,
        )
        self.counters: dict[str, int] = defaultdict(int)
        self._kb_lock = trio.CapacityLimiter(1)
        self._ingest_send, self._ingest_recv = trio.open_memory_channel[tuple[SignedRecord, str]](
            10_000
        )
        self._synced: dict[str, float] = {}
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
        )

    async def current_info(self) -> NodeInfo:
        """``info()`` with the counts read on the knowledge-base thread: counting is a scan
        (~12 ms at 100k records) that must not stall the trio loop."""
        return self.info(await self._in_kb(self.kb.store.counts))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        import multiaddr

        from zoonode.net.rpc import QUERY_PROTOCOL, SYNC_PROTOCOL, serve

        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                await nursery.start(self.gossip.run_services)  # before listening: pitfall 3
                self.host.set_stream_handler(SYNC_PROTOCOL, serve(self._on_sync))
                self.host.set_stream_handler(QUERY_PROTOCOL, serve(self._on_query))
                listen = [multiaddr.Multiaddr(a) for a in self.cfg.network.listen]
                async with self.host.run(listen_addrs=listen):
                    try:
                        nursery.start_soon(self._ingest_loop)
                        nursery.start_soon(self._sync_loop)
                        if self.cfg.network.mdns:
                            nursery.start_soon(self._dial_discovered_loop)
                        if self.cfg.api.listen:
                            from zoonode.api import serve_api

                            urls = await nursery.start(serve_api, self, self.cfg.api.listen)
                            self.api_url = urls[0]
                            (self.cfg.data_path / API_URL_FILE).write_text(self.api_url + "\n")
                        await self.dial_bootstrap(self.cfg.network.bootstrap)
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
                                log.warning("host close: %s", _unwrap(exc))
        finally:
            self.kb.close()
            log.info("node %s stopped", self.peer_id)

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    async def dial_bootstrap(self, addrs: Sequence[str]) -> int:
        """Dial each bootstrap address; say which failed and why. Returns how many answered."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        ok, failures = 0, []
        for addr in addrs:
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
                with trio.fail_after(10):
                    await self.host.connect(info)
                ok += 1
            except BaseException as exc:
                if isinstance(exc, trio.Cancelled):
                    raise
                failures.append(f"{addr}: {_unwrap(exc)}")
        for failure in failures:
            log.warning("bootstrap peer did not answer: %s", failure)
        if addrs and not ok:
            log.error(
                "no bootstrap peer answered (%d tried); running alone until a peer dials us",
                len(addrs),
            )
        return ok

    async def connect(self, addr: str) -> None:
        if not await self.dial_bootstrap([addr]):
            raise ConnectionError(f"could not connect to {addr}")

    # -- knowledge-base work, one thread at a time ---------------------------------------------
    async def _in_kb(self, fn: Callable, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._kb_lock)

    # -- publishing ---------------------------------------------------------------------------
    async def publish(self, items: Sequence[dict]) -> list[tuple[bytes, str]]:
        """Encode, sign, store and gossip our own lessons. Returns (id, outcome) per item;
        a duplicate returns the existing id."""

        def work() -> tuple[list[SignedRecord], list[InsertResult]]:
            results: list[InsertResult | None] = [self._own_copy(item) for item in items]
            todo = [i for i, res in enumerate(results) if res is None]
            records: list[SignedRecord] = []
            if todo:
                compact = self.encoder.encode_compact([items[i]["text"] for i in todo])
                records = sign_lessons(self.encoder, self.key, [items[i] for i in todo], compact)
                stored = self.kb.ingest(
                    [Incoming(r, v, "local") for r, v in zip(records, compact, strict=True)]
                )
                for i, res in zip(todo, stored, strict=True):
                    results[i] = res
            return records, [r for r in results if r is not None]

        records, results = await self._in_kb(work)
        accepted = {res.id for res in results if res.outcome is Outcome.ACCEPTED}
        fresh = [r for r in records if r.id in accepted]
        for res in results:
            self.counters[f"publish:{res.outcome.name.lower()}"] += 1
        self._note_stored(fresh)
        await self.gossip.publish([r.wire for r in fresh])
        return [(res.id, res.outcome.name.lower()) for res in results]

    def _own_copy(self, item: dict) -> InsertResult | None:
        """Sharing a lesson we already hold (same text and domain, still active) returns the
        existing id instead of signing a second copy."""
        if item.get("parent") or not isinstance(item.get("text"), str):
            return None
        for row in self.kb.store.own_active(self.author, str(item.get("domain")), item["text"]):
            if _decode_row(row.wire).experience.text == item["text"]:
                return InsertResult(row.id, Outcome.DUPLICATE, row.seq, "already shared")
        return None

    async def import_records(self, wires: Sequence[bytes]) -> list[tuple[bytes | None, str]]:
        """Ingest signed records from a file (another node's export): the gossip checks, the
        embedding check, the store, then gossip onward. Returns (id, outcome) per wire, the
        outcome being accepted, duplicate or ``rejected:<reason>``."""
        limiter = AuthorLimiter(rate=1e9, burst=1e9)  # a file, not a live flood
        out: list[tuple[bytes | None, str]] = []
        fresh: list[tuple[SignedRecord, str]] = []
        for wire in wires:
            checked = check_record(
                wire, self.policy, now_ms(), lambda _id: False, limiter, self.banned.__contains__
            )
            if checked.verdict is not Verdict.ACCEPT:
                out.append((None, f"rejected:{checked.reason}"))
                continue
            record = checked.record
            out.append((record.id, "pending"))
            fresh.append((record, "import"))
        outcomes: dict[bytes, str] = {}
        stored = await self._in_kb(self._check_and_store, fresh, outcomes) if fresh else []
        self._note_stored(stored)
        await self.gossip.publish([r.wire for r in stored])
        out = [
            (record_id, outcomes.get(record_id, "duplicate") if outcome == "pending" else outcome)
            for record_id, outcome in out
        ]
        for _, outcome in out:
            self.counters[f"import:{outcome}"] += 1
        return out

    async def revoke(self, record_id: bytes) -> str:
        record = create_revocation(self.key, self.encoder.space, record_id)
        [result] = await self._in_kb(self.kb.ingest, [Incoming(record, None, "local")])
        if result.outcome is Outcome.ACCEPTED:
            self._note_stored([record])
            await self.gossip.publish([record.wire])
        return result.reason or result.outcome.name.lower()

    def _note_stored(self, records: Sequence[SignedRecord]) -> None:
        for r in records:
            self.digest.add(r.id, r.experience.created_at)

    # -- ingest: embedding check, then the store ------------------------------------------------
    async def _on_gossip(self, accepted: list[Checked], forwarder: str) -> None:
        for checked in accepted:
            assert checked.record is not None
            await self._ingest_send.send((checked.record, forwarder))

    async def _ingest_loop(self) -> None:
        while True:
            batch = [await self._ingest_recv.receive()]
            with trio.move_on_after(0.05):
                while len(batch) < INGEST_BATCH:
                    batch.append(await self._ingest_recv.receive())
            stored = await self._in_kb(self._check_and_store, batch)
            self._note_stored(stored)

    def _check_and_store(
        self, batch: list[tuple[SignedRecord, str]], outcomes: dict[bytes, str] | None = None
    ) -> list[SignedRecord]:
        """Runs in the worker thread. Returns the records newly stored; fills ``outcomes``
        (id -> accepted / duplicate / rejected:<reason>) when given."""
        outcomes = {} if outcomes is None else outcomes
        for r, _ in batch:
            if self.kb.store.known(r.id):
                outcomes[r.id] = "duplicate"
        batch = [(r, p) for r, p in batch if not self.kb.store.known(r.id)]
        lessons = [(r, p) for r, p in batch if r.experience.op is not Op.REVOKE]
        items = [Incoming(r, None, p) for r, p in batch if r.experience.op is Op.REVOKE]
        if lessons:
            compact = self.encoder.encode_compact([r.experience.text for r, _ in lessons])
            agreement = embedding_agreement(
                [r.experience.code for r, _ in lessons],
                compact,
                self.encoder.space_info.head,
                self.encoder.space_info.v_ref,
            )
            for (record, peer), vector, agree in zip(lessons, compact, agreement, strict=True):
                if agree >= self.embedding_threshold:
                    items.append(Incoming(record, vector, peer))
                    continue
                self.counters[f"reject:{Reason.EMBEDDING_MISMATCH}"] += 1
                outcomes[record.id] = f"rejected:{Reason.EMBEDDING_MISMATCH}"
                log.warning(
                    "embedding mismatch (agreement %.3f) in %s by author %s from %s: author banned",
                    agree,
                    record.id_hex[:16],
                    record.experience.author.hex()[:16],
                    peer,
                )
                self.kb.store.add_tombstone(
                    record.id, record.experience.created_at, Reason.EMBEDDING_MISMATCH
                )
                self.kb.store.ban(record.experience.author, Reason.EMBEDDING_MISMATCH)
                self.banned.add(record.experience.author)
        results = self.kb.ingest(items) if items else []
        stored = []
        for item, result in zip(items, results, strict=True):
            self.counters[f"store:{result.outcome.name.lower()}"] += 1
            outcome = result.outcome.name.lower()
            outcomes[item.record.id] = (
                f"rejected:{result.reason}" if result.outcome is Outcome.REJECTED else outcome
            )
            if result.outcome is Outcome.ACCEPTED:
                stored.append(item.record)
        return stored

    # -- queries ------------------------------------------------------------------------------
    async def query(
        self,
        text: str | None = None,
        vector: np.ndarray | None = None,
        k: int | None = None,
        filters: Filters | None = None,
        federated: bool = False,
    ) -> tuple[Selection, dict[bytes, SignedRecord]]:
        """Robust selection over our replica (and, if ``federated``, peers' answers).

        Returns the selection and the decoded records of the selected experiences."""
        sel = self.cfg.selection

        first_seen: dict[bytes, int] = {}

        def weigh(rows: list) -> np.ndarray:
            """Standing decides which member speaks for a near-duplicate cluster and which
            clusters fill the candidate list: a Sybil flood cannot crowd established lessons
            out of it, nor a fresh variant stand in for an established lesson."""
            first_seen.update(
                self.kb.authors_first_seen({r.author for r in rows} - first_seen.keys())
            )
            return np.array(
                [
                    standing_factor(sel.newcomer_weight, self.standing(r.author, first_seen))
                    for r in rows
                ]
            )

        def local() -> tuple[np.ndarray, list, bool]:
            q = self.encoder.encode_compact(text)[0] if vector is None else vector
            found = self.kb.search(q, k=sel.candidates, filters=filters, weigh=weigh)
            return q, found, self.newcomers_may_answer_alone()

        q, hits, alone = await self._in_kb(local)
        # Only the selected few are decoded (and their signatures checked again): decoding all
        # 150 candidates cost ~17 ms per query, more than the search itself.
        wires = {h.row.id: h.row.wire for h in hits}
        records: dict[bytes, SignedRecord] = {}
        candidates = [
            Candidate(
                h.row.id,
                h.vector,
                h.score,
                h.row.author,
                h.row.cluster or -h.row.seq,
                h.row.confidence,
                reputation=self.standing(h.row.author, first_seen),
                cluster_size=h.cluster_size,
            )
            for h in hits
        ]
        if federated:
            extra = await self.federated_candidates(q, sel.candidates)
            known = await self._in_kb(self.kb.authors_first_seen, [c.author for _, c in extra])
            seen = set(wires)
            for record, cand in extra:
                if cand.id not in seen:
                    records[cand.id] = record
                    candidates.append(replace(cand, reputation=self.standing(cand.author, known)))
                    seen.add(cand.id)
        settings = SelectionSettings(
            k=k or sel.k,
            min_similarity=sel.min_similarity,
            author_cap=sel.author_cap,
            newcomer_weight=sel.newcomer_weight,
            newcomers_alone=alone,
        )
        selection = select(q, candidates, settings)
        chosen = {
            s.candidate.id: records.get(s.candidate.id) or _decode_row(wires[s.candidate.id])
            for s in selection.selected
        }
        return selection, chosen

    def newcomers_may_answer_alone(self) -> bool:
        """``selection.newcomers_alone``: with "bootstrap", newer authors may answer where no
        established one does only until this node has known some peer for the maturity; a
        node that has just joined would otherwise answer nothing from its peers for days."""
        policy = self.cfg.selection.newcomers_alone
        if policy != "bootstrap":
            return policy == "always"
        if not self._knows_peers_long:  # once true it stays true: no query needed then
            first = self.kb.first_peer_acceptance(self.author)
            maturity_ms = int(self.cfg.selection.maturity_days * 86_400_000)
            self._knows_peers_long = first is not None and now_ms() - first >= maturity_ms
        return not self._knows_peers_long

    def standing(self, author: bytes, first_seen: dict[bytes, int]) -> float:
        """An author's standing with this node (selection.author_standing): our own identity
        and the operator's trusted authors are established at once."""
        if author == self.author or author in self.trusted_authors:
            return 1.0
        maturity_ms = int(self.cfg.selection.maturity_days * 86_400_000)
        return author_standing(first_seen.get(author), now_ms(), maturity_ms)

    async def federated_candidates(
        self, q: np.ndarray, k: int
    ) -> list[tuple[SignedRecord, Candidate]]:
        """Ask every connected peer for its top k; validate answers like gossip."""
        from zoonode.net.rpc import QUERY_PROTOCOL, RpcError, request

        answers: list[bytes] = []

        async def ask(peer) -> None:
            try:
                resp = await request(
                    self.host,
                    peer,
                    QUERY_PROTOCOL,
                    {"space": self.encoder.space, "vector": np.asarray(q, "<f4").tobytes(), "k": k},
                )
                wires = resp.get("wires", [])
                if isinstance(wires, list):
                    answers.extend(w for w in wires[:k] if isinstance(w, bytes))
            except RpcError as exc:
                log.debug("federated query to %s failed: %s", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in self.connected_peers():
                nursery.start_soon(ask, peer)
        limiter = AuthorLimiter(rate=1e9, burst=1e9)
        valid = []
        for wire in answers:
            checked = check_record(
                wire, self.policy, now_ms(), lambda _id: False, limiter, self.banned.__contains__
            )
            if checked.verdict is Verdict.ACCEPT and checked.record.experience.op is not Op.REVOKE:
                valid.append(checked.record)
        if not valid:
            return []

        def embed() -> tuple[np.ndarray, np.ndarray]:
            compact = self.encoder.encode_compact([r.experience.text for r in valid])
            agree = embedding_agreement(
                [r.experience.code for r in valid],
                compact,
                self.encoder.space_info.head,
                self.encoder.space_info.v_ref,
            )
            return compact, agree

        compact, agree = await self._in_kb(embed)
        out = []
        for record, vector, ok in zip(valid, compact, agree, strict=True):
            if ok >= self.embedding_threshold:
                cluster = -int.from_bytes(record.id[:6], "big")  # unknown locally: own group
                out.append(
                    (
                        record,
                        Candidate(
                            record.id,
                            vector,
                            float(vector @ q),
                            record.experience.author,
                            cluster,
                            record.experience.confidence,
                        ),
                    )
                )
        return out

    async def _on_query(self, peer: str, req: dict) -> dict:
        if req.get("space") != self.encoder.space:
            return {"error": "wrong_space"}
        vector = np.frombuffer(req["vector"], "<f4")
        if vector.shape != (self.encoder.space_info.hidden,) or not np.all(np.isfinite(vector)):
            return {"error": "bad_vector"}
        k = max(1, min(int(req.get("k", 10)), 200))
        norm = float(np.linalg.norm(vector))
        if norm == 0:
            return {"error": "bad_vector"}
        hits = await self._in_kb(self.kb.search, vector / norm, k)
        self.counters["query:served"] += 1
        return {"wires": [h.row.wire for h in hits], "scores": [h.score for h in hits]}

    # -- sync ---------------------------------------------------------------------------------
    async def _on_sync(self, peer: str, req: dict) -> dict:
        from zoonode.net.sync import MAX_GET, MAX_IDS

        op = req.get("op")
        if op == "digest":
            return {"buckets": self.digest.to_wire(), "bucket_ms": self.digest.bucket_ms}
        if op == "ids":
            start, end = int(req["start"]), int(req["end"])
            ids = await self._in_kb(self.kb.store.ids_between, start, end, MAX_IDS)
            return {"ids": ids}
        if op == "get":
            ids = [i for i in req["ids"][:MAX_GET] if isinstance(i, bytes)]
            return {"wires": await self._in_kb(self.kb.store.wires, ids)}
        return {"error": "unknown op"}

    def connected_peers(self) -> list:
        return list(self.host.get_network().connections.keys())

    async def _dial_discovered_loop(self) -> None:
        """mDNS (zeroconf, in the library) only fills the peerstore; this dials what it
        found. A peer that fails is retried after ``DIAL_BACKOFF`` seconds."""
        from libp2p.peer.peerinfo import PeerInfo

        failed_at: dict[str, float] = {}
        store = self.host.get_peerstore()
        while True:
            connected = set(self.connected_peers())
            for peer in store.peer_ids():
                key = str(peer)
                if peer == self.host.get_id() or peer in connected:
                    continue
                if time.monotonic() - failed_at.get(key, -1e9) < DIAL_BACKOFF:
                    continue
                addrs = store.addrs(peer)
                if not addrs:
                    continue
                try:
                    with trio.fail_after(10):
                        await self.host.connect(PeerInfo(peer, addrs))
                    self.counters["discovery:dialled"] += 1
                    log.info("connected to discovered peer %s", key)
                except BaseException as exc:
                    if isinstance(exc, trio.Cancelled):
                        raise
                    failed_at[key] = time.monotonic()
                    self.counters["discovery:failed"] += 1
                    log.debug("discovered peer %s did not answer: %s", key, _unwrap(exc))
            await trio.sleep(DISCOVERY_INTERVAL)

    async def _sync_loop(self) -> None:
        while True:
            for peer in self.connected_peers():
                key = str(peer)
                if time.monotonic() - self._synced.get(key, -1e9) >= SYNC_INTERVAL:
                    self._synced[key] = time.monotonic()
                    with trio.move_on_after(120):
                        await self.sync_with(peer)
            await trio.sleep(0.5)

    async def sync_with(self, peer) -> int:
        """One anti-entropy round with ``peer``; returns how many records were fetched."""
        from zoonode.net.rpc import SYNC_PROTOCOL, RpcError, request
        from zoonode.net.sync import MAX_GET

        fetched = 0
        limiter = AuthorLimiter(rate=1e9, burst=1e9)  # backlog, not a live flood
        try:
            theirs = await request(self.host, peer, SYNC_PROTOCOL, {"op": "digest"})
            if theirs.get("bucket_ms") != self.digest.bucket_ms:
                return 0
            for start in self.digest.differing(theirs["buckets"]):
                listed = await request(
                    self.host,
                    peer,
                    SYNC_PROTOCOL,
                    {"op": "ids", "start": start, "end": start + self.digest.bucket_ms},
                )
                ids = [i for i in listed.get("ids", []) if isinstance(i, bytes)]
                missing = await self._in_kb(
                    lambda ids=ids: [i for i in ids if not self.kb.store.known(i)]
                )
                for chunk in range(0, len(missing), MAX_GET):
                    got = await request(
                        self.host,
                        peer,
                        SYNC_PROTOCOL,
                        {"op": "get", "ids": missing[chunk : chunk + MAX_GET]},
                    )
                    for wire in got.get("wires", []):
                        checked = check_record(
                            wire,
                            self.policy,
                            now_ms(),
                            self.kb.store.known,
                            limiter,
                            self.banned.__contains__,
                        )
                        self.counters[f"sync:{checked.verdict.value}:{checked.reason}"] += 1
                        if checked.verdict is Verdict.ACCEPT:
                            await self._ingest_send.send((checked.record, str(peer)))
                            fetched += 1
        except (RpcError, ValueError, KeyError, TypeError) as exc:
            log.debug("sync with %s failed: %s", peer, exc)
        if fetched:
            log.info("sync: fetched %d records from %s", fetched, peer)
        return fetched

    async def export_page(
        self, after_seq: int, limit: int, domain: str | None = None
    ) -> list[tuple[int, SignedRecord]]:
        """Active lessons after ``after_seq``, in acceptance order: a page of ``export``."""
        rows = await self._in_kb(self.kb.store.active_page, after_seq, limit, domain)
        return [(row.seq, _decode_row(row.wire)) for row in rows]

    def metrics(self) -> dict[str, Any]:
        verdicts = dict(self.gossip.stats.verdicts)
        return {
            "counters": dict(self.counters),
            "gossip_verdicts": verdicts,
            "messages_in": self.gossip.stats.messages_in,
            "messages_out": self.gossip.stats.messages_out,
            "messages_not_forwarded": self.gossip.stats.not_forwarded,
            "replica": len(self.kb.replica),
            "peers": len(self.connected_peers()),
        }


def _decode_row(wire: bytes) -> SignedRecord:
    from zoonode.protocol import decode

    return decode(wire)


async def run_node(cfg: Config, *, announce: Callable[[NodeInfo], None] | None = None) -> None:
    """``zoonode start``: run until SIGINT/SIGTERM, then shut down cleanly."""
    node = Node(cfg)
    # The receiver is open before anything is announced: a signal sent as soon as the
    # addresses appear must still mean "shut down cleanly".
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(node.run)
            log.info("node started: peer %s, author %s", info.peer_id, node.author.hex())
            (announce or _print_info)(info)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
            node.stop()


def _print_info(info: NodeInfo) -> None:
    print(f"zoonode node running  peer id {info.peer_id}", flush=True)
    for addr in info.addrs:
        print(f"  listening on {addr}", flush=True)
    print(
        f"  space {info.space}  data {info.data_dir}  experiences {info.counts['active']}",
        flush=True,
    )
    if info.api:
        print(f"  HTTP API {info.api}  (token in {info.data_dir}/api.token)", flush=True)
    print(json.dumps({"event": "started", **info.as_dict()}), file=sys.stderr, flush=True)
