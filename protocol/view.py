"""A JSON-ready view of a signed record, for the CLI, logs and the HTTP API."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

from .record import Op
from .wire import SignedRecord


def record_to_dict(record: SignedRecord) -> dict[str, Any]:
    exp = record.experience
    out: dict[str, Any] = {
        "id": record.id.hex(),
        "op": exp.op.name.lower(),
        "author": exp.author.hex(),
        "space": exp.space.hex(),
        "created_at": exp.created_at,
        "created_at_iso": datetime.fromtimestamp(exp.created_at / 1000, UTC).isoformat(),
    }
    if exp.parent is not None:
        out["parent"] = exp.parent.hex()
    if exp.op is not Op.REVOKE:
        assert exp.code is not None
        out |= {
            "text": exp.text,
            "domain": exp.domain,
            "confidence": exp.confidence,
            "examples": [
                {"input": e.input, "output": e.output, "correct": e.correct} for e in exp.examples
            ],
            "source_model": exp.source_model,
            "code": {"scale": struct.unpack_from("<f", exp.code)[0], "bytes": len(exp.code)},
        }
    out |= {"signature": record.signature.hex(), "size": len(record.wire)}
    return out
