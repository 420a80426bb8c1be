"""Heterogeneous peers: which embedding check accepts honest records of a peer on another
backbone (with a fitted head) and still rejects hijacks?

    python benchmarks/hetero_check.py [--backbones l6 l3 mpnet]

Vectors come from benchmarks/hetero_vectors.py (cached). For every ordered pair sender ->
receiver of backbones: the sender's 964-byte codes of the 1,777 held-out texts (eg examples +
cheat tips, never seen by the head's fit), checked against the receiver's re-encoding:

- honest: a record's own code and text (same backbone, or fitted: another backbone);
- hijack "target": the code of a target query (the 443 eg examples) with an unrelated text (a
  cheat tip of another command);
- hijack "neighbour": the code of the target query's nearest cheat tip (the sender's vectors)
  with an unrelated text;
- hijack "random": random sign bits at an honest code's scale, with a held-out text;
- for reference, not a hijack of the issue: "own neighbour", a text with the code of its own
  nearest held-out text (related by construction; the old benchmark's neighbour case).

Statistics (zoonode.embedcheck): agreement (cosine of code and re-encoded text) and rank (how
many of the 1,085 reference texts, encoded by the receiver, the code prefers to the record's
text). Settings side by side: absolute thresholds and the relative rule at several bounds.
Writes benchmarks/results/hetero_check.json with the full confusion table per setting.
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
from hetero_vectors import vectors

from zoonode.embedcheck import RelativeAgreement, agreement_and_rank, code_vectors
from zoonode.native.codec import compress_many
from zoonode.native.head import lift
from zoonode.native.space import load_space

from common import table, write_json

RNG = np.random.default_rng(22)
UNRELATED = 0.3


def quantiles(x: np.ndarray) -> dict[str, float]:
    return {
        "min": float(np.min(x)),
        "p1": float(np.percentile(x, 1)),
        "p5": float(np.percentile(x, 5)),
        "median": float(np.median(x)),
        "p95": float(np.percentile(x, 95)),
        "p99": float(np.percentile(x, 99)),
        "max": float(np.max(x)),
    }


def derangement(n: int, avoid: np.ndarray | None = None, labels=None) -> np.ndarray:
    """A permutation with no fixed point and, given labels, no pairing within one label."""
    while True:
        p = RNG.permutation(n)
        bad = p == np.arange(n)
        if labels is not None:
            bad |= labels[p] == (labels if avoid is None else avoid)
        if not bad.any():
            return p
        # re-draw only the bad ones a few times, then start over
        for _ in range(50):
            idx = np.flatnonzero(bad)
            p[idx] = RNG.integers(0, n, len(idx))
            bad = p == np.arange(n)
            if labels is not None:
                bad |= labels[p] == (labels if avoid is None else avoid)
            if not bad.any():
                return p


def absolute(threshold: float, a: np.ndarray, rank: np.ndarray) -> np.ndarray:
    return a >= threshold


def relative(max_rank: int, floor: float, a: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """RelativeAgreement's decision (its accept_above = 0.9 shortcut included)."""
    return ((rank <= max_rank) & (a >= floor)) | (a >= 0.9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", nargs="+", default=["l6", "l3", "mpnet"])
    args = parser.parse_args()
    from datasets import load

    data = load()
    nq = len(data.queries)
    qcmd = np.array(data.query_command)
    ccmd = np.array(data.corpus_command)
    held_cmd = np.concatenate([qcmd, ccmd])
    space = load_space()
    head, v_ref = space.head, space.v_ref
    vec = {b: vectors(b) for b in args.backbones}
    held = {b: np.concatenate([v["queries"], v["corpus"]]) for b, v in vec.items()}
    n = len(held_cmd)
    # attack material (fixed for every pair): unrelated texts for the targets
    target_text = nq + derangement(len(ccmd), avoid=None, labels=None)[:nq]  # corpus indices
    for i in range(nq):  # the text must be a tip of another command than the target's
        while held_cmd[target_text[i]] == qcmd[i]:
            target_text[i] = nq + RNG.integers(0, len(ccmd))
    random_text = RNG.integers(0, n, 2000)

    codes, cvecs = {}, {}
    for b in args.backbones:
        codes[b] = compress_many(lift(held[b], head), v_ref)
        cvecs[b] = code_vectors(codes[b], head, v_ref)
    scale = float(np.median([np.frombuffer(c[:4], "<f4")[0] for c in codes["l6"]]))
    rand_bits = RNG.integers(0, 256, (2000, 960), dtype=np.uint8)
    rand_codes = [np.float32(scale).tobytes() + row.tobytes() for row in rand_bits]
    rand_vecs = code_vectors(rand_codes, head, v_ref)

    cases: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for s in args.backbones:
        sims = held[s][:nq] @ held[s][nq:].T
        nearest_tip = nq + sims.argmax(1)
        own = held[s] @ held[s].T
        np.fill_diagonal(own, -2)
        own_nn = own.argmax(1)
        for r in args.backbones:
            refs = np.concatenate([vec[r]["reference"], vec[r]["anchors"]])  # Encoder.references
            u = held[r]
            pair = f"{s} -> {r}"
            kind = "honest same-backbone" if s == r else "honest fitted"
            stat = {
                kind: agreement_and_rank(cvecs[s], u, refs),
                "hijack: target query's code": agreement_and_rank(
                    cvecs[s][:nq], u[target_text], refs
                ),
                "hijack: target's neighbour's code": agreement_and_rank(
                    cvecs[s][nearest_tip], u[target_text], refs
                ),
                "own neighbour's code (not a hijack)": agreement_and_rank(
                    cvecs[s][own_nn], u, refs
                ),
            }
            # the same hijacks restricted to texts truly unrelated to the code's source text
            # (anchor cosine < 0.3): a "hijack" whose text is about the same thing (git vs
            # git, copying vs copying) is a relevant lesson, stored at its own text's place
            for kind, src in (
                ("target query's code", np.arange(nq)),
                ("target's neighbour's code", nearest_tip),
            ):
                a, rk = stat[f"hijack: {kind}"]
                keep = np.einsum("ij,ij->i", held["l6"][src], held["l6"][target_text]) < UNRELATED
                stat[f"hijack: {kind}, text cos < {UNRELATED}"] = (a[keep], rk[keep])
            if s == r:
                stat["hijack: random code"] = agreement_and_rank(rand_vecs, u[random_text], refs)
            cases[pair] = stat

    settings = [(f"absolute >= {t}", partial(absolute, t)) for t in (0.9, 0.5, 0.35)]
    for k, floor in ((0, 0.0), (2, 0.1), (5, 0.1), (10, 0.1), (20, 0.1), (5, 0.3)):
        name = f"rank <= {k}" + (f", agreement >= {floor}" if floor else "")
        settings.append((name, partial(relative, k, floor)))
    confusion = []
    for name, accept in settings:
        for pair, stat in cases.items():
            row = {"setting": name, "pair": pair}
            for kind, (a, r) in stat.items():
                row[kind] = float(np.mean(accept(a, r)))
            confusion.append(row)
    distributions = [
        {"pair": pair, "case": kind, "n": len(a), "agreement": quantiles(a), "rank": quantiles(r)}
        for pair, stat in cases.items()
        for kind, (a, r) in stat.items()
    ]
    rows = [
        {
            "pair": d["pair"],
            "case": d["case"],
            "n": d["n"],
            **{f"cos {k}": v for k, v in d["agreement"].items() if k != "max"},
            "rank p95": float(np.percentile(cases[d["pair"]][d["case"]][1], 95)),
            "rank max": d["rank"]["max"],
        }
        for d in distributions
    ]
    cols = ["pair", "case", "n", "cos min", "cos p1", "cos p5", "cos median", "rank p95"]
    print(table(rows, [*cols, "rank max"]))
    kinds = [
        "honest same-backbone",
        "honest fitted",
        "hijack: target query's code",
        "hijack: target's neighbour's code",
        "hijack: random code",
        f"hijack: target query's code, text cos < {UNRELATED}",
        f"hijack: target's neighbour's code, text cos < {UNRELATED}",
        "own neighbour's code (not a hijack)",
    ]
    summary = []
    networks = [n for n in (("l6", "mpnet"), ("l6", "l3")) if set(n) <= set(args.backbones)]
    for net in networks:
        pairs = {f"{s} -> {r}" for s in net for r in net}
        for name, _ in settings:
            row = {"network": " + ".join(net), "setting": name}
            for kind in kinds:
                vals = [
                    c[kind]
                    for c in confusion
                    if c["setting"] == name and c["pair"] in pairs and kind in c
                ]
                row[kind] = min(vals) if kind.startswith("honest") else max(vals)
            summary.append(row)
    print(
        "\nAccepted share in a two-backbone network, worst case (min over receivers and "
        "senders for honest records, max for hijacks)"
    )
    print(table(summary, ["network", "setting", *kinds]))
    # Cost per record, 16-record batches as the background check runs them (median of 5
    # passes over the l6 held-out codes): decoding codes to vectors (both rules), then each
    # rule's statistic on the vectors.
    import time

    from zoonode.embedcheck import AbsoluteAgreement

    refs = np.concatenate([vec["l6"]["reference"], vec["l6"]["anchors"]])
    fitted = "mpnet" if "mpnet" in args.backbones else args.backbones[-1]
    steps = {
        "decode + project (both rules)": lambda i: code_vectors(
            codes["l6"][i : i + 16], head, v_ref
        ),
        "absolute statistic": lambda i: AbsoluteAgreement(0.9).scores(
            cvecs["l6"][i : i + 16], held["l6"][i : i + 16]
        ),
        "relative statistic, same-backbone codes (l6 -> l6)": lambda i: RelativeAgreement(
            refs
        ).scores(cvecs["l6"][i : i + 16], held["l6"][i : i + 16]),
        "relative statistic, fitted peer's codes (rank over 5,085)": lambda i: RelativeAgreement(
            refs
        ).scores(cvecs[fitted][i : i + 16], held["l6"][i : i + 16]),
    }
    cost = {}
    for name, step in steps.items():
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for i in range(0, n, 16):
                step(i)
            runs.append((time.perf_counter() - t0) / n * 1e6)
        cost[name] = round(float(np.median(runs)), 1)
    print(f"\ncheck cost per record (us): {cost}")
    path = write_json(
        "hetero_check",
        {
            "backbones": args.backbones,
            "held_out": n,
            "targets": nq,
            "references": int(
                len(vec[args.backbones[0]]["reference"]) + len(vec[args.backbones[0]]["anchors"])
            ),
            "distributions": distributions,
            "confusion": confusion,
            "summary_worst_case_per_network": summary,
            "cost_us_per_record": cost,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
