"""Wire protocol v1 rates on one core: encode, sign, verify, decode (records per second).

    python benchmarks/protocol.py

Records are real: lessons from the shipped reference corpus, encoded and compressed by the
native encoder, ~1.2 KB each. Median of 5 runs; target: verify + decode >= 5000 records/s.
"""

from __future__ import annotations

import os

import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.experiences import create_experiences
from zoonode.native.encoder import Encoder
from zoonode.native.space import data_dir
from zoonode.protocol import content_id, decode, encode_unsigned, sign, signing_message

from common import rate, table, write_json


def main() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    texts = (data_dir() / "reference_corpus.txt").read_text().splitlines()[:200]
    key = Ed25519PrivateKey.generate()
    records = create_experiences(
        Encoder.default(threads=1),
        key,
        [{"text": t, "domain": "python.stdlib", "confidence": 0.6} for t in texts],
    )
    exps = [r.experience for r in records]
    wires = [r.wire for r in records]
    n = len(records)
    it = {"i": 0}

    def cycle(fn):
        def call():
            it["i"] = (it["i"] + 1) % n
            return fn(it["i"])

        return call

    verify_key = nacl.signing.VerifyKey(records[0].experience.author)
    ops = {
        "encode (canonical bytes)": cycle(lambda i: encode_unsigned(exps[i])),
        "content id (encode + SHA-256)": cycle(lambda i: content_id(exps[i])),
        "sign (id + Ed25519 + encode)": cycle(lambda i: sign(exps[i], key)),
        "verify only (libsodium)": cycle(
            lambda i: verify_key.verify(signing_message(records[i].id), records[i].signature)
        ),
        "decode + verify (strict, full)": cycle(lambda i: decode(wires[i])),
    }
    rows = []
    for name, fn in ops.items():
        median, runs = rate(fn, 2000)
        rows.append(
            {
                "operation": name,
                "records/s": median,
                "us/record": 1e6 / median,
                "runs": [round(r) for r in runs],
            }
        )
    print(
        f"\nProtocol v1 on one core, {n} real records, mean size "
        f"{sum(map(len, wires)) / n:.0f} bytes"
    )
    print(table(rows, ["operation", "records/s", "us/record"]))
    path = write_json(
        "protocol", {"rows": rows, "records": n, "mean_bytes": sum(map(len, wires)) / n}
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
