"""``zoonode import``: JSON lines -> batched API calls, every failure tied to its line number.

A line holding a ``wire`` (what ``zoonode export`` writes) is a signed record, imported with
its author kept; any other object is a lesson this node signs. Parsing is pure; sending goes
through a ``Client``, so the node applies the same checks as to anything else it receives.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

LESSON_KEYS = {"text", "domain", "confidence", "examples", "source_model"}


@dataclass
class ImportReport:
    outcomes: Counter = field(default_factory=Counter)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, message)

    def summary(self) -> dict[str, Any]:
        return {**dict(self.outcomes), "errors": len(self.errors)}


@dataclass(frozen=True)
class Parsed:
    lessons: list[tuple[int, dict]]
    wires: list[tuple[int, str]]
    errors: list[tuple[int, str]]


def parse_lines(lines: Sequence[str]) -> Parsed:
    lessons, wires, errors = [], [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append((number, f"not JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(item, dict):
            errors.append((number, "not a JSON object"))
        elif isinstance(item.get("wire"), str):
            wires.append((number, item["wire"]))
        else:
            lessons.append((number, {k: v for k, v in item.items() if k in LESSON_KEYS}))
    return Parsed(lessons, wires, errors)


def import_lines(
    client: Any, lines: Sequence[str], batch: int = 64, progress: Callable[[int], Any] = print
) -> ImportReport:
    parsed = parse_lines(lines)
    report = ImportReport(errors=list(parsed.errors))
    progress(len(lines) - len(parsed.lessons) - len(parsed.wires))
    for items, send in ((parsed.lessons, client.share_many), (parsed.wires, client.import_records)):
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            for (number, _), result in zip(chunk, send([x for _, x in chunk]), strict=True):
                if "error" in result:
                    err = result["error"]
                    report.errors.append((number, f"{err['code']}: {err['message']}"))
                else:
                    report.outcomes[result["outcome"]] += 1
            progress(len(chunk))
    report.errors.sort()
    return report
