"""Real filler text for retrieval benchmarks at 20k-100k lessons: docstring paragraphs.

    python benchmarks/filler.py [--count 100000]

The eg/cheat set (benchmarks/datasets.py) has 1,334 tips; a store of 20k or 100k lessons needs
real text around them that is *not* relevant to the eg queries by construction. The source is
the docstrings of Python's standard library and of the installed third-party packages (the
site-packages directory that holds numpy: torch, transformers, numpy, libp2p ... as the
project's dependencies pin them): every module, class and function docstring, parsed with
``ast`` (nothing is imported), split into paragraphs; a paragraph is kept when it is prose of
8-60 words (no doctest, reST directive, parameter list or URL). Duplicates are dropped; the
order is by sha256 of the text, so the first N are a fixed, shuffled sample and a 20k store is
a prefix of the 100k one. The list is cached in .bench-cache/ with the sources it came from;
its sha256 goes into every result JSON that uses it.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sysconfig
from pathlib import Path

import numpy as np

from datasets import CACHE

SKIP = (">>>", "::", "----", "====", ":param", ":return", ":rtype", "http", "|", "{", "}")
MIN_WORDS, MAX_WORDS = 8, 60


def sources() -> list[Path]:
    import numpy

    return [Path(sysconfig.get_paths()["stdlib"]), Path(numpy.__file__).parent.parent]


def _paragraphs(root: Path) -> set[str]:
    out: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if {"test", "tests", "site-packages"} & set(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in re.split(r"\n\s*\n", doc):
                if any(s in para for s in SKIP):
                    continue
                text = " ".join(para.split())
                if not text[:1].isalpha():
                    continue
                if len(text.split()) > MAX_WORDS:  # long prose: its sentences, ~40 words a text
                    out.update(_sentence_groups(text))
                elif len(text.split()) >= MIN_WORDS:
                    out.add(text)
    return out


def _sentence_groups(text: str, words: int = 40) -> list[str]:
    groups, current = [], []
    for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Za-z])", text):
        current.append(sentence)
        if sum(len(s.split()) for s in current) >= words:
            groups.append(" ".join(current))
            current = []
    if current:
        groups.append(" ".join(current))
    return [g for g in groups if MIN_WORDS <= len(g.split()) <= MAX_WORDS]


def load(count: int, cache: Path = CACHE) -> tuple[list[str], dict]:
    """The first ``count`` filler texts and where they came from (sources, total, sha256)."""
    path = cache / "filler.json"
    if path.exists():
        stored = json.loads(path.read_text())
    else:
        roots = sources()
        texts: set[str] = set()
        for root in roots:
            texts |= _paragraphs(root)
        ordered = sorted(texts, key=lambda t: hashlib.sha256(t.encode()).digest())
        stored = {"sources": [str(r) for r in roots], "texts": ordered}
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored))
    texts = stored["texts"]
    if count > len(texts):
        raise SystemExit(f"only {len(texts)} filler texts available, {count} asked")
    chosen = texts[:count]
    digest = hashlib.sha256("\n".join(chosen).encode()).hexdigest()
    return chosen, {
        "source": "docstring paragraphs (8-60 words) of " + ", ".join(stored["sources"]),
        "available": len(texts),
        "count": count,
        "sha256": digest,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    texts, info = load(parser.parse_args().count)
    print(json.dumps(info, indent=2))
    print(texts[:3])


CHUNK = 5000


def encoded(enc, texts: list[str], cache: Path = CACHE, chunk: int = CHUNK) -> np.ndarray:
    """``enc.encode_compact(texts)``, cached in .bench-cache/ per chunk of ``chunk`` texts by
    their and the space's sha256 (encoding 100k texts takes 15-60 min on 2 busy cores; a
    chunk at a time keeps what is done if a run stops)."""
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        key = hashlib.sha256(enc.space + "\n".join(part).encode()).hexdigest()[:24]
        path = cache / f"vectors-{key}.npy"
        vectors = np.load(path) if path.exists() else None
        if vectors is None or vectors.shape[0] != len(part):
            vectors = enc.encode_compact(part, batch_size=64, show_progress=False)
            np.save(path, vectors)
        parts.append(vectors)
    return np.concatenate(parts) if parts else np.zeros((0, enc.space_info.hidden), np.float32)
