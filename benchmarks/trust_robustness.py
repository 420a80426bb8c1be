"""Trust from outcomes against aged identities (issue #24), on robustness.py's real data.

    python benchmarks/trust_robustness.py [--targets 40] [--floor 0.6]

The world of ``robustness.py`` (1334 cheat tips over 100 honest authors, eg queries as
targets, real poison text through the real encoder, the node's store search and ``select``
with the node's defaults), plus the **endorsement graph** that agents' feedback builds:

- honest voters: this node (the only root: its own identity, no ``trusted_authors``) and the
  100 honest authors' nodes. Each runs ``--tasks`` tasks (seeded eg queries; the node itself
  ``--root-tasks``): plain top-5 over the honest corpus, and a *helpful* verdict on every
  returned tip that is relevant (same command), as an honest agent would report;
- sleepers: the colluding identities of collude-10/20/30/45 %, aged past the maturity (time
  standing 1), who vote *helpful* for each other (a full ring) and *harmful* on every honest
  author (a demotion attack at once), and publish query-worded poison;
- trust: ``zoonode.trust.compute_trust`` from the node's roots, standing
  ``author_standing_from(trust, time=1, ready=True, unendorsed_cap)`` as the node computes it.

Rows: attack success (adversarial share of top-5) with time-only standing (today: sleepers
are established) and with trust (per ``unendorsed_cap``), and honest recall@5 versus plain
top-k on clean data. Then: the honest newcomer (helpful verdicts from established voters until
its standing is 1 and until its lesson is served), a 1,000-voter Sybil flood (largest change
of an honest author's trust), attack edges (honest voters fooled into endorsing sleepers),
and the cost of one recomputation at 100k authors / 1M votes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from robustness import (
    CONFIG,
    HARMFUL,
    TEMPLATES,
    Clusters,
    author,
    build_world,
    evaluate,
    methods,
    node_pool,
    subset,
)

from zoonode.config import SelectionConfig, TrustConfig
from zoonode.native.encoder import Encoder
from zoonode.selection import similarity_floor, standing_factor
from zoonode.trust import TrustSettings, VoteTable, author_standing_from, compute_trust

from common import machine, table, write_json
from datasets import load

K = 5
OURS = "zoonode (groups + caps + GM + standing)"
ROOT = author("this-node")
SHARES = {10: 11, 20: 25, 30: 43, 45: 82}  # colluders for that share of all authors


def honest_votes(
    rng, query_vec, honest_vec, honest_authors, data, tasks: int, root_tasks: int, hidden=None
) -> list[tuple[bytes, bytes, int]]:
    """Helpful verdicts of honest agents on the relevant tips plain top-5 gave them
    (``hidden``: a bool mask of tips nobody has seen yet: a newcomer's)."""
    voters = [ROOT, *sorted(set(honest_authors))]
    rows = []
    for voter in voters:
        for t in rng.choice(len(query_vec), size=root_tasks if voter == ROOT else tasks):
            scores = honest_vec @ query_vec[t]
            if hidden is not None:
                scores = np.where(hidden, -np.inf, scores)
            top = np.argsort(-scores)[:K]
            relevant = data.relevant(int(t))
            rows += [(voter, honest_authors[i], 1) for i in top if int(i) in relevant]
    return rows


def sleeper_votes(colluders: list[bytes], honest: list[bytes]) -> list[tuple[bytes, bytes, int]]:
    ring = [(a, b, 1) for a in colluders for b in colluders if a != b]
    return ring + [(a, h, -1) for a in colluders for h in honest]


def standings(result, authors: list[bytes], cap: float) -> np.ndarray:
    return np.array(
        [
            author_standing_from(result.standing(a), 1.0, ready=True, unendorsed_cap=cap)
            for a in authors
        ]
    )


def vouched_of(
    result, authors: list[bytes], min_standing: float = TrustConfig.vouched_standing
) -> np.ndarray:
    """Whom the node's trust vouches for (``TrustResult.vouched``): selection lets them
    answer where no established author does (``vouched_alone``, the node's default)."""
    return np.array([result.vouched(a, min_standing) for a in authors], bool)


def trust_of(rows, settings) -> object:
    table_ = VoteTable()
    table_.add(rows)
    return compute_trust(table_, [ROOT], settings)


def cost(n_authors: int, n_votes: int, settings: TrustSettings, seed: int = 3) -> dict:
    """One recomputation on a random graph: Zipf-ish voters and authors, 90 % helpful."""
    rng = np.random.default_rng(seed)
    keys = [i.to_bytes(32, "big") for i in range(n_authors)]
    voters = np.minimum(rng.zipf(1.3, n_votes) - 1, n_authors - 1)
    authors = rng.integers(0, n_authors, n_votes)
    verdicts = np.where(rng.random(n_votes) < 0.9, 1, -1)
    table_ = VoteTable()
    started = time.perf_counter()
    table_.add(
        zip([keys[v] for v in voters], [keys[a] for a in authors], verdicts.tolist(), strict=True)
    )
    built = time.perf_counter() - started
    started = time.perf_counter()
    result = compute_trust(table_, [keys[0], keys[1]], settings)
    return {
        "authors": n_authors,
        "votes": n_votes,
        "table_s": built,
        "compute_s": time.perf_counter() - started,
        "iterations": result.iterations,
    }


class Newcomers:
    """Honest newcomers, each with one lesson (an honest tip, moved to a new identity that
    nobody has seen: no verdict names it, its tip is hidden from every honest agent's
    tasks), served or not after ``n`` helpful verdicts from ``n`` distinct established voters
    (honest authors whose trust *mass* makes them established; the same voters, in the same
    order, for every rule of one ``established_mass``). A newcomer's **targets** are the eg
    queries its tip is relevant to and in plain top-5 for. "Served", per rule, counted in
    verdicts until it holds at every target (``None``: not within ``max_verdicts``):

    - ``alone`` (a): where no established author answers (the pool holds its lesson only;
      ``newcomers_alone`` off, as in an established network) its lesson answers: it is
      vouched for (``vouched_alone``);
    - ``probation`` (b): where established authors answer (the node's pool for the target)
      its lesson is off probation: relevance x standing factor clears the query's floor;
    - ``top5`` (c): its lesson is in the node's answer (top-5) wherever it is when the
      newcomer is established (standing 1);
    - ``established``: standing 1.

    The newcomer's time known is 0 (it has just joined), the others' 1; trust is ready."""

    def __init__(self, rng, ctx: dict, count: int, tasks: int, root_tasks: int) -> None:
        self.ctx = ctx
        query_vec, honest_vec, data = ctx["query_vec"], ctx["honest_vec"], ctx["data"]
        honest_authors = ctx["honest_authors"]
        targets: dict[int, list[int]] = {}
        for q in range(len(query_vec)):
            relevant = data.relevant(q)
            for i in np.argsort(-(honest_vec @ query_vec[q]))[:K]:
                if int(i) in relevant:
                    targets.setdefault(int(i), []).append(q)
        order = rng.permutation(sorted(targets))
        tips, seen = [], set()
        for i in order:  # one tip per original author
            if honest_authors[i] not in seen:
                seen.add(honest_authors[i])
                tips.append(int(i))
            if len(tips) == count:
                break
        self.tips = tips
        self.targets = {i: targets[i] for i in tips}
        self.keys = [author(f"newcomer-{j}") for j in range(len(tips))]
        self.authors = list(honest_authors)
        for i, key in zip(tips, self.keys, strict=True):
            self.authors[i] = key
        hidden = np.zeros(len(honest_authors), bool)
        hidden[tips] = True
        self.votes = honest_votes(
            np.random.default_rng(ctx["seed"] + 1),
            query_vec,
            honest_vec,
            honest_authors,
            data,
            tasks,
            root_tasks,
            hidden,
        )
        self.honest_keys = sorted(set(honest_authors))
        self.voter_order = [self.honest_keys[i] for i in rng.permutation(len(self.honest_keys))]

    def measure(
        self, settings: TrustSettings, cap: float, vouched_standing: float, max_verdicts: int
    ) -> dict:
        base = trust_of(self.votes, settings)
        established = [h for h in self.voter_order if base.mass_standing(h) >= 1.0]
        per = []
        for j, (tip, key) in enumerate(zip(self.tips, self.keys, strict=True)):
            shift = j * 7 % len(established)  # other voters first for each newcomer
            voters = established[shift:] + established[:shift]
            full = self._served(tip, key, base, cap, vouched_standing, force=1.0)
            want = full["top5"]
            firsts: dict = {"alone": None, "probation": None, "top5": None, "established": None}
            curve = []
            for n in range(0, max_verdicts + 1):
                rows = self.votes + [(v, key, 1) for v in voters[:n]]
                result = trust_of(rows, settings)
                got = self._served(tip, key, result, cap, vouched_standing)
                curve.append(round(got["standing"], 3))
                checks = {
                    "alone": all(got["alone"]),
                    "probation": all(got["probation"]),
                    "top5": all(g or not w for g, w in zip(got["top5"], want, strict=True)),
                    "established": got["standing"] >= 1.0,
                }
                for name, ok in checks.items():
                    if ok and firsts[name] is None:
                        firsts[name] = n
                if all(v is not None for v in firsts.values()):
                    break
            per.append(
                {
                    "tip": tip,
                    "targets": len(self.targets[tip]),
                    "top5_targets_when_established": int(sum(want)),
                    **firsts,
                    "standing_by_verdicts": curve,
                }
            )
        summary = {}
        for name in ("alone", "probation", "top5", "established"):
            values = [p[name] for p in per]
            reached = sorted(v for v in values if v is not None)
            summary[name] = {
                "median": float(np.median(reached)) if len(reached) == len(values) else None,
                "max": max(reached) if len(reached) == len(values) else None,
                "reached": f"{len(reached)}/{len(values)}",
            }
        return {
            "established_voters_available": len(established),
            "summary": summary,
            "newcomers": per,
        }

    def _served(self, tip, key, result, cap, vouched_standing, force=None) -> dict:
        ctx = self.ctx
        keys = sorted(set(self.authors))
        newcomer_standing = (
            force
            if force is not None
            else author_standing_from(result.standing(key), 0.0, ready=True, unendorsed_cap=cap)
        )
        standing = {
            a: author_standing_from(result.standing(a), 1.0, ready=True, unendorsed_cap=cap)
            for a in keys
        }
        standing[key] = newcomer_standing
        vouched = {a: result.vouched(a, vouched_standing) for a in keys}
        if force is not None:
            vouched[key] = True
        alone, probation, top5 = [], [], []
        w = ctx["newcomer_weight"]
        for q in self.targets[tip]:
            world = build_world(
                ctx["query_vec"][q],
                ctx["honest_vec"],
                self.authors,
                ctx["honest_vec"][:0],
                [],
                ctx["clusters"],
            )
            world["standing"] = np.array([standing[a] for a in world["author"]])
            world["vouched"] = np.array([vouched[a] for a in world["author"]], bool)
            only = subset(world, np.array([tip]))
            alone.append(tip in set(only["index"][np.asarray(ctx["select"](only), int)]))
            pool = node_pool(world, ctx["floor"], w)
            chosen = set(pool["index"][np.asarray(ctx["select"](pool), int)])
            top5.append(tip in chosen)
            where = np.flatnonzero(pool["index"] == tip)
            if len(where) == 0:
                probation.append(False)
                continue
            best = float(pool["rel"].max())
            floor = similarity_floor(
                best, ctx["floor"], min(ctx["floor"], CONFIG.floor_min), CONFIG.floor_margin
            )
            rel = float(pool["rel"][where[0]])
            probation.append(rel * standing_factor(w, newcomer_standing) >= floor)
        return {"standing": newcomer_standing, "alone": alone, "probation": probation, "top5": top5}


def cached(enc, texts: list[str]) -> np.ndarray:
    """The encoder's compact vectors of ``texts``, cached on disk by the texts' digest."""
    import hashlib

    from datasets import CACHE

    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:20]
    path = CACHE / f"trust-vectors-{digest}.npy"
    if path.exists():
        return np.load(path)
    vectors = enc.encode_compact(texts, batch_size=64)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def over_time(
    rng,
    query_vec,
    honest_vec,
    honest_authors,
    data,
    settings,
    cap,
    *,
    rounds=14,
    tasks=1,
    root_tasks=5,
    join=4,
    colluders=(),
) -> list[dict]:
    """Trust day by day: every day each honest voter runs ``tasks`` tasks (the node
    ``root_tasks``) and reports helpful verdicts as in ``honest_votes``; sleepers (aged, time
    standing 1) keep their ring and demotion votes; honest author 0 is a newcomer that joins
    on day ``join`` (its lessons are not served, it does not vote, before; its time standing
    grows over the 7-day maturity after). Mean standing per group after each day."""
    keys = sorted(set(honest_authors))
    newcomer = keys[0]
    hidden = np.array([a == newcomer for a in honest_authors])
    votes: list = []
    series = []
    for day in range(1, rounds + 1):
        for voter in [ROOT, *keys]:
            if voter == newcomer and day < join:
                continue
            for t in rng.choice(len(query_vec), size=root_tasks if voter == ROOT else tasks):
                scores = honest_vec @ query_vec[t]
                if day < join:
                    scores = np.where(hidden, -np.inf, scores)
                relevant = data.relevant(int(t))
                top = np.argsort(-scores)[:K]
                votes += [(voter, honest_authors[i], 1) for i in top if int(i) in relevant]
        result = trust_of(votes + sleeper_votes(list(colluders), keys), settings)
        ready = result.root_endorsements >= TrustConfig.min_endorsements

        def standing(key, time_standing, result=result, ready=ready):
            return author_standing_from(
                result.standing(key), time_standing, ready=ready, unendorsed_cap=cap
            )

        series.append(
            {
                "day": day,
                "verdicts": len(votes),
                "ready": ready,
                "honest": float(np.mean([standing(h, 1.0) for h in keys[1:]])),
                "sleepers": float(np.mean([standing(c, 1.0) for c in colluders])),
                "newcomer": standing(newcomer, min(1.0, max(0, day - join) / 7))
                if day >= join
                else None,
            }
        )
    return series


def plot(series: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    days = [r["day"] for r in series]
    for group, style in (("honest", "-o"), ("sleepers", "-s"), ("newcomer", "-^")):
        ax.plot(days, [r[group] for r in series], style, label=group, markersize=4)
    ax.set_xlabel("day (1 task per honest voter, 5 for this node's agents)")
    ax.set_ylabel("mean standing")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Standing from trust and time, 45 % sleepers in a ring")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=40)
    parser.add_argument("--floor", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--tasks", type=int, default=10, help="tasks per honest voter")
    parser.add_argument("--root-tasks", type=int, default=50, help="tasks of this node's agents")
    parser.add_argument("--caps", default="0,0.1,0.2", help="unendorsed_cap values to compare")
    parser.add_argument("--masses", default="0.8,0.95", help="established_mass values")
    parser.add_argument("--cost-votes", type=int, default=1_000_000)
    parser.add_argument(
        "--vouched",
        default="0,0.05,0.1",
        help="trust.vouched_standing values the attack-edge table compares",
    )
    parser.add_argument(
        "--voters",
        default=str(TrustConfig.established_voters),
        help="trust.established_voters values to compare (the first is the default; 0: off)",
    )
    parser.add_argument(
        "--extra-rules",
        default="",
        help="more rules to compare, mass:voters,... (e.g. 0.99:0: a lower reference)",
    )
    parser.add_argument("--voters-min", type=float, default=TrustConfig.voters_min_standing)
    parser.add_argument("--newcomers", type=int, default=10, help="honest newcomers measured")
    parser.add_argument("--max-verdicts", type=int, default=20)
    parser.add_argument(
        "--quick", action="store_true", help="no over-time series, plot, cost or JSON"
    )
    args = parser.parse_args()
    t_start = time.time()
    cfg = TrustConfig()
    voter_counts = [int(v) for v in args.voters.split(",")]
    caps = [float(c) for c in args.caps.split(",")]
    masses = [float(m) for m in args.masses.split(",")]
    vouched_levels = [float(v) for v in args.vouched.split(",")]
    newcomer_weight = SelectionConfig.newcomer_weight

    enc = Encoder.default()
    data = load()
    rng = np.random.default_rng(args.seed)
    honest_vec = cached(enc, data.corpus)
    honest_authors = [author(f"honest-{i % 100}") for i in range(len(data.corpus))]
    honest_keys = sorted(set(honest_authors))
    query_vec = cached(enc, data.queries)
    eligible = [i for i in range(len(data.queries)) if data.relevant(i)]
    targets = sorted(rng.choice(eligible, size=min(args.targets, len(eligible)), replace=False))
    votes = honest_votes(
        np.random.default_rng(args.seed + 1),
        query_vec,
        honest_vec,
        honest_authors,
        data,
        args.tasks,
        args.root_tasks,
    )
    combos = [(a, b) for b in range(len(TEMPLATES)) for a in range(len(HARMFUL))]
    texts = {
        t: [
            TEMPLATES[b].format(q=data.queries[t].rstrip("."), h=HARMFUL[a])
            for a, b in combos[: max(SHARES.values())]
        ]
        for t in targets
    }
    distinct = sorted({x for v in texts.values() for x in v})
    print(f"{len(votes)} honest verdicts; embedding {len(distinct)} poison texts ...", flush=True)
    lookup = dict(zip(distinct, cached(enc, distinct), strict=True))
    select = methods(args.floor, newcomer_weight)
    clusters = Clusters(honest_vec)

    def run(share: int | None, standing_of, vouched_of=None) -> tuple[float, float]:
        """Mean attack success and honest recall@5 of zoonode's selection over the targets.
        ``vouched_of`` (authors -> bool array): whom the node's trust vouches for
        (``TrustResult.vouched``; selection's ``vouched_alone``); None: nobody."""
        n = SHARES[share] if share else 0
        colluders = [author(f"coll-{j}") for j in range(n)]
        adv, rec = [], []
        for t in targets:
            poison = np.stack([lookup[x] for x in texts[t][:n]]) if n else honest_vec[:0]
            world = build_world(
                query_vec[t], honest_vec, honest_authors, poison, colluders, clusters
            )
            world["standing"] = standing_of(world["author"])
            world["vouched"] = (
                vouched_of(world["author"]) if vouched_of else np.zeros(len(world["author"]), bool)
            )
            pool = node_pool(world, args.floor, newcomer_weight)
            if len(pool["rel"]) == 0:
                adv.append(0.0)
                rec.append(0.0)
                continue
            a, r = evaluate(pool, np.asarray(select[OURS](pool), int), data.relevant(t))
            adv.append(a)
            rec.append(r)
        return float(np.mean(adv)), float(np.mean(rec))

    def plain_recall() -> float:
        rec = []
        for t in targets:
            top = np.argsort(-(honest_vec @ query_vec[t]))[:K]
            relevant = data.relevant(t)
            rec.append(len(set(map(int, top)) & relevant) / min(K, len(relevant)))
        return float(np.mean(rec))

    plain = plain_recall()
    rows, results = [], {}
    time_only = lambda authors: np.ones(len(authors))  # noqa: E731 - everyone aged: sleepers
    # Rules compared side by side: (established_mass, established_voters); the first is the
    # default (the node's), the others vary one of them.
    rules = [(masses[0], k) for k in voter_counts] + [(m, voter_counts[0]) for m in masses[1:]]
    rules += [
        (float(m), int(k))
        for m, k in (r.split(":") for r in args.extra_rules.split(",") if r)
        if (float(m), int(k)) not in rules
    ]
    rule_settings = {
        rule: TrustSettings(
            damping=cfg.damping,
            established_mass=rule[0],
            established_voters=rule[1],
            voters_min_standing=args.voters_min,
        )
        for rule in rules
    }
    settings = rule_settings[rules[0]]

    def rule_name(rule) -> str:
        return f"mass {rule[0]:g}, voters {rule[1]}" if rule[1] else f"mass {rule[0]:g}, mass only"

    trust_results: dict = {}
    for rule in rules:
        for share in [None, *SHARES]:
            n = SHARES[share] if share else 0
            colluders = [author(f"coll-{j}") for j in range(n)]
            rows_ = votes + sleeper_votes(colluders, honest_keys)
            trust_results[rule, share] = trust_of(rows_, rule_settings[rule])

    def vouched(rule):
        return lambda s: lambda authors: vouched_of(trust_results[rule, s], authors)

    variants = [("time known only (sleepers aged)", lambda s: time_only, None)] + [
        (
            f"trust, {rule_name(rule)}, unendorsed_cap {cap:g}"
            + ("" if alone else ", vouched_alone off"),
            lambda s, cap=cap, rule=rule: (
                lambda authors: standings(trust_results[rule, s], authors, cap)
            ),
            vouched(rule) if alone else None,
        )
        for rule in rules
        for cap in (caps if rule == rules[0] else caps[:1])
        for alone in ((True, False) if (rule, cap) == (rules[0], caps[0]) else (True,))
    ]
    for label, fn, vouched_fn in variants:
        row: dict = {"standing": label}
        entry = {}
        for share in [None, *SHARES]:
            adv, rec = run(share, fn(share), vouched_fn(share) if vouched_fn else None)
            name = "clean" if share is None else f"sleepers-{share}%"
            entry[name] = {"attack_success": adv, "recall@5": rec}
            if share is None:
                row["recall@5 clean"] = f"{rec:.3f}"
                row["vs plain"] = f"{rec / plain * 100:.0f}%"
            else:
                row[name] = f"{adv * 100:.1f}%"
                row[f"recall {share}%"] = f"{rec / plain * 100:.0f}%"
        results[label] = entry
        rows.append(row)
        print(row, flush=True)
    trust_results.update({s: trust_results[rules[0], s] for s in [None, *SHARES]})
    print(
        f"\nSleepers voting for each other (ring) and harmful on all honest authors, "
        f"{len(targets)} targets, floor {args.floor}; plain top-k recall@5 {plain:.3f}"
    )
    print(table(rows, list(rows[0])))

    # The honest newcomer: established voters (honest authors) rate its lesson helpful.
    newcomer = author("newcomer")
    base = trust_results[None]
    established = [h for h in honest_keys if base.mass_standing(h) >= 1.0]
    newcomer_rows = []
    for n in range(0, 21):
        result = trust_of(votes + [(v, newcomer, 1) for v in established[:n]], settings)
        with_root = trust_of(
            [*votes, (ROOT, newcomer, 1)] + [(v, newcomer, 1) for v in established[:n]], settings
        )
        newcomer_rows.append(
            {
                "helpful verdicts": n,
                "standing": round(result.standing(newcomer), 3),
                "trust mass standing": round(result.mass_standing(newcomer), 3),
                "with the node's own verdict": round(with_root.standing(newcomer), 3),
            }
        )
    first_one = next((r["helpful verdicts"] for r in newcomer_rows if r["standing"] >= 1), None)
    first_root = next(
        (r["helpful verdicts"] for r in newcomer_rows if r["with the node's own verdict"] >= 1),
        None,
    )
    print(f"\nHonest newcomer ({len(established)} of 100 honest authors established):")
    print(table(newcomer_rows[::2], list(newcomer_rows[0])))

    # Served: newcomers with a lesson, per rule (class Newcomers).
    ctx = {
        "query_vec": query_vec,
        "honest_vec": honest_vec,
        "honest_authors": honest_authors,
        "data": data,
        "clusters": clusters,
        "floor": args.floor,
        "newcomer_weight": newcomer_weight,
        "select": select[OURS],
        "seed": args.seed,
    }
    newcomers = Newcomers(
        np.random.default_rng(args.seed + 5), ctx, args.newcomers, args.tasks, args.root_tasks
    )
    served: dict = {}
    served_rows = []
    for rule in rules:
        got = newcomers.measure(
            rule_settings[rule], caps[0], cfg.vouched_standing, args.max_verdicts
        )
        served[rule_name(rule)] = got
        row = {"rule": rule_name(rule), "voters": got["established_voters_available"]}
        for name in ("alone", "probation", "top5", "established"):
            summ = got["summary"][name]
            row[name] = (
                f"{summ['median']:g} (max {summ['max']})"
                if summ["median"] is not None
                else f"> {args.max_verdicts} ({summ['reached']})"
            )
        served_rows.append(row)
        print(row, flush=True)
    print(
        f"\nHonest newcomers served ({len(newcomers.tips)} newcomers, one lesson each; helpful "
        f"verdicts from distinct established voters until: answers alone (vouched), off "
        f"probation, in the top-5 at its targets, established; median (max)):"
    )
    print(table(served_rows, list(served_rows[0])))

    # Vote flood: 1000 Sybil voters, each harmful on every honest author and helpful on each other.
    sybils = [author(f"flood-{j}") for j in range(1000)]
    flood = [(s, h, -1) for s in sybils for h in honest_keys[:20]]
    flood += [(s, sybils[(j + 1) % 1000], 1) for j, s in enumerate(sybils)]
    flood_by_rule = {}
    for rule in rules:
        before = trust_results[rule, None]
        flooded = trust_of(votes + flood, rule_settings[rule])
        flood_by_rule[rule_name(rule)] = {
            "trust": max(
                abs(flooded.trust_of(h) - before.trust_of(h)) / max(before.trust_of(h), 1e-300)
                for h in honest_keys
                if before.trust_of(h) > 0
            ),
            "standing": max(abs(flooded.standing(h) - before.standing(h)) for h in honest_keys),
            "sybils_established": sum(flooded.standing(x) >= 1 for x in sybils),
        }
    change = flood_by_rule[rule_name(rules[0])]["trust"]
    print(
        f"\nVote flood, 1000 Sybil voters ({len(flood)} votes): largest relative change of an "
        f"honest author's trust {change:.2e}; per rule {flood_by_rule}"
    )

    # Attack edges: honest voters fooled into endorsing the 45 % sleepers' ring: spread (each
    # fooled voter on another sleeper) or concentrated (all on one sleeper).
    edges_rows = []
    colluders = [author(f"coll-{j}") for j in range(SHARES[45])]
    for rule in rules:
        levels = vouched_levels if rule == rules[0] else [cfg.vouched_standing]
        attacks = [("spread", 1), ("spread", 5), ("spread", 20), ("on one", 3), ("on one", 5)]
        for how, fooled in attacks:
            # Spread: the first honest voters, each on another sleeper (as before). On one:
            # the worst case, voters the rule's trust mass establishes, all on sleeper 0.
            fools = (
                honest_keys[:fooled]
                if how == "spread"
                else [h for h in honest_keys if trust_results[rule, None].mass_standing(h) >= 1]
            )[:fooled]
            fooled_rows = [
                (h, colluders[j % len(colluders) if how == "spread" else 0], 1)
                for j, h in enumerate(fools)
            ]
            result = trust_of(
                votes + sleeper_votes(colluders, honest_keys) + fooled_rows, rule_settings[rule]
            )
            mass = float(sum(result.trust_of(c) for c in colluders))
            row = {
                "rule": rule_name(rule),
                "honest voters fooled": f"{fooled} {how}",
                "sleeper trust mass": f"{mass:.4f}",
                "established sleepers": sum(result.standing(c) >= 1 for c in colluders),
                "top sleeper standing": f"{max(result.standing(c) for c in colluders):.4f}",
            }
            for theta in (None, *levels):
                if theta is None and rule != rules[0]:
                    continue
                adv, rec = run(
                    45,
                    lambda authors, r=result: standings(r, authors, caps[0]),
                    None if theta is None else (lambda a, r=result, th=theta: vouched_of(r, a, th)),
                )
                name = "vouched_alone off" if theta is None else f"vouched >= {theta:g}"
                row[name] = f"{adv * 100:.1f}%"
            if how == "on one":  # an honest agent served its poison reports it harmful
                judge = next(h for h in established if h not in fools)
                rated = trust_of(
                    votes
                    + sleeper_votes(colluders, honest_keys)
                    + [*fooled_rows, (judge, colluders[0], -1)],
                    rule_settings[rule],
                )
                adv, _ = run(
                    45,
                    lambda authors, r=rated: standings(r, authors, caps[0]),
                    lambda a, r=rated: vouched_of(r, a, cfg.vouched_standing),
                )
                row["then 1 trusted harmful verdict"] = f"{adv * 100:.1f}%"
            edges_rows.append(row)
            print(row, flush=True)
    print(f"\nAttack edges (45 % sleepers, cap {caps[0]:g}):")
    columns = list(dict.fromkeys(k for r in edges_rows for k in r))
    print(table([{c: r.get(c, "") for c in columns} for r in edges_rows], columns))

    series: list = []
    if not args.quick:
        colluders = [author(f"coll-{j}") for j in range(SHARES[45])]
        series = over_time(
            np.random.default_rng(args.seed + 2),
            query_vec,
            honest_vec,
            honest_authors,
            data,
            settings,
            caps[0],
            colluders=colluders,
        )
        print("\nOver time (45 % sleepers; newcomer joins on day 4):")
        print(
            table(
                [
                    {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()}
                    for r in series
                ],
                list(series[0]),
            )
        )
        from pathlib import Path

        figure = Path(__file__).resolve().parent.parent / "docs" / "trust-over-time.png"
        plot(series, figure)
        print(f"plot: {figure}")

    costs: list = []
    if not args.quick:
        costs = [cost(10_000, 100_000, settings), cost(100_000, args.cost_votes, settings)]
        print("\nRecomputation cost:")
        print(
            table(
                [
                    {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in c.items()}
                    for c in costs
                ],
                list(costs[0]),
            )
        )
    if args.quick:
        print(f"\n{time.time() - t_start:.0f} s (--quick: no JSON)")
        return
    path = write_json(
        f"trust-robustness-floor{args.floor}",
        {
            "machine": machine(),
            "settings": {
                **vars(args),
                "damping": settings.damping,
                "established_mass": settings.established_mass,
                "established_voters": settings.established_voters,
                "voters_min_standing": settings.voters_min_standing,
                "vouched_standing": cfg.vouched_standing,
                "newcomer_weight": newcomer_weight,
                "rules": [rule_name(r) for r in rules],
            },
            "targets": [int(t) for t in targets],
            "honest_verdicts": len(votes),
            "plain_recall@5": plain,
            "results": results,
            "table": rows,
            "newcomer": newcomer_rows,
            "newcomer_established_after": first_one,
            "newcomer_established_after_with_node_verdict": first_root,
            "newcomer_served": served,
            "newcomer_served_table": served_rows,
            "flood_max_relative_change": change,
            "flood_by_rule": flood_by_rule,
            "attack_edges": edges_rows,
            "over_time": series,
            "cost": costs,
            "seconds": time.time() - t_start,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
