"""Conformance: a peer built from the spec (tests/minimal_peer.py, no zoonode.net or
zoonode.node) joins a real node on 127.0.0.1 and publishes, is rejected with a reason, syncs
and queries; what the node did is read from its HTTP API and /metrics, as an operator would."""

from __future__ import annotations

import ast
import hashlib
import time
from pathlib import Path

import httpx
import numpy as np
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from minimal_peer import PROTOCOLS, VECTORS, MinimalPeer, batch
from prometheus_client.parser import text_string_to_metric_families

from netutil import run_trio, start_nodes, wait_until

LESSON = "Reproduce a failing test alone before changing the code it covers"
QUERY = "how should I start debugging a failing unit test"


def test_minimal_peer_imports_nothing_of_the_node():
    tree = ast.parse(Path(__file__).with_name("minimal_peer.py").read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    ours = {m for m in imported if m and m.startswith("zoonode")}
    assert ours <= {"zoonode.protocol", "zoonode.native"}, ours


def _events(metrics_text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            key = labels.get("verdict", labels.get("kind", ""))
            out[(family.name, key, labels.get("reason", ""))] = sample.value
    return out


def test_a_minimal_peer_publishes_is_rejected_syncs_and_queries(tmp_path, encoder):
    from libp2p.peer.id import ID

    from zoonode.native.codec import compress
    from zoonode.protocol import Experience, Op, public_key_bytes, sign

    author = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"conformance author").digest())
    space = bytes.fromhex(VECTORS["space"])
    exp = Experience(
        op=Op.ADD,
        author=public_key_bytes(author),
        space=space,
        created_at=time.time_ns() // 1_000_000,
        text=LESSON,
        domain="software.testing",
        confidence=0.8,
        code=compress(encoder.encode(LESSON)[0], encoder.space_info.v_ref),
    )
    record = sign(exp, author)
    flipped = bytearray(record.wire)
    flipped[-1] ^= 1

    async def main():
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as http:
            [node] = await start_nodes(
                nursery, encoder, [tmp_path / "node"], api={"listen": "127.0.0.1:0"}
            )
            peer = MinimalPeer(hashlib.sha256(b"conformance peer").digest())
            await nursery.start(peer.run)
            await peer.connect(node.info().addrs[0])
            node_id = ID.from_base58(node.peer_id)
            await wait_until(lambda: peer.meshed_with(node_id), what="the node in our mesh")

            async def metrics() -> dict:
                return _events((await http.get(f"{node.api_url}/metrics")).text)

            async def stored() -> bool:
                url = f"{node.api_url}/v1/experiences/{record.id.hex()}"
                return (await http.get(url)).status_code == 200

            # publish -> accepted, checked and stored
            await peer.publish(batch([record.wire]))
            with trio.fail_after(30):
                while not await stored():
                    await trio.sleep(0.1)
            accepted = ("zoonode_gossip_records", "accept", "ok")
            assert (await metrics())[accepted] == 1

            # bad messages -> rejected, each with its reason
            await peer.publish(batch([bytes(flipped)]))
            await peer.publish(b"\xc1 not msgpack")
            with trio.fail_after(20):
                while True:
                    m = await metrics()
                    if m.get(("zoonode_gossip_records", "reject", "malformed_batch")) == 1:
                        break
                    await trio.sleep(0.1)
            assert m[("zoonode_gossip_records", "reject", "bad_signature")] == 1

            # sync: digest, ids, get (NETWORK.md §6)
            sync = PROTOCOLS["sync"]
            digest = await peer.request(node_id, sync, {"op": "digest"})
            bucket_ms = digest["bucket_ms"]
            start = exp.created_at - exp.created_at % bucket_ms
            assert digest["buckets"] == {start: [1, record.id[:16]]}  # int keys, 16-byte xor
            listed = await peer.request(
                node_id, sync, {"op": "ids", "start": start, "end": start + bucket_ms}
            )
            assert listed == {"ids": [record.id]}
            got = await peer.request(node_id, sync, {"op": "get", "ids": [record.id]})
            assert got == {"wires": [record.wire]}
            refused = await peer.request(node_id, sync, {"op": "merkle"})
            assert refused["error"] == "unknown_op"
            # any msgpack int is a valid bound (clamped to created_at's range): 2^64 - 1 used to
            # overflow SQLite and the node closed the stream without an answer
            wide = await peer.request(
                node_id, sync, {"op": "ids", "start": -(2**63), "end": 2**64 - 1}
            )
            assert wide == {"ids": [record.id]}

            # query in the canonical space (NETWORK.md §7)
            query = PROTOCOLS["query"]
            canonical = encoder.encode(QUERY)[0].astype("<f2").tobytes()
            answer = await peer.request(
                node_id, query, {"space": space, "vector": canonical, "k": 5}
            )
            assert answer["wires"] == [record.wire]
            exact = float(encoder.encode(QUERY)[0] @ encoder.encode(LESSON)[0])
            assert np.isclose(answer["scores"][0], exact, atol=2e-3)  # float16 costs ~nothing
            compact = encoder.encode_compact(QUERY)[0].astype("<f4").tobytes()  # 384 floats
            refused = await peer.request(node_id, query, {"space": space, "vector": compact})
            assert refused["error"] == "wrong_dimension"
            other = await peer.request(node_id, query, {"space": bytes(16), "vector": canonical})
            assert other["error"] == "wrong_space"
            # filters at their limits (NETWORK.md §7.1): answers, never a silently closed stream
            asked = {"space": space, "vector": canonical}
            edges = {  # the codes the HTTP API gives for the same faults
                "out_of_range": {"min_confidence": 2**64 - 1},  # overflowed SQLite before
                "non_finite": {"min_confidence": float("nan")},  # answered an empty list
                "oversize": {"domain": "a" * 60_000},  # SQLite: LIKE pattern too complex
                "bad_domain": {"domain": "Math"},
                "bad_request": {"min_confidence": True},
            }
            for code, bad in edges.items():
                assert (await peer.request(node_id, query, {**asked, **bad}))["error"] == code
            edge = await peer.request(node_id, query, {**asked, "min_confidence": 1, "domain": ""})
            assert edge == {"wires": [], "scores": []}  # an int bound; "" is no domain filter
            nursery.cancel_scope.cancel()

    run_trio(main, 120)
