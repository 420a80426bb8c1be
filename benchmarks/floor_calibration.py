"""Which similarity floor? Precision and recall of the node's selection on labelled lessons.

    python benchmarks/floor_calibration.py                      # the floor swept, defaults
    python benchmarks/floor_calibration.py --sweep min_similarity=0.3,0.4 --set k=3
    python benchmarks/floor_calibration.py --sweep floor_min=0.25,0.3 --sweep floor_margin=0.05,0.1

The labelled set (written for this benchmark, ``benchmarks/data/``): 80 DSO-style lessons (the
40 shipped in ``zoonode/data/lessons.jsonl``, ids S00-S39, and 40 more, N00-N39) and 323
queries an agent would ask before a task: 243 English task or question queries, each labelled
with the lesson(s) that would help (3 per lesson, 8 with two or three), 40 off-topic English
queries that no lesson answers, and 20 of the English queries translated into German and
into Chinese (the language check).

Every query runs through ``zoonode.selection.select`` as a node runs it: every lesson a
candidate with its real cosine (the shipped encoder), near-duplicate clusters from the store's
rule (``store.duplicate_cosine``), each lesson by its own author of standing 1 (``--authors N``
shares N authors among them), and ``SelectionSettings`` built from the shipped config
(``config/default.toml``) with ``--set`` / ``--sweep`` overriding any of its fields, so a new
rule is measured through the settings it adds. For each setting:

- precision: selected lessons that are labelled relevant, over all selected (off-topic
  queries included: whatever they return is wrong);
- recall: relevant lessons selected, over all labelled relevant;
- hit@k: English on-topic queries whose answer holds a relevant lesson;
- empty: on-topic queries answered with nothing; off-topic answered: off-topic queries
  answered with something.

Writes ``benchmarks/results/floor-calibration.json`` (``--out`` to change the name).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

from zoonode.config import load_config
from zoonode.native.encoder import Encoder
from zoonode.selection import Candidate, SelectionSettings, select

from common import table, write_json

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "zoonode" / "data" / "lessons.jsonl"
LESSONS = HERE / "data" / "calibration_lessons.jsonl"
QUERIES = HERE / "data" / "calibration_queries.jsonl"
DEFAULT_SWEEP = "min_similarity=0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.6"


def load_lessons() -> list[dict]:
    shipped = [json.loads(line) for line in SHIPPED.read_text().splitlines() if line.strip()]
    lessons = [{"id": f"S{i:02d}", **item} for i, item in enumerate(shipped)]
    lessons += [json.loads(line) for line in LESSONS.read_text().splitlines() if line.strip()]
    return lessons


def load_queries() -> list[dict]:
    return [json.loads(line) for line in QUERIES.read_text().splitlines() if line.strip()]


def base_settings(overrides: dict[str, float]) -> SelectionSettings:
    """``SelectionSettings`` from the shipped config's ``[selection]``: every field the two
    share by name (newcomers_alone aside: every author here is established), then
    ``overrides``."""
    section = dataclasses.asdict(load_config().selection)
    names = {f.name: f for f in dataclasses.fields(SelectionSettings)}
    values = {k: v for k, v in section.items() if k in names and k != "newcomers_alone"}
    for key, value in overrides.items():
        if key not in names:
            raise SystemExit(f"SelectionSettings has no field {key!r} (has: {', '.join(names)})")
        values[key] = value
    return SelectionSettings(**values)


def parse_pairs(items: list[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for item in items:
        key, _, values = item.partition("=")
        out[key.strip()] = [_number(v) for v in values.split(",") if v.strip()]
    return out


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def clusters(vectors: np.ndarray, cosine: float) -> list[int]:
    """Near-duplicate clusters as the store links them: a lesson joins the first earlier
    cluster representative it reaches ``cosine`` with."""
    reps: list[int] = []
    cluster = []
    for i in range(len(vectors)):
        match = next((r for r in reps if float(vectors[r] @ vectors[i]) >= cosine), None)
        cluster.append(i if match is None else match)
        if match is None:
            reps.append(i)
    return cluster


def evaluate(
    settings: SelectionSettings,
    queries: list[dict],
    qvecs: np.ndarray,
    lessons: list[dict],
    lvecs: np.ndarray,
    cluster: list[int],
    authors: int,
    pool: int,
) -> dict:
    ids = [lesson["id"] for lesson in lessons]
    tp = selected_n = relevant_n = hits = empty = off_answered = top1 = on = off = 0
    floors = []
    for q, v in zip(queries, qvecs, strict=True):
        sims = lvecs @ v
        order = np.argsort(-sims)[:pool]
        cands = [
            Candidate(
                i.to_bytes(4, "big") + bytes(28),
                lvecs[i],
                float(sims[i]),
                (i % authors).to_bytes(4, "big") + bytes(28),
                cluster[i],
                float(lessons[i].get("confidence", 0.5)),
                reputation=1.0,
            )
            for i in map(int, order)
        ]
        sel = select(v, cands, settings)
        floors.append(getattr(sel, "floor", settings.min_similarity))
        got = [ids[int.from_bytes(s.candidate.id[:4], "big")] for s in sel.selected]
        relevant = set(q["relevant"])
        good = sum(1 for g in got if g in relevant)
        tp += good
        selected_n += len(got)
        relevant_n += len(relevant)
        if relevant:
            on += 1
            hits += good > 0
            empty += not got
            top1 += bool(got) and got[0] in relevant
        else:
            off += 1
            off_answered += bool(got)
    precision = tp / selected_n if selected_n else 0.0
    recall = tp / relevant_n if relevant_n else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "hit@k": hits / on if on else 0.0,
        "top1 relevant": top1 / on if on else 0.0,
        "empty (on-topic)": empty / on if on else 0.0,
        "off-topic answered": off_answered / off if off else 0.0,
        "returned per query": selected_n / len(queries),
        "floor p50": statistics.median(floors),
    }


def similarity_facts(queries, qvecs, lvecs, index: dict[str, int]) -> dict:
    """Where relevant and off-topic cosines lie: the floor must sit between them."""
    relevant, best_other, best_off, rank1 = [], [], [], 0
    on = 0
    for q, v in zip(queries, qvecs, strict=True):
        sims = lvecs @ v
        if q["relevant"]:
            on += 1
            rel = [index[r] for r in q["relevant"]]
            relevant.append(max(float(sims[i]) for i in rel))
            others = np.delete(sims, rel)
            best_other.append(float(others.max()))
            rank1 += int(np.argmax(sims)) in rel
        else:
            best_off.append(float(sims.max()))

    def pct(xs, p):
        return float(np.percentile(xs, p)) if xs else float("nan")

    return {
        "relevant cos p10": pct(relevant, 10),
        "relevant cos p50": pct(relevant, 50),
        "best unrelated cos p50 (on-topic queries)": pct(best_other, 50),
        "off-topic best cos p50": pct(best_off, 50),
        "off-topic best cos p90": pct(best_off, 90),
        "off-topic best cos max": max(best_off) if best_off else float("nan"),
        "relevant ranked first by cosine": rank1 / on if on else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", action="append", default=[], help="FIELD=v1,v2,...")
    parser.add_argument("--set", action="append", default=[], help="FIELD=value")
    parser.add_argument("--authors", type=int, default=0, help="0: one author per lesson")
    parser.add_argument("--out", default="floor-calibration")
    args = parser.parse_args()

    fixed = {k: v[0] for k, v in parse_pairs(args.set).items()}
    sweep = parse_pairs(args.sweep or [DEFAULT_SWEEP])
    lessons = load_lessons()
    queries = load_queries()
    cfg = load_config()
    started = time.perf_counter()
    encoder = Encoder.default()
    lvecs = encoder.encode_compact([lesson["text"] for lesson in lessons])
    qvecs = encoder.encode_compact([q["text"] for q in queries])
    encode_s = time.perf_counter() - started
    cluster = clusters(lvecs, cfg.store.duplicate_cosine)
    authors = args.authors or len(lessons)
    pool = cfg.selection.candidates
    index = {lesson["id"]: i for i, lesson in enumerate(lessons)}

    english = [i for i, q in enumerate(queries) if q["lang"] == "en"]
    en_q = [queries[i] for i in english]
    en_v = qvecs[english]
    rows = []
    keys = list(sweep)
    for combo in itertools.product(*(sweep[k] for k in keys)):
        overrides = {**fixed, **dict(zip(keys, combo, strict=True))}
        settings = base_settings(overrides)
        row = {k: overrides[k] for k in keys}
        row.update(evaluate(settings, en_q, en_v, lessons, lvecs, cluster, authors, pool))
        rows.append(row)
    print(
        f"{len(lessons)} lessons, {len(en_q)} English queries "
        f"({sum(1 for q in en_q if not q['relevant'])} off-topic), k = {base_settings(fixed).k}, "
        f"{'one author per lesson' if authors == len(lessons) else f'{authors} authors'}\n"
    )
    columns = [
        *keys,
        "precision",
        "recall",
        "f1",
        "hit@k",
        "top1 relevant",
        "empty (on-topic)",
        "off-topic answered",
        "returned per query",
        "floor p50",
    ]
    print(table(rows, columns))

    facts = similarity_facts(en_q, en_v, lvecs, index)
    print("\n" + "\n".join(f"{k}: {v:.3f}" for k, v in facts.items()))

    default = base_settings(fixed)
    languages = []
    for lang in ("en", "de", "zh"):
        picked = [i for i, q in enumerate(queries) if q["lang"] == lang]
        if lang == "en":  # the English originals of the translated queries
            translated = {tuple(q["relevant"]) for q in queries if q["lang"] == "de"}
            originals = {}
            for i in picked:
                key = tuple(queries[i]["relevant"])
                if key in translated and key not in originals:
                    originals[key] = i
            picked = [originals[k] for k in sorted(originals)]
        qs = [queries[i] for i in picked]
        row = {"language": lang, "queries": len(qs)}
        row.update(facts_for(qs, qvecs[picked], lvecs, index))
        row.update(evaluate(default, qs, qvecs[picked], lessons, lvecs, cluster, authors, pool))
        languages.append(row)
    print("\nLanguages, at the defaults:")
    print(
        table(
            languages,
            [
                "language",
                "queries",
                "relevant cos p50",
                "relevant ranked first",
                "hit@k",
                "empty (on-topic)",
                "returned per query",
            ],
        )
    )

    path = write_json(
        args.out,
        {
            "lessons": len(lessons),
            "queries": {
                "english on-topic": sum(1 for q in en_q if q["relevant"]),
                "english off-topic": sum(1 for q in en_q if not q["relevant"]),
                "translated": len(queries) - len(en_q),
            },
            "authors": authors,
            "settings": {**dataclasses.asdict(default), "candidates": pool},
            "sweep": keys,
            "rows": rows,
            "similarities": facts,
            "languages": languages,
            "encode_seconds": encode_s,
        },
    )
    print(f"\nwrote {path}")


def facts_for(queries, qvecs, lvecs, index) -> dict:
    rel, first = [], 0
    for q, v in zip(queries, qvecs, strict=True):
        sims = lvecs @ v
        ids = [index[r] for r in q["relevant"]]
        rel.append(max(float(sims[i]) for i in ids))
        first += int(np.argmax(sims)) in ids
    return {"relevant cos p50": float(np.median(rel)), "relevant ranked first": first / len(rel)}


if __name__ == "__main__":
    main()
