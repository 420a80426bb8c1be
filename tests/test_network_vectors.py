"""The network vectors (protocol/vectors/network-v1.json) against the node's own code: gossip
verdicts and message ids, the request/response framing, and a real node's answers to the
vectors' sync and query requests."""

from __future__ import annotations

import hashlib
import json
import struct
from importlib import resources

import numpy as np
import pytest
import trio

from zoonode.protocol import decode
from zoonode.protocol.make_vectors import from_json

VECTORS = json.loads(
    (resources.files("zoonode.protocol") / "vectors" / "network-v1.json").read_text()
)
RECORDS = {name: bytes.fromhex(r["wire_hex"]) for name, r in VECTORS["records"].items()}


def test_topic_and_protocol_ids_are_the_nodes():
    from zoonode.net.gossip import topic_for
    from zoonode.net.host import NOISE_PROTOCOL, YAMUX_PROTOCOL
    from zoonode.net.rpc import QUERY_PROTOCOL, SYNC_PROTOCOL

    space = bytes.fromhex(VECTORS["space"])
    assert topic_for(space) == VECTORS["topic"]
    protocols = VECTORS["protocols"]
    assert (protocols["sync"], protocols["query"]) == (SYNC_PROTOCOL, QUERY_PROTOCOL)
    assert (protocols["security"], protocols["muxer"]) == (NOISE_PROTOCOL, YAMUX_PROTOCOL)


@pytest.mark.parametrize("case", VECTORS["gossip"], ids=lambda c: c["name"])
def test_gossip_vectors_get_their_verdict_and_message_id(case):
    from zoonode.net.gossip import content_message_id
    from zoonode.net.validation import AuthorLimiter, Policy, check_message

    data = bytes.fromhex(case["data_hex"])
    holds = {decode(RECORDS[name]).id for name in case["receiver_holds"]}
    outcome = check_message(
        data,
        Policy(space=bytes.fromhex(VECTORS["space"])),
        case["now_ms"],
        holds.__contains__,
        AuthorLimiter(rate=20.0, burst=200.0),
    )
    assert (outcome.verdict.value, outcome.reason) == (case["outcome"], case["reason"])
    assert hashlib.sha256(data).hexdigest() == case["message_id"]
    assert content_message_id(type("Msg", (), {"data": data})()).hex() == case["message_id"]


@pytest.mark.parametrize("case", VECTORS["gossip"], ids=lambda c: c["name"])
def test_one_known_lookup_per_message_gives_the_same_verdicts(case):
    """check_message with ``known_many`` (one lookup for the message, as the node runs it)
    against ``known`` per record: the same outcome, the same per-record verdicts, the same
    rate state."""
    from zoonode.net.validation import AuthorLimiter, Policy, check_message

    data = bytes.fromhex(case["data_hex"])
    holds = {decode(RECORDS[name]).id for name in case["receiver_holds"]}
    policy = Policy(space=bytes.fromhex(VECTORS["space"]))
    one, batch = AuthorLimiter(rate=20.0, burst=2.0), AuthorLimiter(rate=20.0, burst=2.0)
    lookups: list[list[bytes]] = []

    def known_many(ids: list[bytes]) -> set[bytes]:
        lookups.append(ids)
        return holds.intersection(ids)

    def never(_id: bytes) -> bool:
        raise AssertionError("known per record")

    plain = check_message(data, policy, case["now_ms"], holds.__contains__, one)
    fast = check_message(data, policy, case["now_ms"], never, batch, known_many=known_many)
    assert (fast.verdict, fast.reason) == (plain.verdict, plain.reason)
    assert [(c.verdict, c.reason) for c in fast.checked] == [
        (c.verdict, c.reason) for c in plain.checked
    ]
    assert [c.record.id for c in fast.accepted] == [c.record.id for c in plain.accepted]
    assert one.buckets == batch.buckets
    assert len(lookups) <= 1


def test_check_records_stops_at_a_reject_or_checks_every_wire():
    from zoonode.net.validation import AuthorLimiter, Policy, Verdict, check_records

    records = [decode(w) for w in RECORDS.values()]
    space = records[0].experience.space
    a, b = [r for r in records if r.experience.space == space][:2]
    now = max(a.experience.created_at, b.experience.created_at)
    wires = [a.wire, b"\x00not a record", b.wire]
    policy = Policy(space=space, horizon_ms=1 << 60)
    stop = list(check_records(wires, policy, now, lambda ids: set(), AuthorLimiter(1e9, 1e9)))
    assert [c.verdict for c in stop] == [Verdict.ACCEPT, Verdict.REJECT]
    every = list(
        check_records(
            wires,
            policy,
            now,
            lambda ids: {b.id}.intersection(ids),
            AuthorLimiter(1e9, 1e9),
            stop_at_reject=False,
        )
    )
    assert [(c.verdict, c.reason) for c in every] == [
        (Verdict.ACCEPT, "ok"),
        (Verdict.REJECT, every[1].reason),
        (Verdict.IGNORE, "known"),
    ]


def test_oversize_gossip_message_is_refused_before_parsing():
    from zoonode.net.validation import MAX_BATCH_BYTES, Reason, decode_batch

    fits = b"\xc6" + struct.pack(">I", MAX_BATCH_BYTES - 6) + bytes(MAX_BATCH_BYTES - 6)
    with pytest.raises(ValueError) as err:  # exactly 512 KiB - 1 byte short of an array
        decode_batch(fits)
    assert err.value.args[0] == Reason.MALFORMED_BATCH
    with pytest.raises(ValueError) as err:
        decode_batch(b"\x91" + fits + b"\x00\x00")
    assert err.value.args[0] == Reason.OVERSIZE_BATCH


class _Bytes:
    """A byte stream over a buffer: the framing functions' only needs (read, write)."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    async def write(self, data: bytes) -> None:
        self.data += data

    async def read(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out


FRAMES = VECTORS["sync"]["frames"] + VECTORS["query"]["frames"]


@pytest.mark.parametrize("case", FRAMES, ids=lambda c: c["name"])
def test_frames_encode_and_decode_as_the_vectors(case):
    from zoonode.net.rpc import read_frame, write_frame

    message = from_json(case["message"])
    frame = bytes.fromhex(case["frame_hex"])

    async def main():
        sink = _Bytes()
        await write_frame(sink, message)
        assert sink.data == frame
        assert await read_frame(_Bytes(frame)) == message

    trio.run(main)


def _vector_node(tmp_path, encoder):
    """A real node (not started) holding the vectors' four records, each lesson indexed at
    its code's projection onto the space's basis."""
    from zoonode.native.codec import decompress
    from zoonode.node import Node
    from zoonode.store import Incoming

    from netutil import node_config

    node = Node(node_config(tmp_path), encoder=encoder)
    info = encoder.space_info
    items = []
    for name in VECTORS["sync"]["node_holds"]:
        record = decode(RECORDS[name])
        vector = None
        if record.experience.code is not None:
            vector = decompress(record.experience.code, info.v_ref) @ info.head
            vector = (vector / np.linalg.norm(vector)).astype(np.float32)
        items.append(Incoming(record, vector))
    results = node.kb.ingest(items)
    assert all(r.outcome.name == "ACCEPTED" for r in results)
    node.note_stored([i.record for i in items])
    return node


def test_a_node_answers_the_vector_requests(tmp_path, encoder):
    from zoonode.net.rpc import ServeError

    node = _vector_node(tmp_path, encoder)
    try:
        for kind, serve in (("sync", node.antientropy.serve), ("query", node.queries.serve)):
            frames = VECTORS[kind]["frames"]
            for request, answer in zip(frames[::2], frames[1::2], strict=True):
                assert request["name"].endswith("_request") and answer["name"].endswith("_answer")
                expected = from_json(answer["message"])

                async def ask(request=request, serve=serve):
                    try:
                        return await serve("peer", from_json(request["message"]))
                    except ServeError as exc:
                        return {"error": exc.code, "message": exc.message}

                got = trio.run(ask)
                name = request["name"]
                if "error" in expected:
                    assert got["error"] == expected["error"], name
                    assert isinstance(got["message"], str) and got["message"], name
                elif kind == "query":
                    assert got["wires"] == expected["wires"], name
                    assert np.allclose(got["scores"], expected["scores"], atol=2e-3), name
                else:
                    assert got == expected, name
        # Limits of NETWORK.md §6.4 and §7.1, and unknown keys ignored (§5).
        add_id = decode(RECORDS["add"]).id
        got = trio.run(node.antientropy.serve, "peer", {"op": "get", "ids": [add_id] * 200})
        assert got["wires"] == [RECORDS["add"]] * 128
        query = from_json(VECTORS["query"]["frames"][0]["message"])
        for k, served in ((0, 1), (1000, 2)):  # clamped to 1..200; two active lessons held
            got = trio.run(node.queries.serve, "peer", query | {"k": k, "later": {"x": 1}})
            assert len(got["wires"]) == served
    finally:
        node.kb.close()


def test_frames_over_4_mib_are_refused_unread():
    from zoonode.net.rpc import MAX_FRAME, RpcError, read_frame

    async def main():
        with pytest.raises(RpcError) as err:
            await read_frame(_Bytes(struct.pack(">I", MAX_FRAME + 1)))
        assert err.value.code == "framing"
        assert MAX_FRAME == 4 * 1024 * 1024

    trio.run(main)


def test_author_rate_and_ban_are_ignores_in_their_order():
    """NETWORK.md §4.5 steps 5-7 and §8.3: known, then banned, then the author's token bucket
    (20/s, burst 200); none of them rejects."""
    from zoonode.net.validation import AuthorLimiter, Policy, Verdict, check_record

    wire, now = RECORDS["add"], VECTORS["gossip"][0]["now_ms"]
    policy = Policy(space=bytes.fromhex(VECTORS["space"]))
    limiter = AuthorLimiter(rate=policy.author_rate, burst=policy.author_burst)
    verdicts = [check_record(wire, policy, now, lambda _: False, limiter) for _ in range(201)]
    assert [v.verdict for v in verdicts[:200]] == [Verdict.ACCEPT] * 200
    assert (verdicts[200].verdict, verdicts[200].reason) == (Verdict.IGNORE, "author_rate")
    later = check_record(wire, policy, now + 1000, lambda _: False, limiter)
    assert later.verdict is Verdict.ACCEPT  # 20 tokens back after a second
    banned = check_record(wire, policy, now, lambda _: False, limiter, lambda _: True)
    assert (banned.verdict, banned.reason) == (Verdict.IGNORE, "author_banned")
    known = check_record(wire, policy, now, lambda _: True, limiter, lambda _: True)
    assert (known.verdict, known.reason) == (Verdict.IGNORE, "known")


def test_a_handler_that_fails_answers_internal_and_the_stream_is_closed(caplog):
    """NETWORK.md §5: a request the responder could read but failed to serve gets
    ``{"error": "internal"}``, never a silently closed stream; the fault is logged."""
    from types import SimpleNamespace

    from zoonode.net.rpc import read_frame, serve, write_frame

    class Stream(_Bytes):
        muxed_conn = SimpleNamespace(peer_id="peer-x")
        closed = False

        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.out = _Bytes()

        async def write(self, data: bytes) -> None:
            await self.out.write(data)

        async def close(self) -> None:
            self.closed = True

    async def broken(peer, request):
        raise RuntimeError("disk on fire")

    async def main():
        request = _Bytes()
        await write_frame(request, {"op": "digest", "type": "experience"})
        stream = Stream(request.data)
        await serve(broken)(stream)
        assert stream.closed
        answer = await read_frame(stream.out)
        assert answer["error"] == "internal" and "RuntimeError" in answer["message"]

    with caplog.at_level("WARNING", logger="zoonode.net.rpc"):
        trio.run(main)
    assert any("handler failed" in r.message for r in caplog.records)
