"""The query room: robust selection over the local replica and, when asked, over peers'
answers (federated query, ``/zoo/dso/query/2``, NETWORK.md §7); author standing; export pages.

Federated queries travel in the canonical 7680-d space (float16, 15,360 bytes), never in a
node's private compact coordinates: the asking node lifts its query through its own head, the
answering node lowers it onto its own basis (``Encoder.lower``: head^T v), so peers with
another backbone and a fitted head can ask and answer.

Records waiting for the embedding check (pending) are candidates of a local query, scored by
the vector their code implies. When selection would return some of them, the query answers
from checked records alone if those give as many answers above the same floor (the pending
picks are then checked next by the background); otherwise its pending picks are checked on
demand, batched (``checker.check_now``), and selection runs again with their exact vectors,
without those that failed. What a query returns has always passed the check. Federated answers
we serve and export pages hold checked records only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from zoonode.experiences import now_ms
from zoonode.knowledge import Filters, Found, Hit
from zoonode.native.head import CANONICAL_DIM
from zoonode.net.validation import AuthorLimiter, Verdict, check_record
from zoonode.protocol import (
    Op,
    ProtocolError,
    SignedRecord,
    check_domain,
    decode,
    decode_stored,
)
from zoonode.selection import (
    Candidate,
    Selection,
    SelectionSettings,
    author_standing,
    candidate_floor,
    lowest_floor,
    select,
    similarity_floor,
    standing_factor,
)

if TYPE_CHECKING:
    from zoonode.node.core import Node

log = logging.getLogger("zoonode.node.query")

ON_DEMAND_ROUNDS = 3  # selections that may check pending picks before they are left out
QUERY_VECTOR_BYTES = CANONICAL_DIM * 2  # float16
DEFAULT_K = 10
MAX_K = 200
WRONG_SPACE = "wrong_space"
WRONG_DIMENSION = "wrong_dimension"
BAD_VECTOR = "bad_vector"


def canonical_query_bytes(canonical: np.ndarray) -> bytes:
    """A unit canonical vector (1, 7680) or (7680,) as the query's wire form: little-endian
    IEEE 754 binary16 (NETWORK.md §7.1)."""
    v = np.asarray(canonical, np.float32).reshape(-1)
    if v.shape != (CANONICAL_DIM,):
        raise ValueError(f"a canonical query has {CANONICAL_DIM} values, got {v.shape}")
    return v.astype("<f2").tobytes()


def answers_missing(checked: Selection, full: Selection) -> int:
    """How many answers a selection over checked candidates alone (``checked``) lacks against
    one that also picked records still waiting for the embedding check (``full``): ``full``'s
    answers minus ``checked``'s that clear the similarity floor ``full`` used (leaving
    candidates out can only lower the floor; weaker answers are not let in that way). 0: it
    may answer in ``full``'s place; an answer of ``checked`` under that floor makes it at
    least 1. Pure."""
    clear = sum(
        1
        for s in checked.selected
        if s.candidate.relevance >= candidate_floor(s.candidate, full.floor, full.established_floor)
    )
    missing = len(full.selected) - clear
    return max(missing, 1 if clear < len(checked.selected) else 0)


@dataclass(frozen=True)
class Answer:
    """A query's outcome: the selection, the decoded records of its answers, and, when asked,
    the standing verdicts on them (``FeedbackStore.votes_on``; :meth:`Query.explain_votes`)."""

    selection: Selection
    records: dict[bytes, SignedRecord]
    votes: dict[bytes, list] = field(default_factory=dict)
    # Milliseconds per stage of a local query: "encode", "search", "select" (with any
    # on-demand check), "records" (decoding and verdicts), "kb" (the whole trip to the
    # knowledge-base thread, its hand-offs and wait included). The API sends them as a
    # Server-Timing header.
    timings: dict[str, float] = field(default_factory=dict)


class Query:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._knows_peers_long = False  # set once a peer has been known past the maturity
        self._first_peer_ms: int | None = None  # never changes once known (authors table)
        self._trust_best: tuple[object, float] = (None, 0.0)  # (TrustResult, best non-root)

    async def answer(
        self,
        text: str | None = None,
        vector: np.ndarray | None = None,
        k: int | None = None,
        filters: Filters | None = None,
        federated: bool = False,
        votes: bool = False,
    ) -> Answer:
        """Robust selection over our replica (and, if ``federated``, peers' answers): the
        selection and the decoded records of the selected experiences, with the standing
        verdicts on them if ``votes`` (for :meth:`explain_votes`). A local query is one trip
        to the knowledge-base thread: encoding, search, selection (with any on-demand check),
        the verdicts and the decoding of the chosen records; each trip costs a thread
        hand-off and a wait for the KB lock (~0.3-1 ms on a busy machine). A federated query
        goes out to peers between search and selection."""
        node = self.node
        sel = node.cfg.selection
        first_seen: dict[bytes, int] = {}
        standing: dict[bytes, float] = {}  # per author, once per query
        touched: list[list[int]] = []  # pending seqs to put first in the check's queue
        marks: dict[str, float] = {}  # stage -> seconds (perf_counter differences)

        def floor_of(entries: list[tuple[float, bytes, bool]], complete: bool) -> float | None:
            """knowledge.FloorOf: a lower bound of both floors ``select`` will use for the
            checked ones among ``entries`` (score, author, waiting), from some candidates or,
            ``complete``, all of them; None: no bound (selection.similarity_floors).

            The lower floor is the established one's, following the best established
            candidate: at least the best checked established one among these. With none
            among these, one further down may set it as low as the lowest floor (not
            ``complete``); with none at all, the checked ones are all newer authors', kept
            against the floor of all candidates: at least the best checked one's (a waiting
            one may fail its check and leave, nor is it cut). Where no author holding a
            lesson here can be established (``standing_bound`` under 1: e.g. a node whose
            lessons are all imported from fresh identities), none further down can either:
            the best checked one's bounds the floor from these few too."""
            checked = [(s, a) for s, a, waiting in entries if not waiting]
            if not checked:
                return None
            authors = {a for _, a in checked} - standing.keys()
            if authors:
                first_seen.update(node.kb.authors_first_seen(authors - first_seen.keys()))
                for a in authors:
                    standing[a] = self.standing(a, first_seen)
            established = [s for s, a in checked if standing[a] >= 1.0]
            if established:
                best = max(established)
            elif not complete and bound[0] >= 1.0:
                return lowest_floor(sel.min_similarity, sel.floor_min)
            else:
                best = max(s for s, _ in checked)
            return similarity_floor(best, sel.min_similarity, sel.floor_min, sel.floor_margin)

        bound = [1.0]  # standing_bound, read in the knowledge-base thread (local)

        def local() -> tuple[np.ndarray, Found, bool]:
            # The encoder's threads, or one beside a check at normal priority (query_threads).
            t0 = time.perf_counter()
            threads = node.checker.threads()
            q = node.encoder.encode_compact(text, threads=threads)[0] if vector is None else vector
            t1 = time.perf_counter()
            marks["encode"] = t1 - t0
            bound[0] = self.standing_bound()
            found = node.kb.find(
                q,
                k=sel.candidates,
                filters=filters,
                weigh=lambda authors: self._weigh(authors, first_seen, standing),
                # No author's factor exceeds this: where every author is fresh the search
                # keeps its width; where an established one may hold lessons, a flood of
                # newcomers' lessons cannot hide theirs (KnowledgeBase.find).
                max_factor=standing_factor(sel.newcomer_weight, bound[0]),
                per_cluster=sel.cluster_members,
                pending=True,
                # Selection drops every candidate under its floor, never lower than this: a
                # waiting record scoring under it is neither read nor touched.
                pending_floor=lowest_floor(sel.min_similarity, sel.floor_min),
                # Nor are the rows of checked ones under the floor selection will use: it
                # would drop them (~120 of 150 candidates at 20k); it counts them. Not with
                # peers' answers to come: an established one among them may lower it.
                floor=None if federated else floor_of,
                # Cluster sizes and signed bytes only for the answers (choose): they are
                # reported, not used.
                sizes=False,
                wires=False,
            )
            alone = self.newcomers_may_answer_alone()
            marks["search"] = time.perf_counter() - t1
            return q, found, alone

        def choose(
            q: np.ndarray,
            found: Found,
            alone: bool,
            extra: list[tuple[SignedRecord, Candidate]],
        ) -> Answer:
            """Knowledge-base thread: selection over the hits and peers' answers, the
            on-demand checks it needs, the verdicts on its answers, their records."""
            t0 = time.perf_counter()
            hits = found.hits
            candidates = self._candidates(hits, first_seen, standing)
            records: dict[bytes, SignedRecord] = {}
            if extra:
                known = node.kb.authors_first_seen([c.author for _, c in extra])
                seen = {h.row.id for h in hits}
                for record, cand in extra:
                    if cand.id not in seen:
                        records[cand.id] = record
                        candidates.append(
                            replace(
                                cand,
                                reputation=self.standing(cand.author, known),
                                vouched=node.feedback.vouched(cand.author),
                            )
                        )
                        seen.add(cand.id)
            unchecked = {h.row.id: h.row.seq for h in hits if h.row.pending}
            touched.append(list(unchecked.values()))
            selection = self.select_now(
                q,
                candidates,
                self._settings(k, alone),
                unchecked,
                touched.append,
                found.below_floor,
                found.cluster_member_limit,
            )
            selection = self._group_sizes(selection, hits)
            t1 = time.perf_counter()
            marks["select"] = t1 - t0
            # Only the selected few are decoded: decoding all 150 candidates cost ~17 ms per
            # query, more than the search itself. Stored records were verified when they were
            # accepted; peers' answers were decoded strictly (federated_candidates).
            seqs = {h.row.id: h.row.seq for h in hits}
            wires = node.kb.store.wires_by_seq(
                [seqs[s.candidate.id] for s in selection.selected if s.candidate.id not in records]
            )
            gone = [  # evicted since the search (a federated query waits for its peers)
                s
                for s in selection.selected
                if s.candidate.id not in records and seqs[s.candidate.id] not in wires
            ]
            if gone:
                selection = replace(
                    selection, selected=[s for s in selection.selected if s not in gone]
                )
            chosen = {
                s.candidate.id: records.get(s.candidate.id)
                or decode_stored(wires[seqs[s.candidate.id]], s.candidate.id)
                for s in selection.selected
            }
            held = node.kb.store.feedback.votes_on(list(chosen)) if votes else {}
            marks["records"] = time.perf_counter() - t1
            return Answer(selection, chosen, held)

        if federated:
            q, found, alone = await node.in_kb(local)
            skip = {h.row.id for h in found.hits}
            extra = await self.federated_candidates(q, sel.candidates, filters, skip=skip)
            answer = await node.in_kb(choose, q, found, alone, extra)
        else:

            def both() -> Answer:
                q, found, alone = local()
                return choose(q, found, alone, [])

            started = time.perf_counter()
            answer = await node.in_kb(both)
            marks["kb"] = time.perf_counter() - started
        answer = replace(answer, timings={k: v * 1000 for k, v in marks.items()})
        for seqs in touched:  # on the trio thread: touch wakes the background loop
            node.checker.touch(seqs)
        return answer

    def _group_sizes(self, selection: Selection, hits: list[Hit]) -> Selection:
        """The answers' group sizes with their clusters' sizes in the store, read for these
        alone (the search left them at 1: ``KnowledgeBase.find(sizes=False)``): what
        ``select`` reports when every candidate carries its size, since a group's local
        members share one cluster."""
        rows = {h.row.id: h.row for h in hits}
        clusters = {
            s.candidate.id: rows[s.candidate.id].cluster
            for s in selection.selected
            if s.candidate.id in rows and rows[s.candidate.id].cluster is not None
        }
        if not clusters:
            return selection
        held = self.node.kb.store.cluster_sizes(list(set(clusters.values())))
        selected = [
            replace(s, group_size=max(s.group_size, held.get(clusters[s.candidate.id], 1)))
            if s.candidate.id in clusters
            else s
            for s in selection.selected
        ]
        return replace(selection, selected=selected)

    def _weigh(
        self, authors: list[bytes], first_seen: dict[bytes, int], standing: dict[bytes, float]
    ) -> np.ndarray:
        """Standing decides which member speaks for a near-duplicate cluster and which
        clusters fill the candidate list: a Sybil flood cannot crowd established lessons out
        of it, nor a fresh variant stand in for an established lesson. Knowledge-base thread
        (the authors' first acceptance is read from the store). ``standing`` keeps each
        author's standing for the rest of the query (``_candidates``). The pool is the best by
        cosine x this factor over the whole store, not among the best by cosine alone: a
        flood of distinct fresh lessons cannot push the node's own weak ones out of it
        (KnowledgeBase.find widens up to the factor of ``standing_bound``; issue 26 review)."""
        node = self.node
        newcomer_weight = node.cfg.selection.newcomer_weight
        distinct = set(authors)
        first_seen.update(node.kb.authors_first_seen(distinct - first_seen.keys()))
        factor = {}  # per author, not per row: ~190 candidates, a few dozen authors
        for a in distinct:
            if a not in standing:
                standing[a] = self.standing(a, first_seen)
            factor[a] = standing_factor(newcomer_weight, standing[a])
        return np.array([factor[a] for a in authors])

    def standing_bound(self) -> float:
        """An upper bound of :meth:`standing` for any author of a lesson this node holds, in
        [0, 1]. Knowledge-base thread. 1 where an author of standing 1 may hold lessons (our
        identity or a trusted author has been accepted, or trust gives anyone standing);
        otherwise the oldest author's time standing (authors' standing grows with time alone)
        or the best trust standing, whichever is higher. Under 1: no established author holds
        a lesson here (the query's floor of checked candidates then follows the best of them,
        ``answer``). Cost: a primary-key lookup per trusted author and one index lookup (the
        oldest author's time), ~10 us; the trust's best standing is read once per recompute
        (O(identities))."""
        node = self.node
        if node.kb.authors_first_seen({node.author, *node.trusted_authors}):
            return 1.0
        trust = node.feedback.trust
        if trust is not None:
            if self._trust_best[0] is not trust:
                standings = trust.standings().tolist()
                others = zip(trust.identities, standings, strict=True)
                best = max((v for a, v in others if a not in trust.roots), default=0.0)
                self._trust_best = (trust, float(best))
            best = self._trust_best[1]
        else:
            best = 0.0
        oldest = node.kb.store.oldest_first_seen()
        maturity_ms = int(node.cfg.selection.maturity_days * 86_400_000)
        best = max(best, author_standing(oldest, now_ms(), maturity_ms))
        return min(1.0, best)

    def _candidates(
        self,
        hits: list[Hit],
        first_seen: dict[bytes, int],
        standing: dict[bytes, float] | None = None,
    ) -> list[Candidate]:
        node = self.node
        standing = {} if standing is None else standing
        vouched: dict[bytes, bool] = {}
        out = []
        for h in hits:
            author = h.row.author
            if author not in vouched:  # per author: a few dozen among ~150 candidates
                if author not in standing:
                    standing[author] = self.standing(author, first_seen)
                vouched[author] = node.feedback.vouched(author)
            out.append(
                Candidate(
                    h.row.id,
                    h.vector,
                    h.score,
                    author,
                    h.row.cluster or -h.row.seq,
                    h.row.confidence,
                    reputation=standing[author],
                    cluster_size=h.cluster_size,
                    vouched=vouched[author],
                )
            )
        return out

    def _settings(self, k: int | None, alone: bool) -> SelectionSettings:
        sel = self.node.cfg.selection
        return SelectionSettings(
            k=k or sel.k,
            min_similarity=sel.min_similarity,
            floor_min=sel.floor_min,
            floor_margin=sel.floor_margin,
            author_cap=sel.author_cap,
            per_author=sel.per_author,
            established_slots=sel.established_slots,
            agreement_quantile=sel.agreement_quantile,
            answer_duplicate=sel.answer_duplicate,
            newcomer_weight=sel.newcomer_weight,
            newcomers_alone=alone,
            vouched_alone=self.node.cfg.trust.vouched_alone,
        )

    def select_now(
        self,
        q: np.ndarray,
        candidates: list[Candidate],
        settings: SelectionSettings,
        unchecked: dict[bytes, int],
        touch: Callable[[list[int]], None],
        below_floor: int = 0,
        cluster_member_limit: int = 0,
    ) -> Selection:
        """Knowledge-base thread: ``select``, where no record that has not passed the
        embedding check is selected.

        When a selection picks pending records: if the checked candidates alone give as many
        answers, each clearing the floor the full selection used (:func:`answers_missing`),
        the query answers with those and leaves its pending picks to the background check,
        which takes the records queries touched first (re-encoding k texts cost a query
        ~100-300 ms on 2 busy cores). Otherwise only as many pending picks as answers are
        missing, the best placed, are checked at once, in one encoder batch
        (``checker.check_now``); those that pass come back with their exact vectors and
        scores, those that fail leave the candidates (their authors banned), and selection
        runs again. After ``ON_DEMAND_ROUNDS`` rounds, pending records still picked are left
        out. ``touch`` receives the deferred picks, best first, for the caller to hand to
        ``checker.touch`` on the trio thread (it wakes the background loop). ``below_floor``,
        ``cluster_member_limit``: candidates the search left out (``select``)."""
        left_out = (below_floor, cluster_member_limit)
        node = self.node
        unchecked = dict(unchecked)
        for _ in range(ON_DEMAND_ROUNDS):
            selection = select(q, candidates, settings, *left_out)
            picked = [
                unchecked[s.candidate.id] for s in selection.selected if s.candidate.id in unchecked
            ]
            if not picked:
                return selection
            alone = select(q, [c for c in candidates if c.id not in unchecked], settings, *left_out)
            missing = answers_missing(alone, selection)
            deferred = picked[missing:]  # selection order: the best placed are checked now
            if deferred:
                node.counters["check:deferred"] += len(deferred)
                touch(deferred[::-1])  # the background's next batch, best first
            if not missing:
                return alone
            picked = picked[:missing]
            outcome = node.checker.check_now(picked)
            by_seq = {seq: cid for cid, seq in unchecked.items()}
            gone = {by_seq[s] for s in outcome.removed}
            exact = {by_seq[s]: v for s, v in outcome.vectors.items()}
            candidates = [
                replace(c, vector=exact[c.id], relevance=float(exact[c.id] @ q))
                if c.id in exact
                else c
                for c in candidates
                if c.id not in gone
            ]
            for cid in gone | exact.keys():
                del unchecked[cid]
        # Still picking unchecked records: leave every one out.
        return select(q, [c for c in candidates if c.id not in unchecked], settings, *left_out)

    def newcomers_may_answer_alone(self) -> bool:
        """``selection.newcomers_alone``: with "bootstrap", newer authors may answer where no
        established one does only until this node has known some peer for the maturity; a
        node that has just joined would otherwise answer nothing from its peers for days."""
        node = self.node
        policy = node.cfg.selection.newcomers_alone
        if policy != "bootstrap":
            return policy == "always"
        if not self._knows_peers_long:  # once true it stays true: no query needed then
            if self._first_peer_ms is None:  # an index lookup (authors table), then cached
                self._first_peer_ms = node.kb.first_peer_acceptance(node.author)
            first = self._first_peer_ms
            maturity_ms = int(node.cfg.selection.maturity_days * 86_400_000)
            self._knows_peers_long = first is not None and now_ms() - first >= maturity_ms
        return not self._knows_peers_long

    def standing(self, author: bytes, first_seen: dict[bytes, int]) -> float:
        """An author's standing with this node: time known (selection.author_standing)
        combined with trust from feedback (``Feedback.standing``); our own identity and the
        operator's trusted authors are established at once."""
        node = self.node
        if author == node.author or author in node.trusted_authors:
            return 1.0
        maturity_ms = int(node.cfg.selection.maturity_days * 86_400_000)
        # Trust from feedback combined with time known (node/feedback.py, issue #24): once
        # this node's roots have endorsed enough authors, age alone no longer establishes.
        return node.feedback.standing(
            author, author_standing(first_seen.get(author), now_ms(), maturity_ms)
        )

    async def explain(self, selection: Selection) -> dict[bytes, dict]:
        """Per selected lesson: its author's trust and the standing verdicts behind it."""
        ids = [s.candidate.id for s in selection.selected]
        votes = await self.node.in_kb(self.node.kb.store.feedback.votes_on, ids)
        return self.explain_votes(selection, votes)

    def explain_votes(self, selection: Selection, votes: dict[bytes, list]) -> dict[bytes, dict]:
        """:meth:`explain` from verdicts already read (``Answer.votes``)."""
        authors = {s.candidate.id: s.candidate.author for s in selection.selected}
        return self.node.feedback.explain(authors, votes)

    async def federated_candidates(
        self,
        q: np.ndarray,
        k: int,
        filters: Filters | None = None,
        skip: set[bytes] | frozenset[bytes] = frozenset(),
    ) -> list[tuple[SignedRecord, Candidate]]:
        """Ask every connected peer for its top ``k`` (``/zoo/dso/query/2``) and validate the
        answers like gossip plus the embedding check; ``q`` is our compact query, lifted to
        the canonical space for the wire. Peers' answers must also pass ``filters``. Records
        in ``skip`` (the local candidates' ids) and repeats across peers are not re-encoded:
        the embedding check costs ~10 ms a record."""
        from zoonode.net.rpc import QUERY_PROTOCOL, RpcError, request

        node = self.node
        answers: list[bytes] = []
        payload: dict[str, Any] = {
            "space": node.encoder.space,
            "vector": canonical_query_bytes(node.encoder.lift(np.asarray(q, np.float32)[None])),
            "k": k,
        }
        if filters is not None and filters.domain:
            payload["domain"] = filters.domain
        if filters is not None and filters.min_confidence is not None:
            payload["min_confidence"] = float(filters.min_confidence)

        async def ask(peer) -> None:
            node.counters["query:asked"] += 1
            try:
                resp = await request(node.host, peer, QUERY_PROTOCOL, payload)
            except RpcError as exc:
                node.counters[f"query:failed_{exc.code}"] += 1
                log.debug("federated query to %s failed: %s", peer, exc)
                return
            wires = resp.get("wires", [])
            if isinstance(wires, list):
                node.counters["query:answered"] += 1
                answers.extend(w for w in wires[:k] if isinstance(w, bytes))

        async with trio.open_nursery() as nursery:
            for peer in node.connected_peers():
                nursery.start_soon(ask, peer)
        limiter = AuthorLimiter(rate=1e9, burst=1e9)
        valid = []
        for wire in dict.fromkeys(answers):  # one copy of what several peers answered
            checked = check_record(
                wire, node.policy, now_ms(), lambda _id: False, limiter, node.banned.__contains__
            )
            if checked.verdict is not Verdict.ACCEPT or checked.record.experience.op is Op.REVOKE:
                continue
            if checked.record.id in skip:
                node.counters["query:federated_held"] += 1
                continue
            if filters is not None and not filters.match(checked.record.experience):
                continue
            valid.append(checked.record)
        if not valid:
            return []
        # What this node holds in any state, has tombstoned, or has a revocation or newer
        # version of is its own to answer: a peer that has not heard of the revocation (or
        # replays a revoked lesson on purpose) must not bring it back.
        settled = await node.in_kb(node.kb.store.settled, [r.id for r in valid])
        if settled:
            node.counters["query:federated_settled"] += sum(1 for r in valid if r.id in settled)
            valid = [r for r in valid if r.id not in settled]
            if not valid:
                return []

        def embed() -> tuple[np.ndarray, list]:
            compact = node.encoder.encode_compact([r.experience.text for r in valid])
            verdicts = node.checker.rule(
                [r.experience.code for r in valid], compact, node.encoder.space_info
            )
            return compact, verdicts

        compact, verdicts = await node.in_kb(embed)
        out = []
        for record, vector, verdict in zip(valid, compact, verdicts, strict=True):
            if verdict.accept:
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

    async def serve(self, peer: str, req: dict) -> dict[str, Any]:
        """``/zoo/dso/query/2`` (NETWORK.md §7): a peer's query in the canonical space.

        The vector is lowered onto this node's own basis (head^T v) and searched like a local
        query. Errors (``ServeError``): ``wrong_space``, ``wrong_dimension`` (not 7680 float16
        values: a 384-d vector of a backbone's private coordinates is refused here),
        ``bad_vector`` (not finite, or nothing left on our basis), ``bad_request``."""
        from zoonode.net.rpc import BAD_REQUEST, ServeError

        node = self.node
        if req.get("space") != node.encoder.space:
            raise ServeError(WRONG_SPACE, f"this node answers space {node.encoder.space.hex()}")
        raw = req.get("vector")
        if type(raw) is not bytes:
            raise ServeError(BAD_REQUEST, "vector must be bin (7680 little-endian float16)")
        if len(raw) != QUERY_VECTOR_BYTES:
            raise ServeError(
                WRONG_DIMENSION,
                f"vector must be {CANONICAL_DIM} float16 values ({QUERY_VECTOR_BYTES} bytes) "
                f"in the canonical space, got {len(raw)} bytes",
            )
        k = req.get("k", DEFAULT_K)
        if type(k) is not int:
            raise ServeError(BAD_REQUEST, "k must be an int")
        domain = req.get("domain")
        min_confidence = req.get("min_confidence")
        if domain is not None and type(domain) is not str:
            raise ServeError(BAD_REQUEST, "domain must be a str")
        if min_confidence is not None and type(min_confidence) not in (int, float):
            raise ServeError(BAD_REQUEST, "min_confidence must be a number")
        # values: the codes the HTTP API and the record format give for the same fault
        if domain:  # "" is no filter
            try:
                check_domain(domain)  # also keeps SQLite's LIKE under its 50,000-byte limit
            except ProtocolError as exc:
                raise ServeError(exc.code.value, str(exc)) from None
        if min_confidence is not None:
            min_confidence = float(min_confidence)  # an int up to 2^64 - 1 overflows SQLite
            if not np.isfinite(min_confidence):
                raise ServeError("non_finite", "min_confidence must be finite")
            if not 0.0 <= min_confidence <= 1.0:
                raise ServeError("out_of_range", "min_confidence must be in 0..1")
        canonical = np.frombuffer(raw, "<f2").astype(np.float32)
        if not np.all(np.isfinite(canonical)):
            raise ServeError(BAD_VECTOR, "vector has NaN or infinite values")
        lowered = node.encoder.lower(canonical[None])[0]
        norm = float(np.linalg.norm(lowered))
        if not norm > 0:
            raise ServeError(BAD_VECTOR, "vector has no component on this node's basis")
        filters = Filters(domain=domain or None, min_confidence=min_confidence)
        k = max(1, min(k, MAX_K))
        hits = await node.in_kb(node.kb.search, lowered / norm, k, filters)
        node.counters["query:served"] += 1
        return {"wires": [h.row.wire for h in hits], "scores": [float(h.score) for h in hits]}

    async def export_page(
        self, after_seq: int, limit: int, domain: str | None = None
    ) -> list[tuple[int, SignedRecord]]:
        """Active lessons after ``after_seq``, in acceptance order: a page of ``export``."""
        rows = await self.node.in_kb(self.node.kb.store.active_page, after_seq, limit, domain)
        return [(row.seq, decode(row.wire)) for row in rows]
