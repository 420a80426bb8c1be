"""The durable experience store: one SQLite file in WAL mode, the node's source of truth.

Why SQLite: it is in the standard library, one file plus its WAL, crash-safe by design
(a committed transaction survives kill -9; ``synchronous=FULL`` also survives power loss), and
its SQL gives the query filters (domain prefix, author, confidence, time) for free. LMDB would
be faster for raw puts, but a batch of ~100 records per transaction already makes the fsync
cost negligible (see benchmarks/replica.py).

Rules applied here (protocol SPEC section 1): ids are unique (insert is idempotent), only a
record's author may modify or revoke it, a revoke hides its target, a modify supersedes its
parent, and children that arrive before their parent are applied when it arrives.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import msgpack
import numpy as np

from zoonode.protocol import Op, SignedFeedback, SignedRecord

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- acceptance order; the replica's label
    id BLOB NOT NULL UNIQUE,
    wire BLOB NOT NULL,                     -- canonical signed bytes, exactly as received
    op INTEGER NOT NULL,
    author BLOB NOT NULL,
    domain TEXT NOT NULL,
    confidence REAL NOT NULL,
    created_at INTEGER NOT NULL,
    accepted_at INTEGER NOT NULL,
    peer TEXT,
    parent BLOB,
    status INTEGER NOT NULL,
    cluster INTEGER,                        -- seq of the near-duplicate cluster's first member
    vector BLOB                             -- compact float32 vector (exact, from the text)
);
CREATE INDEX IF NOT EXISTS records_parent ON records(parent) WHERE parent IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_author ON records(author);
CREATE INDEX IF NOT EXISTS records_created ON records(created_at);
CREATE INDEX IF NOT EXISTS records_evict ON records(op, status, confidence, created_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
-- ids we hold no record for on purpose (evicted, or rejected after the embedding check):
-- sync counts them as known so that they are never fetched again.
CREATE TABLE IF NOT EXISTS tombstones (
    id BLOB PRIMARY KEY, created_at INTEGER NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS banned (author BLOB PRIMARY KEY, reason TEXT NOT NULL,
                                   at INTEGER NOT NULL);
"""

# Schema versions (``PRAGMA user_version``). A store opened by this code is migrated forward,
# one transaction per step; the step's number is written in the same transaction, so a crash
# mid-migration leaves the previous version intact and the step runs again on the next open.
#   0 -> 1: the ``authors`` table (first acceptance per author, kept on insert: standing's
#           basis, read per query, no longer a min(accepted_at) GROUP BY over every row of a
#           prolific author) and ``records.content_key`` (an index for "have we shared this text
#           in this domain already?", no longer an instr() scan of all the author's lessons);
#           the cluster index also covers status (cluster sizes read from the index alone).
#   1 -> 2: two-stage ingest (docs/ingest.md): a record stored before its embedding check is
#           *pending*; the column holds its place in the checker's queue (lower first; NULL
#           once checked), and ``vector`` holds the vector its code implies until the check
#           replaces it with the text's own. Every record of an older store was checked before
#           it was stored, so all are NULL. The replica journal lists keys whose vectors
#           changed or went away after insertion, so a restarted replica catches up with its
#           snapshot (replica.py, knowledge.py). The cluster index also covers ``pending``
#           (cluster sizes count checked members only, still from the index alone).
#   2 -> 3: the ``feedback`` table (issue #24): agents' signed verdicts, one standing verdict
#           per (voter, target), the latest; ``seq`` is acceptance order (trust reads pages).
SCHEMA_VERSION = 3

_MIGRATION_1 = """
CREATE TABLE IF NOT EXISTS authors (
    author BLOB PRIMARY KEY,
    first_seen INTEGER NOT NULL             -- ms, our clock: when we first accepted its record
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS authors_first_seen ON authors(first_seen);
INSERT OR IGNORE INTO authors
    SELECT author, min(accepted_at) FROM records GROUP BY author;
ALTER TABLE records ADD COLUMN content_key BLOB;
CREATE INDEX IF NOT EXISTS records_content ON records(content_key)
    WHERE content_key IS NOT NULL;
DROP INDEX IF EXISTS records_cluster;
CREATE INDEX IF NOT EXISTS records_cluster_status ON records(cluster, status)
    WHERE cluster IS NOT NULL;
"""


def content_key(author: bytes, domain: str, text: str) -> bytes:
    """16-byte BLAKE2b of (author, domain, text), length-prefixed: the index key of "this
    author already holds this text in this domain" (own lessons shared twice)."""
    h = hashlib.blake2b(digest_size=16)
    d = domain.encode()
    h.update(author)
    h.update(len(d).to_bytes(4, "big"))
    h.update(d)
    h.update(text.encode())
    return h.digest()


def _migrate_1(db: sqlite3.Connection) -> None:
    # One statement at a time: executescript() would commit the migration's transaction.
    for statement in _MIGRATION_1.split(";"):
        if statement.strip():
            db.execute(statement)
    keys = []
    for seq, wire in db.execute("SELECT seq, wire FROM records WHERE op != ?", (int(Op.REVOKE),)):
        fields = msgpack.unpackb(wire, raw=False, strict_map_key=False)
        keys.append((content_key(fields[2], fields[7], fields[6]), seq))
    db.executemany("UPDATE records SET content_key = ? WHERE seq = ?", keys)


_MIGRATION_2 = """
ALTER TABLE records ADD COLUMN pending INTEGER;
CREATE INDEX IF NOT EXISTS records_pending ON records(pending, created_at DESC)
    WHERE pending IS NOT NULL;
CREATE TABLE IF NOT EXISTS replica_journal (serial INTEGER PRIMARY KEY AUTOINCREMENT,
                                            seq INTEGER NOT NULL);
DROP INDEX IF EXISTS records_cluster_status;
CREATE INDEX IF NOT EXISTS records_cluster_status ON records(cluster, status, pending)
    WHERE cluster IS NOT NULL;
"""


def _migrate_2(db: sqlite3.Connection) -> None:
    for statement in _MIGRATION_2.split(";"):
        if statement.strip():
            db.execute(statement)


_MIGRATION_3 = """
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- acceptance order
    id BLOB NOT NULL UNIQUE,
    wire BLOB NOT NULL,                     -- canonical signed bytes, as received
    voter BLOB NOT NULL,
    target BLOB NOT NULL,                   -- an experience id (maybe not held yet)
    verdict INTEGER NOT NULL,               -- 1 helpful, -1 harmful, 0 withdrawn
    task BLOB,
    created_at INTEGER NOT NULL,
    accepted_at INTEGER NOT NULL,
    peer TEXT,
    UNIQUE (voter, target)
);
CREATE INDEX IF NOT EXISTS feedback_target ON feedback(target);
CREATE INDEX IF NOT EXISTS feedback_created ON feedback(created_at)
"""


def _migrate_3(db: sqlite3.Connection) -> None:
    for statement in _MIGRATION_3.split(";"):
        if statement.strip():
            db.execute(statement)


_MIGRATIONS = {1: _migrate_1, 2: _migrate_2, 3: _migrate_3}

# Records by state (op, status, waiting for the embedding check), kept by triggers in the same
# transaction as every write, so ``Store.counts`` reads a few rows instead of scanning the
# table: the scan took ~0.4 s at 100k records (5 s cold) on the knowledge-base thread, and a
# client polling ``/v1/status`` during a burst held up stage 1 with it. TEMP objects: built on
# open (one grouped read of two indexes), never written to the file, so the schema is unchanged.
_STATE_COUNTS = """
CREATE TEMP TABLE record_counts (
    op INTEGER NOT NULL, status INTEGER NOT NULL, pending INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (op, status, pending)
);
CREATE TEMP TRIGGER record_counts_insert AFTER INSERT ON records BEGIN
    INSERT INTO record_counts VALUES (new.op, new.status, new.pending IS NOT NULL, 1)
        ON CONFLICT (op, status, pending) DO UPDATE SET n = n + 1;
END;
CREATE TEMP TRIGGER record_counts_delete AFTER DELETE ON records BEGIN
    UPDATE record_counts SET n = n - 1
        WHERE op = old.op AND status = old.status AND pending = (old.pending IS NOT NULL);
END;
CREATE TEMP TRIGGER record_counts_update AFTER UPDATE OF op, status, pending ON records
WHEN old.op != new.op OR old.status != new.status
    OR (old.pending IS NULL) != (new.pending IS NULL)
BEGIN
    UPDATE record_counts SET n = n - 1
        WHERE op = old.op AND status = old.status AND pending = (old.pending IS NOT NULL);
    INSERT INTO record_counts VALUES (new.op, new.status, new.pending IS NOT NULL, 1)
        ON CONFLICT (op, status, pending) DO UPDATE SET n = n + 1;
END;
"""


class Status(IntEnum):
    ACTIVE = 0
    REVOKED = 1
    SUPERSEDED = 2
    INVALID = 3  # a modify/revoke by someone who is not the parent's author


_STATUSES = {int(status): status for status in Status}


class Outcome(IntEnum):
    ACCEPTED = 0
    DUPLICATE = 1
    REJECTED = 2


@dataclass(frozen=True)
class Incoming:
    """A verified record with the exact compact vector of its text (None for revokes)."""

    record: SignedRecord
    vector: np.ndarray | None
    peer: str | None = None
    # A near-duplicate found by the caller: the cluster id (a seq) of a stored record, or the
    # id of an earlier record in the same batch.
    cluster_hint: int | bytes | None = None
    # Not None: the record waits for the embedding check (``vector`` is its code's vector);
    # the value orders the checker's queue, lower first.
    pending: int | None = None


@dataclass(frozen=True)
class InsertResult:
    id: bytes
    outcome: Outcome
    seq: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class Row:
    seq: int
    id: bytes
    wire: bytes | None  # None where read as a query candidate (Store.candidate_fields)
    op: Op
    author: bytes
    domain: str
    confidence: float
    created_at: int
    accepted_at: int
    peer: str | None
    parent: bytes | None
    status: Status
    cluster: int | None
    pending: bool = False  # stored, not yet through the embedding check


_ROW_COLUMNS = (
    "seq, id, wire, op, author, domain, confidence, created_at, accepted_at, peer, "
    "parent, status, cluster, pending IS NOT NULL"
)


# ``_ROW_COLUMNS`` less the wire (its place kept): ``Store.candidate_fields``.
_CANDIDATE_COLUMNS = _ROW_COLUMNS.replace("wire", "NULL", 1)

_OPS = {int(op): op for op in Op}  # a dict lookup is ~20x cheaper than Op(value)


def _row(values: tuple) -> Row:
    return Row(
        values[0],
        values[1],
        values[2],
        _OPS[values[3]],
        values[4],
        values[5],
        values[6],
        values[7],
        values[8],
        values[9],
        values[10],
        _STATUSES[values[11]],
        values[12],
        bool(values[13]),
    )


# Positions in a ``Store.candidate_fields`` tuple: ``_ROW_COLUMNS``, then the vector.
CANDIDATE_SEQ, CANDIDATE_AUTHOR, CANDIDATE_DOMAIN, CANDIDATE_CONFIDENCE = 0, 4, 5, 6
CANDIDATE_CREATED, CANDIDATE_STATUS, CANDIDATE_CLUSTER, CANDIDATE_PENDING = 7, 11, 12, 13
CANDIDATE_VECTOR = 14
candidate_row = _row  # a Row from a candidate_fields tuple (its wire None until read)

CACHE_KB = 64 * 1024  # SQLite page cache per store
FIRST_SEEN_CACHE = 65_536  # authors whose first acceptance is kept in memory (~10 MB)


@dataclass
class _Batch:
    """What one ``Store.insert`` transaction has read and written so far: ``seqs`` (id ->
    seq, held before or inserted now), ``children`` (parent id -> (seq, op, author) of the
    records naming it), ``authors`` whose first-seen row is written, ``own_cluster`` (id ->
    seq of the records inserted now that start their own cluster, written at the end)."""

    seqs: dict[bytes, int]
    children: dict[bytes, list[tuple[int, int, bytes]]]
    authors: set[bytes] = field(default_factory=set)
    own_cluster: dict[bytes, int] = field(default_factory=dict)


class StoreError(RuntimeError):
    """The database file cannot be opened or belongs to another space."""


class StorageFull(StoreError):
    """A write found the disk (or the database's size limit) full. Nothing of it was kept;
    reads go on, and writes succeed again once there is room."""


def _is_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "database or disk is full" in str(exc)
    )


class Store:
    """SQLite-backed record store. Not thread-safe: one owner calls it."""

    def __init__(self, path: Path, space: bytes, *, durable: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            # 64 MB of page cache (default 2 MB): at 1M records the id, author and cluster
            # indexes no longer fit in 2 MB and every insert re-reads their pages.
            self.db.execute(f"PRAGMA cache_size=-{CACHE_KB}")
            # No memory map (PRAGMA mmap_size), tried three times: ~0.3-0.5 ms a query at 100k
            # lessons (paired A/B) for ~370 MB more RSS (the mapped pages count as the
            # process's): benchmarks/results/versus-chroma-c229521.json.
            self.db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        stored = self.get_meta("space")
        if stored is None:
            self.set_meta("space", space)
        elif stored != space:
            raise StoreError(
                f"store {path} holds space {stored.hex()}, the encoder is {space.hex()}"
            )
        self._count_states()
        # Lessons that count towards capacity, kept up to date: a count(*) per batch scans
        # the table (~55 ms at 1M records).
        self._lessons = sum(n for (op, _, _), n in self._state_counts().items() if op != Op.REVOKE)
        # authors_first_seen's values, which never change once written (per query: the
        # candidates' authors, a few dozen).
        self._first_seen: dict[bytes, int] = {}
        self.feedback = FeedbackStore(self)

    def _migrate(self) -> None:
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {version}; this zoonode knows up to "
                f"{SCHEMA_VERSION} (a newer zoonode wrote it)"
            )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            started = time.perf_counter()
            self.db.execute("BEGIN IMMEDIATE")
            try:
                _MIGRATIONS[step](self.db)
                self.db.execute(f"PRAGMA user_version = {step}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            log.info(
                "store %s migrated to schema %d in %.1f s",
                self.path,
                step,
                time.perf_counter() - started,
            )

    def _count_states(self) -> None:
        """Fill ``record_counts`` and install its triggers: every record by (op, status) from
        the covering index ``records_evict``, those waiting for the check from the partial
        index ``records_pending``."""
        self.db.executescript(_STATE_COUNTS)
        pending = {
            (op, status): n
            for op, status, n in self.db.execute(
                "SELECT op, status, count(*) FROM records WHERE pending IS NOT NULL "
                "GROUP BY op, status"
            )
        }
        rows = []
        for op, status, n in self.db.execute(
            "SELECT op, status, count(*) FROM records GROUP BY op, status"
        ).fetchall():
            waiting = pending.get((op, status), 0)
            rows += [(op, status, 0, n - waiting), (op, status, 1, waiting)]
        self.db.executemany("INSERT INTO record_counts VALUES (?, ?, ?, ?)", rows)

    def _state_counts(self) -> dict[tuple[int, int, int], int]:
        return {
            (op, status, pending): n
            for op, status, pending, n in self.db.execute(
                "SELECT op, status, pending, n FROM record_counts WHERE n > 0"
            )
        }

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction. On a full disk SQLite has already rolled it back (rolling
        back again would fail): raise StorageFull, with the store as it was before."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            yield
            self.db.execute("COMMIT")
        except BaseException as exc:
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error as again:
                    log.warning("store: rollback failed: %s", again)
            if _is_full(exc):
                raise StorageFull(
                    f"the disk holding {self.path} is full: writes are refused until there "
                    "is room again (reads go on)"
                ) from exc
            raise

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: bytes) -> None:
        with self._write():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- writes -------------------------------------------------------------------------------
    def insert(self, items: Sequence[Incoming]) -> list[InsertResult]:
        """Insert a batch in ONE transaction; when this returns, accepted rows are durable.

        Per batch, not per record: the ids already held and the children waiting for any of
        them are read in one query each, a new author's first-seen row is written once, and
        the new clusters (``cluster = seq``) are set in one ``executemany`` before the
        commit; what the batch itself inserts is tracked in ``_Batch`` so that each record
        sees the ones before it as it would one statement at a time."""
        now = time.time_ns() // 1_000_000
        results: list[InsertResult] = []
        with self._write():
            batch = _Batch(
                seqs=self._seqs_of([item.record.id for item in items]),
                children=self._children_of([item.record.id for item in items]),
            )
            for item in items:
                results.append(self._insert_one(item, now, batch))
            if batch.own_cluster:
                self.db.executemany(
                    "UPDATE records SET cluster = seq WHERE seq = ?",
                    [(seq,) for seq in batch.own_cluster.values()],
                )
        self._lessons += sum(
            1
            for item, res in zip(items, results, strict=True)
            if res.outcome is Outcome.ACCEPTED and item.record.experience.op is not Op.REVOKE
        )
        return results

    def _seqs_of(self, ids: Sequence[bytes]) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = list(ids[start : start + 900])
            marks = ",".join("?" * len(chunk))
            out.update(self.db.execute(f"SELECT id, seq FROM records WHERE id IN ({marks})", chunk))
        return out

    def _children_of(self, ids: Sequence[bytes]) -> dict[bytes, list[tuple[int, int, bytes]]]:
        """(seq, op, author) of the held records whose parent is one of ``ids``."""
        out: dict[bytes, list[tuple[int, int, bytes]]] = {}
        for start in range(0, len(ids), 900):
            chunk = list(ids[start : start + 900])
            marks = ",".join("?" * len(chunk))
            for parent, seq, op, author in self.db.execute(
                f"SELECT parent, seq, op, author FROM records WHERE parent IN ({marks}) "
                "ORDER BY seq",
                chunk,
            ):
                out.setdefault(parent, []).append((seq, op, author))
        return out

    def _insert_one(self, item: Incoming, now: int, batch: _Batch) -> InsertResult:
        record, exp = item.record, item.record.experience
        existing = batch.seqs.get(record.id)
        if existing is not None:
            return InsertResult(record.id, Outcome.DUPLICATE, existing)
        status = Status.ACTIVE
        if exp.op is not Op.ADD:
            assert exp.parent is not None
            parent = self.db.execute(
                "SELECT author, status FROM records WHERE id = ?", (exp.parent,)
            ).fetchone()
            if parent is not None and parent[0] != exp.author:
                return InsertResult(record.id, Outcome.REJECTED, reason="not_author")
            if parent is not None and parent[1] == Status.ACTIVE:
                new = Status.REVOKED if exp.op is Op.REVOKE else Status.SUPERSEDED
                self.db.execute("UPDATE records SET status = ? WHERE id = ?", (new, exp.parent))
        if exp.op is not Op.REVOKE:
            status = self._status_from_early_children(batch.children.get(record.id, ()), exp.author)
        vector = None if item.vector is None else np.asarray(item.vector, "<f4").tobytes()
        cluster = item.cluster_hint
        if isinstance(cluster, bytes):
            if cluster in batch.own_cluster:  # its cluster = seq is not written yet
                cluster = batch.own_cluster[cluster]
            else:
                found = self.db.execute(
                    "SELECT cluster FROM records WHERE id = ?", (cluster,)
                ).fetchone()
                cluster = found[0] if found else None
        key = None if exp.op is Op.REVOKE else content_key(exp.author, exp.domain, exp.text)
        cur = self.db.execute(
            "INSERT INTO records (id, wire, op, author, domain, confidence, created_at, "
            "accepted_at, peer, parent, status, cluster, vector, content_key, pending) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.wire,
                int(exp.op),
                exp.author,
                exp.domain,
                exp.confidence,
                exp.created_at,
                now,
                item.peer,
                exp.parent,
                int(status),
                cluster,
                vector,
                key,
                None if exp.op is Op.REVOKE else item.pending,
            ),
        )
        if exp.author not in batch.authors:
            batch.authors.add(exp.author)
            self.db.execute("INSERT OR IGNORE INTO authors VALUES (?, ?)", (exp.author, now))
        seq = cur.lastrowid
        batch.seqs[record.id] = seq
        if exp.parent is not None:
            batch.children.setdefault(exp.parent, []).append((seq, int(exp.op), exp.author))
        if cluster is None and exp.op is not Op.REVOKE:
            batch.own_cluster[record.id] = seq
        return InsertResult(record.id, Outcome.ACCEPTED, seq)

    def _status_from_early_children(
        self, children: Iterable[tuple[int, int, bytes]], author: bytes
    ) -> Status:
        """A revoke or modify may arrive before its parent: apply it now, or void it."""
        status = Status.ACTIVE
        for child_seq, op, child_author in children:
            if child_author != author:
                self.db.execute(
                    "UPDATE records SET status = ? WHERE seq = ?", (Status.INVALID, child_seq)
                )
            elif op == Op.REVOKE:
                status = Status.REVOKED
            elif status is Status.ACTIVE:
                status = Status.SUPERSEDED
        return status

    def evict_over(self, capacity: int) -> list[Row]:
        """Delete the lowest-value lessons above ``capacity`` and return them (for logs and
        metrics). Order: inactive (revoked, superseded, invalid) first, then records still
        waiting for the embedding check (latest in the checker's queue first), then lowest
        confidence, then oldest. Revoke records are never evicted: they must keep stopping
        re-delivery."""
        excess = self._lessons - capacity
        if excess <= 0:
            return []
        victims = [
            _row(r)
            for r in self.db.execute(
                f"SELECT {_ROW_COLUMNS} FROM records WHERE op != ? "
                "ORDER BY status = 0, pending IS NULL, -pending, confidence, created_at LIMIT ?",
                (Op.REVOKE, excess),
            )
        ]
        with self._write():
            self.db.executemany("DELETE FROM records WHERE seq = ?", [(v.seq,) for v in victims])
            self.db.executemany(
                "INSERT OR IGNORE INTO tombstones VALUES (?, ?, 'evicted')",
                [(v.id, v.created_at) for v in victims],
            )
        self._lessons -= len(victims)
        for victim in victims:
            log.info(
                "evicted %s (status %s, confidence %.2f): store over capacity %d",
                victim.id.hex()[:16],
                victim.status.name.lower(),
                victim.confidence,
                capacity,
            )
        return victims

    # -- the embedding check's backlog -----------------------------------------------------------
    def pending_rows(self, limit: int, seqs: Sequence[int] | None = None) -> list[Row]:
        """Records waiting for the embedding check, first in the checker's order (``pending``
        value, then newest ``created_at``); or, with ``seqs``, those of them still pending."""
        if seqs is not None:
            return [r for r in self.rows_by_seq(seqs).values() if r.pending][:limit]
        rows = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM records WHERE pending IS NOT NULL "
            "ORDER BY pending, created_at DESC LIMIT ?",
            (limit,),
        )
        return [_row(r) for r in rows]

    def pending_seqs(self, seqs: Sequence[int]) -> set[int]:
        """Those of ``seqs`` still waiting for the embedding check: one read of the seqs
        alone (by primary key), not of their rows."""
        return {r[0] for r in self._by_seq("seq", seqs, "AND pending IS NOT NULL")}

    def pending_by_author(self) -> dict[bytes, int]:
        """How many records of each author wait for the check (start-up: the backlog)."""
        return dict(
            self.db.execute(
                "SELECT author, count(*) FROM records WHERE pending IS NOT NULL GROUP BY author"
            ).fetchall()
        )

    def checked_authors(self) -> set[bytes]:
        """Authors with at least one lesson that passed the embedding check (or was ours)."""
        return {
            r[0]
            for r in self.db.execute(
                "SELECT DISTINCT author FROM records WHERE pending IS NULL AND op != ?",
                (Op.REVOKE,),
            )
        }

    def promote(self, items: Sequence[tuple[int, np.ndarray, int | None]]) -> list[int]:
        """(seq, exact vector, cluster) per checked record: it becomes active with its text's
        vector, in one transaction with the replica journal. Returns the seqs that were still
        pending (a record checked twice, by the checker and a query, is promoted once)."""
        done: list[int] = []
        with self._write():
            for seq, vector, cluster in items:
                cur = self.db.execute(
                    "UPDATE records SET vector = ?, pending = NULL, cluster = coalesce(?, seq) "
                    "WHERE seq = ? AND pending IS NOT NULL",
                    (np.asarray(vector, "<f4").tobytes(), cluster, int(seq)),
                )
                if cur.rowcount:
                    done.append(int(seq))
            self.db.executemany(
                "INSERT INTO replica_journal (seq) VALUES (?)", [(s,) for s in done]
            )
        return done

    def remove(self, rows: Sequence[Row], reason: str) -> list[Row]:
        """Delete records that failed the embedding check (or whose author was banned for it)
        and tombstone their ids, in one transaction with the replica journal. Returns the rows
        that were still there."""
        done: list[Row] = []
        with self._write():
            for row in rows:
                cur = self.db.execute("DELETE FROM records WHERE seq = ?", (row.seq,))
                if cur.rowcount:
                    done.append(row)
            self.db.executemany(
                "INSERT OR IGNORE INTO tombstones VALUES (?, ?, ?)",
                [(r.id, r.created_at, reason) for r in done],
            )
            self.db.executemany(
                "INSERT INTO replica_journal (seq) VALUES (?)", [(r.seq,) for r in done]
            )
        self._lessons -= sum(1 for r in done if r.op is not Op.REVOKE)
        return done

    def pending_of(self, author: bytes) -> list[Row]:
        rows = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM records WHERE author = ? AND pending IS NOT NULL",
            (author,),
        )
        return [_row(r) for r in rows]

    def journal_since(self, serial: int) -> tuple[int, list[int]]:
        """(last serial, seqs journalled after ``serial``): what a replica snapshot misses."""
        rows = self.db.execute(
            "SELECT serial, seq FROM replica_journal WHERE serial > ? ORDER BY serial", (serial,)
        ).fetchall()
        return (rows[-1][0] if rows else serial), [r[1] for r in rows]

    def journal_serial(self) -> int:
        return self.db.execute("SELECT coalesce(max(serial), 0) FROM replica_journal").fetchone()[0]

    def trim_journal(self, serial: int) -> None:
        """Forget the entries a durable snapshot includes."""
        self.db.execute("DELETE FROM replica_journal WHERE serial <= ?", (serial,))

    def add_tombstone(self, record_id: bytes, created_at: int, reason: str) -> None:
        with self._write():
            self.db.execute(
                "INSERT OR IGNORE INTO tombstones VALUES (?, ?, ?)",
                (record_id, created_at, reason),
            )

    def ban(self, author: bytes, reason: str) -> None:
        with self._write():
            self.db.execute(
                "INSERT OR IGNORE INTO banned VALUES (?, ?, ?)",
                (author, reason, time.time_ns() // 1_000_000),
            )

    def banned_authors(self) -> set[bytes]:
        return {r[0] for r in self.db.execute("SELECT author FROM banned")}

    def bans(self, limit: int) -> list[tuple[bytes, str, int]]:
        """(author, reason, banned at in ms) of up to ``limit`` banned authors, newest first."""
        return [
            (bytes(a), r, int(at))
            for a, r, at in self.db.execute(
                "SELECT author, reason, at FROM banned ORDER BY at DESC, author LIMIT ?",
                (int(limit),),
            )
        ]

    def settled(self, ids: Sequence[bytes]) -> set[bytes]:
        """Of ``ids``, those this node has its own word on: held (whatever their status:
        revoked, superseded, pending), tombstoned, or named as the parent of a record held
        here (a revocation or modification, even one that arrived before its target). A
        peer's copy of one of them must not stand in for that word (federated answers)."""
        out: set[bytes] = set()
        for start in range(0, len(ids), 300):
            chunk = list(ids[start : start + 300])
            marks = ",".join("?" * len(chunk))
            for sql in (
                f"SELECT id FROM records WHERE id IN ({marks})",
                f"SELECT id FROM tombstones WHERE id IN ({marks})",
                f"SELECT parent FROM records WHERE parent IN ({marks})",
            ):
                out.update(bytes(r[0]) for r in self.db.execute(sql, chunk))
        return out

    def known(self, record_id: bytes) -> bool:
        """Held, or deliberately not held (tombstone): either way, not worth fetching."""
        return (
            self.has(record_id)
            or self.db.execute("SELECT 1 FROM tombstones WHERE id = ?", (record_id,)).fetchone()
            is not None
        )

    def known_many(self, ids: Sequence[bytes]) -> set[bytes]:
        """The ids among ``ids`` that are :meth:`known` (held or tombstoned), in one query
        per 400 ids instead of two per id."""
        out: set[bytes] = set()
        ids = list(ids)
        for start in range(0, len(ids), 400):
            chunk = ids[start : start + 400]
            marks = ",".join("?" * len(chunk))
            out.update(
                row[0]
                for row in self.db.execute(
                    f"SELECT id FROM records WHERE id IN ({marks}) "
                    f"UNION SELECT id FROM tombstones WHERE id IN ({marks})",
                    chunk + chunk,
                )
            )
        return out

    def all_ids(self) -> Iterator[tuple[bytes, int]]:
        """(id, created_at) of every record and tombstone: what the sync digest covers."""
        yield from self.db.execute("SELECT id, created_at FROM records")
        yield from self.db.execute("SELECT id, created_at FROM tombstones")

    # -- reads --------------------------------------------------------------------------------
    def get(self, record_id: bytes) -> Row | None:
        row = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM records WHERE id = ?", (record_id,)
        ).fetchone()
        return _row(row) if row else None

    def has(self, record_id: bytes) -> bool:
        return (
            self.db.execute("SELECT 1 FROM records WHERE id = ?", (record_id,)).fetchone()
            is not None
        )

    def rows_by_seq(self, seqs: Sequence[int]) -> dict[int, Row]:
        return {r[0]: _row(r) for r in self._by_seq(_ROW_COLUMNS, seqs)}

    def rows_with_vectors(self, seqs: Sequence[int]) -> dict[int, tuple[Row, np.ndarray]]:
        """Rows and their stored compact vectors in one read: the query path's candidates.

        Reading the vector column here is ~2x cheaper than ``hnswlib.get_items`` afterwards."""
        return {
            r[0]: (_row(r), np.frombuffer(r[-1], np.float32))
            for r in self._by_seq(f"{_ROW_COLUMNS}, vector", seqs, "AND vector IS NOT NULL")
        }

    def _by_seq(self, columns: str, seqs: Sequence[int], where: str = "") -> Iterator[tuple]:
        """``columns`` of the records of ``seqs`` held (and matching ``where``), in chunks of
        SQLite's bound-parameter limit."""
        for start in range(0, len(seqs), 900):
            chunk = [int(s) for s in seqs[start : start + 900]]
            marks = ",".join("?" * len(chunk))
            yield from self.db.execute(
                f"SELECT {columns} FROM records WHERE seq IN ({marks}) {where}", chunk
            )

    def candidate_fields(self, seqs: Sequence[int]) -> dict[int, tuple]:
        """The query path's candidates in one read, without building a Row: seq -> the row's
        values (``_ROW_COLUMNS``, then the vector's bytes; ``CANDIDATE_*`` name the places) for
        those of ``seqs`` stored with a vector, the wire left out (None in its place): a query
        needs the signed bytes of the few it returns alone (:meth:`wires_by_seq`). ``candidate_row``
        makes a Row of one: building ~190 Rows cost ~0.8 ms a query, and reading ~160 wires
        ~0.8 ms at 100k lessons."""
        return {
            r[0]: r
            for r in self._by_seq(f"{_CANDIDATE_COLUMNS}, vector", seqs, "AND vector IS NOT NULL")
        }

    def wires_by_seq(self, seqs: Sequence[int]) -> dict[int, bytes]:
        """seq -> the stored signed bytes, for those of ``seqs`` held."""
        return dict(self._by_seq("seq, wire", seqs))

    def vectors_since(
        self, seq: int, batch: int = 4096, pending: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(seqs, vectors) of every stored checked lesson (or, with ``pending``, of every one
        waiting for the check) with seq > ``seq``, in batches: what the replica replays after
        its snapshot (and the pending index loads at start)."""
        last = seq
        state = "IS NOT NULL" if pending else "IS NULL"
        while True:
            rows = self.db.execute(
                f"SELECT seq, vector FROM records WHERE seq > ? AND vector IS NOT NULL "
                f"AND pending {state} ORDER BY seq LIMIT ?",
                (last, batch),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield (
                np.array([r[0] for r in rows], dtype=np.int64),
                np.stack([np.frombuffer(r[1], "<f4") for r in rows]),
            )

    def active_lesson_seqs(self) -> np.ndarray:
        """The seqs of every checked active lesson with a vector: what the replica must hold
        (records waiting for the embedding check are in the pending index instead)."""
        rows = self.db.execute(
            "SELECT seq FROM records WHERE status = 0 AND op != 2 AND vector IS NOT NULL "
            "AND pending IS NULL"
        ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def filtered_vectors(self, where: str, params: Sequence) -> tuple[np.ndarray, np.ndarray]:
        rows = self.db.execute(
            f"SELECT seq, vector FROM records WHERE vector IS NOT NULL AND status = 0 AND {where}",
            params,
        ).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return (
            np.array([r[0] for r in rows], dtype=np.int64),
            np.stack([np.frombuffer(r[1], "<f4") for r in rows]),
        )

    def cluster_sizes(self, clusters: Sequence[int]) -> dict[int, int]:
        if not clusters:
            return {}
        marks = ",".join("?" * len(clusters))
        return dict(
            self.db.execute(
                "SELECT cluster, count(*) FROM records WHERE status = 0 AND pending IS NULL "
                f"AND cluster IN ({marks}) "
                "GROUP BY cluster",
                [int(c) for c in clusters],
            ).fetchall()
        )

    def first_peer_acceptance(self, own: bytes) -> int | None:
        """When this node first accepted a record of an author other than ``own`` (ms, its own
        clock): how long it has known its peers. One step along the ``authors_first_seen``
        index (it skips at most our own row), whatever the store's size."""
        row = self.db.execute(
            "SELECT first_seen FROM authors WHERE author != ? ORDER BY first_seen LIMIT 1",
            (own,),
        ).fetchone()
        return row[0] if row else None

    def authors_first_seen(self, authors: Iterable[bytes]) -> dict[bytes, int]:
        """When this node first accepted a record of each author (ms, its own clock): the
        basis of an author's standing. Kept on insert and never lowered or forgotten (an
        evicted lesson does not make its author new again); authors it never accepted anything
        from are absent. One primary-key lookup per author not read before: a value, once
        read, never changes, so it is kept in memory (up to ``FIRST_SEEN_CACHE`` authors)."""
        out: dict[bytes, int] = {}
        cache = self._first_seen
        distinct = []
        for author in dict.fromkeys(authors):
            known = cache.get(author)
            if known is None:
                distinct.append(author)
            else:
                out[author] = known
        for start in range(0, len(distinct), 900):
            chunk = distinct[start : start + 900]
            marks = ",".join("?" * len(chunk))
            found = self.db.execute(
                f"SELECT author, first_seen FROM authors WHERE author IN ({marks})", chunk
            ).fetchall()
            out.update(found)
            if len(cache) + len(found) > FIRST_SEEN_CACHE:
                cache.clear()
            cache.update(found)
        return out

    def oldest_first_seen(self) -> int | None:
        """The earliest ``authors_first_seen`` of any author (index lookup), None with none."""
        return self.db.execute("SELECT min(first_seen) FROM authors").fetchone()[0]

    def max_seq(self) -> int:
        return self.db.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Records by state; ``active`` counts checked lessons only, ``pending`` those that
        wait for the embedding check (whatever their status). Kept by triggers (O(1))."""
        rows = self._state_counts()
        out = {
            "total": 0,
            "active": 0,
            "pending": 0,
            "revoked": 0,
            "superseded": 0,
            "invalid": 0,
            "revocations": 0,
        }
        for (op, status, pending), n in rows.items():
            out["total"] += n
            if op == Op.REVOKE:
                out["revocations"] += n
            elif pending and status == Status.ACTIVE:
                out["pending"] += n
            else:
                out[Status(status).name.lower()] += n
        return out

    def ids_between(
        self, start_ms: int, end_ms: int, limit: int, after: bytes = b""
    ) -> list[bytes]:
        """Ids with ``start_ms <= created_at < end_ms`` and ``id > after``, ascending, at most
        ``limit`` (sync ``ids``, NETWORK.md §6.3: ``after`` pages through a full bucket)."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT id FROM records WHERE created_at >= ? AND created_at < ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (start_ms, end_ms, after, limit),
            )
        ]

    def wires(self, ids: Sequence[bytes]) -> list[bytes]:
        out = []
        for record_id in ids:
            row = self.db.execute("SELECT wire FROM records WHERE id = ?", (record_id,)).fetchone()
            if row:
                out.append(row[0])
        return out

    def active_page(self, after_seq: int, limit: int, domain: str | None = None) -> list[Row]:
        """Active lessons with seq > ``after_seq`` in seq order: what ``export`` streams.
        Records still waiting for the embedding check are not exported."""
        where, params = "op != 2 AND status = 0 AND pending IS NULL AND seq > ?", [after_seq]
        if domain:
            where += " AND (domain = ? OR substr(domain, 1, ?) = ?)"
            params += [domain, len(domain) + 1, domain + "."]
        rows = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM records WHERE {where} ORDER BY seq LIMIT ?",
            [*params, limit],
        )
        return [_row(r) for r in rows]

    def own_active(self, author: bytes, domain: str, text: str) -> list[Row]:
        """An author's active lessons with exactly this text in this domain (one index lookup
        on ``content_key``; the caller may still compare the decoded text)."""
        rows = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM records WHERE content_key = ? AND author = ? "
            "AND domain = ? AND op != 2 AND status = 0",
            (content_key(author, domain, text), author, domain),
        )
        return [_row(r) for r in rows]


@dataclass(frozen=True)
class FeedbackResult:
    """What storing one verdict did: ``accepted`` (first verdict of this voter on this target),
    ``replaced`` (a newer verdict took the place of ``replaced``, whose id is returned),
    ``duplicate`` (this very record is held) or ``superseded`` (a newer verdict stands)."""

    id: bytes
    outcome: str
    replaced: bytes | None = None
    replaced_created_at: int | None = None


@dataclass(frozen=True)
class VoteRow:
    """A standing verdict, for explanations: who said what of a target, and when."""

    voter: bytes
    target: bytes
    verdict: int
    created_at: int


def _newer(created_at: int, record_id: bytes, than: tuple[int, bytes]) -> bool:
    """Latest wins (SPEC §8.4): the later ``created_at``; at equal times the larger id."""
    return (created_at, record_id) > than


class FeedbackStore:
    """The feedback table of a :class:`Store` (same SQLite file, same owner thread): one
    standing verdict per (voter, target), the latest."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def insert(self, items: Sequence[tuple[SignedFeedback, str | None]]) -> list[FeedbackResult]:
        """Store verdicts in ONE transaction (durable when this returns)."""
        now = time.time_ns() // 1_000_000
        out: list[FeedbackResult] = []
        with self.store._write():
            for record, peer in items:
                out.append(self._insert_one(record, peer, now))
        return out

    def _insert_one(self, record: SignedFeedback, peer: str | None, now: int) -> FeedbackResult:
        fb = record.feedback
        if self.db.execute("SELECT 1 FROM feedback WHERE id = ?", (record.id,)).fetchone():
            return FeedbackResult(record.id, "duplicate")
        held = self.db.execute(
            "SELECT id, created_at FROM feedback WHERE voter = ? AND target = ?",
            (fb.voter, fb.target),
        ).fetchone()
        if held is not None and not _newer(fb.created_at, record.id, (held[1], held[0])):
            return FeedbackResult(record.id, "superseded")
        if held is not None:
            self.db.execute("DELETE FROM feedback WHERE id = ?", (held[0],))
        self.db.execute(
            "INSERT INTO feedback (id, wire, voter, target, verdict, task, created_at, "
            "accepted_at, peer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.wire,
                fb.voter,
                fb.target,
                int(fb.verdict),
                fb.task,
                fb.created_at,
                now,
                peer,
            ),
        )
        if held is not None:
            return FeedbackResult(record.id, "replaced", held[0], held[1])
        return FeedbackResult(record.id, "accepted")

    def known(self, record_id: bytes) -> bool:
        return (
            self.db.execute("SELECT 1 FROM feedback WHERE id = ?", (record_id,)).fetchone()
            is not None
        )

    def standing(self, voter: bytes, target: bytes) -> tuple[int, bytes] | None:
        """(created_at, id) of the verdict that stands for this voter and target, if any."""
        row = self.db.execute(
            "SELECT created_at, id FROM feedback WHERE voter = ? AND target = ?",
            (voter, target),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def standing_verdict(self, voter: bytes, target: bytes) -> tuple[bytes, int, bytes | None]:
        """(id, verdict, task) of the verdict that stands for this voter and target, if any."""
        return self.db.execute(
            "SELECT id, verdict, task FROM feedback WHERE voter = ? AND target = ?",
            (voter, target),
        ).fetchone()

    def verdict(self, record_id: bytes) -> int | None:
        row = self.db.execute("SELECT verdict FROM feedback WHERE id = ?", (record_id,)).fetchone()
        return row[0] if row else None

    def all_ids(self) -> Iterator[tuple[bytes, int]]:
        """(id, created_at) of every held verdict: what the feedback sync digest covers."""
        yield from self.db.execute("SELECT id, created_at FROM feedback")

    def ids_between(
        self, start_ms: int, end_ms: int, limit: int, after: bytes = b""
    ) -> list[bytes]:
        """Ids with ``start_ms <= created_at < end_ms`` and ``id > after``, ascending, at most
        ``limit`` (sync ``ids``, NETWORK.md §6.3: ``after`` pages through a full bucket)."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT id FROM feedback WHERE created_at >= ? AND created_at < ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (start_ms, end_ms, after, limit),
            )
        ]

    def wires(self, ids: Sequence[bytes]) -> list[bytes]:
        out = []
        for record_id in ids:
            row = self.db.execute("SELECT wire FROM feedback WHERE id = ?", (record_id,)).fetchone()
            if row:
                out.append(row[0])
        return out

    def edges_page(self, after_seq: int, limit: int) -> list[tuple[int, bytes, bytes, int]]:
        """(seq, voter, author of the target, verdict) of standing helpful and harmful verdicts
        whose target this node holds, in seq order after ``after_seq``: the endorsement graph,
        read a page at a time so that the knowledge-base thread is never held long."""
        return self.db.execute(
            "SELECT f.seq, f.voter, r.author, f.verdict FROM feedback f "
            "JOIN records r ON r.id = f.target "
            "WHERE f.seq > ? AND f.verdict != 0 ORDER BY f.seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()

    def votes_on(self, targets: Sequence[bytes]) -> dict[bytes, list[VoteRow]]:
        """The standing verdicts (withdrawn ones left out) on each of ``targets``."""
        out: dict[bytes, list[VoteRow]] = {}
        distinct = list(dict.fromkeys(targets))
        for start in range(0, len(distinct), 900):
            chunk = distinct[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for voter, target, verdict, created_at in self.db.execute(
                f"SELECT voter, target, verdict, created_at FROM feedback "
                f"WHERE target IN ({marks}) AND verdict != 0 ORDER BY created_at",
                chunk,
            ):
                out.setdefault(target, []).append(VoteRow(voter, target, verdict, created_at))
        return out

    def max_seq(self) -> int:
        return self.db.execute("SELECT coalesce(max(seq), 0) FROM feedback").fetchone()[0]

    def count_by_voter(self) -> Iterator[tuple[bytes, int]]:
        """(voter, stored verdicts) of every voter (withdrawn ones included)."""
        yield from self.db.execute("SELECT voter, count(*) FROM feedback GROUP BY voter")

    def counts(self) -> dict[str, int]:
        """Standing verdicts by kind (every stored one, held target or not)."""
        out = {"helpful": 0, "harmful": 0, "withdrawn": 0}
        names = {1: "helpful", -1: "harmful", 0: "withdrawn"}
        for verdict, n in self.db.execute(
            "SELECT verdict, count(*) FROM feedback GROUP BY verdict"
        ):
            out[names[verdict]] = n
        return out
