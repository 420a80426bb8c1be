"""``zoonode import``: JSON lines -> batched API calls, every failure tied to its line number.

A line holding a ``wire`` (what ``zoonode export`` writes) is a signed record, imported with
its author kept; any other object is a lesson this node signs. Each line is decoded by the same
parser as an API body (``inputs.parse_json``) and, if it decodes, sent as written, so the node
checks it like anything else it receives and answers for it alone. Every error is reported as
``(line, code, message)`` with the API's codes, and never stops the other lines.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zoonode.inputs import InputError, parse_json

MAX_LINE_BYTES = 64 * 1024  # the API's body limit for one lesson
MAX_REQUEST_BYTES = 1024 * 1024 - 1024  # the batch endpoints' limit, less the envelope
# Request-level answers that no other line would get past: stop and say so once.
FATAL_STATUSES = {0, 401, 403}


@dataclass
class ImportReport:
    outcomes: Counter = field(default_factory=Counter)
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (line, code, message)

    def summary(self) -> dict[str, Any]:
        return {**dict(self.outcomes), "errors": len(self.errors)}


@dataclass(frozen=True)
class Parsed:
    lessons: list[tuple[int, str]]  # (line number, the line's JSON text)
    wires: list[tuple[int, str]]  # (line number, hex wire)
    errors: list[tuple[int, str, str]]


def parse_lines(lines: Sequence[str | bytes]) -> Parsed:
    """Sort lines into lessons and wires; blank lines are skipped. Lines may be bytes (a
    file read as such): one that is not UTF-8 is that line's ``bad_text`` error."""
    lessons, wires, errors = [], [], []
    for number, line in enumerate(lines, 1):
        if number == 1:  # a byte order mark starts the file (Windows editors write one)
            line = line.removeprefix(b"\xef\xbb\xbf" if isinstance(line, bytes) else "\ufeff")
        if not line.strip():
            continue
        size = len(line) if isinstance(line, bytes) else len(line.encode("utf-8", "replace"))
        if size > MAX_LINE_BYTES:
            errors.append((number, "too_large", f"line is {size} bytes, over {MAX_LINE_BYTES}"))
            continue
        try:
            item = parse_json(line, "line")
        except InputError as exc:
            errors.append((number, exc.code, exc.message))
            continue
        if isinstance(line, bytes):
            line = line.decode("utf-8")  # parse_json has checked it
        if not isinstance(item, dict):
            errors.append((number, "bad_json", "line must be a JSON object"))
        elif isinstance(item.get("wire"), str):
            wires.append((number, item["wire"]))
        else:
            lessons.append((number, line))
    return Parsed(lessons, wires, errors)


def _chunks(items: list[tuple[int, str]], batch: int) -> list[list[tuple[int, str]]]:
    """At most ``batch`` items and MAX_REQUEST_BYTES per request."""
    out: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    size = 0
    for number, text in items:
        cost = len(text.encode("utf-8", "replace")) + 8
        if current and (len(current) >= batch or size + cost > MAX_REQUEST_BYTES):
            out.append(current)
            current, size = [], 0
        current.append((number, text))
        size += cost
    if current:
        out.append(current)
    return out


def _own(message: str) -> str:
    """A batch item's message as its line's: ``experiences[3].confidence ...`` names the item
    by its place in one request, which the reader cannot see; the line number says it."""
    return _ITEM_PREFIX.sub(lambda m: "" if m[1] == "experiences" else "wire", message, count=1)


_ITEM_PREFIX = re.compile(r"^(experiences|wires)\[\d+\]\.?")


def import_lines(
    client: Any,
    lines: Sequence[str | bytes],
    batch: int = 64,
    progress: Callable[[int], Any] = print,
) -> ImportReport:
    """Send ``lines`` through ``client`` (a ``Client``). Raises ClientError only if the node
    cannot be reached or refuses the token."""
    from zoonode.client import ClientError

    parsed = parse_lines(lines)
    report = ImportReport(errors=list(parsed.errors))
    progress(len(lines) - len(parsed.lessons) - len(parsed.wires))
    senders = ((parsed.lessons, client.share_lines), (parsed.wires, client.import_records))
    for items, send in senders:
        for chunk in _chunks(items, batch):
            try:
                results = send([x for _, x in chunk])
            except ClientError as exc:
                if exc.status in FATAL_STATUSES:
                    raise
                report.errors.extend((number, exc.code, exc.message) for number, _ in chunk)
                progress(len(chunk))
                continue
            for (number, _), result in zip(chunk, results, strict=True):
                if "error" in result:
                    err = result["error"]
                    report.errors.append((number, err["code"], _own(err["message"])))
                else:
                    report.outcomes[result["outcome"]] += 1
            progress(len(chunk))
    report.errors.sort()
    return report
