"""Encoder and BitDelta codec on real data: retrieval quality, code fidelity, speed.

    python benchmarks/encoder.py [--quick]

Retrieval: eg 1.2.3 example descriptions (queries) vs cheat 2.5.1 tips (corpus), relevant =
tips of the same command (benchmarks/datasets.py). Metrics: MRR@10, nDCG@10 (binary gains),
Recall@10 = |relevant in top 10| / min(|relevant|, 10).
Codec: relative L2 error, cos(v, v_hat) and neighbour recall@10 (agreement of code-scored
top 10 with the exact float top 10) over corpus + queries + the reference corpus, for three
scale choices. Speed: texts/s of ~30-word texts, bare backbone vs native (head + normalise +
compress), interleaved in one run, median of repeats.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from collections import Counter

import numpy as np

from zoonode.native import codec
from zoonode.native.encoder import Encoder
from zoonode.native.head import lift, normalize, truncate
from zoonode.native.space import data_dir

from common import table, write_json
from datasets import load


def ranking_metrics(scores: np.ndarray, data, k: int = 10) -> dict[str, float]:
    mrr, ndcg, recall = [], [], []
    for i in range(scores.shape[0]):
        rel = data.relevant(i)
        top = np.argsort(-scores[i])[:k]
        hits = [j in rel for j in top]
        first = next((r for r, h in enumerate(hits) if h), None)
        mrr.append(0.0 if first is None else 1.0 / (first + 1))
        dcg = sum(1.0 / math.log2(r + 2) for r, h in enumerate(hits) if h)
        ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(rel), k)))
        ndcg.append(dcg / ideal if ideal else 0.0)
        recall.append(sum(hits) / min(len(rel), k) if rel else 0.0)
    return {
        "MRR@10": float(np.mean(mrr)),
        "nDCG@10": float(np.mean(ndcg)),
        "Recall@10": float(np.mean(recall)),
    }


def tfidf_scores(queries: list[str], corpus: list[str]) -> np.ndarray:
    def tokens(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    docs = [Counter(tokens(t)) for t in corpus]
    df = Counter(w for d in docs for w in d)
    vocab = {w: i for i, w in enumerate(df)}
    idf = np.array([math.log((1 + len(docs)) / (1 + df[w])) + 1 for w in vocab])

    def vectorise(texts: list[str]) -> np.ndarray:
        m = np.zeros((len(texts), len(vocab)), np.float32)
        for i, t in enumerate(texts):
            for w, c in Counter(tokens(t)).items():
                if w in vocab:
                    m[i, vocab[w]] = (1 + math.log(c)) * idf[vocab[w]]
        n = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.where(n == 0, 1, n)

    return vectorise(queries) @ vectorise(corpus).T


def code_scores(queries: np.ndarray, codes: list[bytes], v_ref: np.ndarray) -> np.ndarray:
    return np.stack([codec.score(q, codes, v_ref) for q in queries])


def rerank(code_s: np.ndarray, exact: np.ndarray, depth: int) -> np.ndarray:
    """Keep the top ``depth`` by code score, order them by the exact score."""
    out = np.full_like(exact, -np.inf)
    top = np.argsort(-code_s, axis=1)[:, :depth]
    rows = np.arange(exact.shape[0])[:, None]
    out[rows, top] = exact[rows, top]
    return out


def neighbour_recall(approx: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    a = np.argsort(-approx, axis=1)[:, :k]
    e = np.argsort(-exact, axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, e, strict=True)]))


def codec_study(vectors: np.ndarray, v_ref: np.ndarray, n_queries: int) -> list[dict]:
    """Scale choices on real canonical vectors; queries are held out from the corpus."""
    queries, corpus = vectors[:n_queries], vectors[n_queries:]
    exact = queries @ corpus.T
    delta = corpus - v_ref
    signs = np.where(delta >= 0, 1.0, -1.0).astype(np.float32)
    rows = []
    for name, scale in (
        ("mean |d| (BitDelta, ours)", np.abs(delta).mean(1)),
        ("RMS of d", np.sqrt((delta**2).mean(1))),
        ("max |d| / 127 (paper, 8-bit formula)", np.abs(delta).max(1) / 127),
    ):
        v_hat = v_ref + scale[:, None] * signs
        err = np.linalg.norm(corpus - v_hat, axis=1) / np.linalg.norm(corpus, axis=1)
        cos = (corpus * v_hat).sum(1) / np.linalg.norm(v_hat, axis=1)
        rows.append(
            {
                "scale": name,
                "rel L2 error": float(np.median(err)),
                "cos(v, v_hat)": float(np.median(cos)),
                "recall@10 q.v_hat": neighbour_recall(queries @ v_hat.T, exact),
                "recall@10 cos(q, v_hat)": neighbour_recall(queries @ normalize(v_hat).T, exact),
            }
        )
    codes = codec.compress_many(corpus, v_ref)
    qcodes = codec.compress_many(queries, v_ref)
    ham = np.stack([-codec.hamming(c, codes).astype(np.float32) for c in qcodes])
    from_codes = code_scores(queries, codes, v_ref)
    rows.append(
        {"scale": "Hamming between codes", "recall@10 q.v_hat": neighbour_recall(ham, exact)}
    )
    for depth in (20, 50):
        rows.append(
            {
                "scale": f"code top {depth} + float rerank",
                "recall@10 q.v_hat": neighbour_recall(rerank(from_codes, exact, depth), exact),
            }
        )
    in_top = np.mean(
        [
            len(set(np.argsort(-h)[:20]) & set(np.argsort(-e)[:10])) / 10
            for h, e in zip(ham, exact, strict=True)
        ]
    )
    rows.append({"scale": "true top 10 inside Hamming top 20", "recall@10 q.v_hat": float(in_top)})
    return rows


def speed(enc: Encoder, texts: list[str], batches: tuple[int, ...], repeats: int) -> list[dict]:
    """texts/s of the bare backbone and of native (+ head, normalise, compress), interleaved;
    and, because machine noise (+-20 % here) swamps a sub-1 % effect, the added work timed
    alone on the same batches."""
    v_ref = enc.space_info.v_ref
    rows = []
    for batch in batches:
        sample = texts[: max(batch * 4, 64)] if batch > 1 else texts[:48]
        bare, native, added = [], [], []
        for _ in range(repeats):  # interleaved so that machine noise hits both alike
            t = time.perf_counter()
            outs = [
                normalize(enc.backbone.embed(sample[i : i + batch]))
                for i in range(0, len(sample), batch)
            ]
            bare.append(len(sample) / (time.perf_counter() - t))
            t = time.perf_counter()
            for i in range(0, len(sample), batch):
                v = enc.lift(normalize(enc.backbone.embed(sample[i : i + batch])))
                codec.compress_many(v, v_ref)
            native.append(len(sample) / (time.perf_counter() - t))
            t = time.perf_counter()
            for out in outs:
                codec.compress_many(enc.lift(out), v_ref)
            added.append((time.perf_counter() - t) / len(sample) * 1000)
        b, n = statistics.median(bare), statistics.median(native)
        a = statistics.median(added)
        rows.append(
            {
                "batch": batch,
                "bare texts/s": b,
                "native texts/s": n,
                "native added ms/text": a,
                "added share of backbone": f"{a * b / 10:.2f}%",
            }
        )
    return rows


def run_speed(enc: Encoder, quick: bool) -> tuple[list[dict], float]:
    """~30-word texts: three real reference sentences joined."""
    reference = (data_dir() / "reference_corpus.txt").read_text().splitlines()
    words = [t for t in reference if len(t.split()) >= 8]
    texts = [
        " ".join([words[i], words[(i * 7 + 3) % len(words)], words[(i * 13 + 5) % len(words)]])
        for i in range(len(words))
    ]
    rows = speed(enc, texts, (1, 32, 128), repeats=2 if quick else 5)
    mean_words = float(np.mean([len(t.split()) for t in texts[:512]]))
    import torch

    print(
        f"\nSpeed: texts of {mean_words:.0f} words on average, {enc.backbone.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        table(
            rows,
            [
                "batch",
                "bare texts/s",
                "native texts/s",
                "native added ms/text",
                "added share of backbone",
            ],
        )
    )
    return rows, mean_words


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--speed-only", action="store_true", help="only the speed table")
    args = parser.parse_args()
    enc = Encoder.default(threads=args.threads or None)
    if args.speed_only:
        rows, words = run_speed(enc, args.quick)
        write_json("encoder-speed", {"speed": rows, "speed_mean_words": words})
        return
    data = load()
    v_ref = enc.space_info.v_ref

    qc = enc.encode_compact(data.queries, batch_size=64)
    cc = enc.encode_compact(data.corpus, batch_size=64)
    qn, cn = lift(qc, enc.space_info.head), lift(cc, enc.space_info.head)
    exact = qn @ cn.T
    codes = codec.compress_many(cn, v_ref)
    from_codes = code_scores(qn, codes, v_ref)
    retrieval = [
        {
            "method": "TF-IDF (baseline)",
            **ranking_metrics(tfidf_scores(data.queries, data.corpus), data),
        },
        {"method": "bare backbone 384-d", **ranking_metrics(qc @ cc.T, data)},
        {"method": "native 7680-d", **ranking_metrics(exact, data)},
        {"method": "code only (964 B)", **ranking_metrics(from_codes, data)},
        {
            "method": "code top 20 + float rerank",
            **ranking_metrics(rerank(from_codes, exact, 20), data),
        },
    ]
    for dims in (4096, 2048, 1024):
        retrieval.append(
            {
                "method": f"Matryoshka view {dims}-d",
                **ranking_metrics(truncate(qn, dims) @ truncate(cn, dims).T, data),
            }
        )
    print(f"\nRetrieval: {len(data.queries)} eg queries vs {len(data.corpus)} cheat tips")
    print(table(retrieval, ["method", "MRR@10", "nDCG@10", "Recall@10"]))

    reference = (data_dir() / "reference_corpus.txt").read_text().splitlines()
    pool = np.concatenate([qn, cn, enc.encode(reference, batch_size=64)])
    codec_rows = codec_study(pool, v_ref, n_queries=len(qn))
    print(
        f"\nBitDelta on {len(pool) - len(qn)} real vectors, {len(qn)} held-out queries "
        "(median error and cosine; recall = overlap with the exact float top 10)"
    )
    print(
        table(
            codec_rows,
            [
                "scale",
                "rel L2 error",
                "cos(v, v_hat)",
                "recall@10 q.v_hat",
                "recall@10 cos(q, v_hat)",
            ],
        )
    )

    rows, mean_words = run_speed(enc, args.quick)
    path = write_json(
        "encoder",
        {
            "retrieval": retrieval,
            "codec": codec_rows,
            "speed": rows,
            "speed_mean_words": mean_words,
            "space": enc.space_info.hex,
            "queries": len(data.queries),
            "corpus": len(data.corpus),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
