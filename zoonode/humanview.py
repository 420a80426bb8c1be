"""What the CLI prints for people (``--json`` prints the API's answer instead). Pure: dicts
as the HTTP API answers them in, text out; numbers rounded to what a person reads."""

from __future__ import annotations

import textwrap
import time
from typing import Any

WIDTH = 88

# down_weighted keys of a query answer (selection.select's reasons), in words for people;
# the codes stay the API's contract and what --json prints. A code not listed here (a newer
# node's) is shown with spaces for underscores rather than as a bare identifier.
REASONS = {
    "below_similarity_floor": "below the similarity floor (not about this query)",
    "low_reputation": "by authors not yet established here, their vote and score lowered",
    "newcomer_on_probation": "by authors new to this node, held back behind established ones",
    "vouched_alone": "by newer authors let answer alone, vouched for by this node's trust",
    "near_duplicate_merged": "grouped with a near-duplicate (one vote in the centre)",
    "author_capped": "authors with several lessons, their weight shared",
    "author_slot_limit": "whose authors had filled their answer slots",
    "near_duplicate_in_answer": "near-copies of a lesson already in the answer",
    "cluster_member_limit": "more near-duplicates of a lesson already among the candidates",
}
# The reasons that count candidates left out of the answer; the others (low_reputation,
# vouched_alone, near_duplicate_merged, author_capped) count candidates (or authors) that
# were weighed differently, selected or not: some may be selected, and a newer author's
# lesson counts under low_reputation and, if it was then held back, newcomer_on_probation.
LEFT_OUT = frozenset(
    {
        "below_similarity_floor",
        "cluster_member_limit",
        "newcomer_on_probation",
        "author_slot_limit",
        "near_duplicate_in_answer",
    }
)


def reason_text(code: str) -> str:
    return REASONS.get(code, code.replace("_", " "))


QUERY_LEGEND = (
    "relevance: cosine similarity of lesson and query (about 0.3 and up is on topic); "
    "agreement: cosine with the robust centre of the candidates (1 = the consensus); "
    "standing: how established the author is to this node (0 new .. 1), from how long it has "
    "known the author (selection.maturity_days) and the trust agents' verdicts give it "
    "(docs/trust.md); --json shows every field."
)

JOIN_HINT = (
    "no peers: this node is alone. To join a network, start it with "
    "--bootstrap /ip4/HOST/tcp/PORT/p2p/PEER_ID (a peer's address as its `zoonode status` "
    "prints it), or list peers in network.bootstrap in the config; on a LAN, "
    "network.mdns = true. Other nodes join this one with:"
)


def short(hex_id: str, n: int = 12) -> str:
    return hex_id[:n]


def floors_text(answer: dict[str, Any]) -> str:
    """The query's similarity floors (``floor``, ``established_floor``) in words."""
    text = f"similarity floor {answer['floor']:.2f}"
    established = answer.get("established_floor", answer["floor"])
    if f"{established:.2f}" != f"{answer['floor']:.2f}":
        text += f" (established authors' lessons: {established:.2f})"
    return text


def filters_text(domain: str | None = None, min_confidence: float | None = None) -> str:
    """A query's filters in words (``domain math, confidence at least 0.8``); "" for none."""
    words = []
    if domain is not None:
        words.append(f"domain {domain}")
    if min_confidence is not None:
        words.append(f"confidence at least {min_confidence:g}")
    return ", ".join(words)


def no_match_text(answer: dict[str, Any], filters: str) -> str | None:
    """What a query or context answer says when its filters matched no lesson (nothing was
    considered, with filters given), else None: ``no lesson matches the filter (...)``."""
    if filters and answer.get("considered") == 0:
        return f"no lesson matches the filter ({filters})"
    return None


def query_view(answer: dict[str, Any], legend: bool = True, filters: str = "") -> str:
    """``POST /v1/query``'s answer as a few lines per lesson, most useful first. ``filters``:
    the query's filters in words (``domain math``), empty when none was given."""
    lines = []
    selected = answer.get("selected", [])
    for i, s in enumerate(selected, 1):
        body = textwrap.wrap(s["text"], WIDTH - 4) or [""]
        lines.append(f"{i:>2}. {body[0]}")
        lines += [f"    {more}" for more in body[1:]]
        why = (
            f"relevance {s['relevance']:.2f}, agreement {s['agreement']:.2f}, "
            f"standing {s['standing']:.2f}"
        )
        if s.get("group_size", 1) > 1:
            why += f", stands for {s['group_size']} near-duplicates"
        lines.append(
            f"    {s['domain']} · confidence {s['confidence']:.2f} · author {short(s['author'], 8)}"
        )
        lines.append(f"    picked for: {why}")
        trust = s.get("trust") or {}
        if trust.get("helpful") or trust.get("harmful"):
            untrusted = [
                f"{trust[f'{kind}_untrusted']} {kind}"
                for kind in ("helpful", "harmful")
                if trust.get(f"{kind}_untrusted")
            ]
            lines.append(
                f"    verdicts weighted by the voters' trust: "
                f"{trust.get('helpful_trusted', 0):.2f} helpful, "
                f"{trust.get('harmful_trusted', 0):.2f} harmful"
                + (f" ({', '.join(untrusted)} from untrusted voters)" if untrusted else "")
                + f"; author's trust standing {trust.get('author_trust_standing', 0):.2f}"
            )
        lines.append(f"    id {s['id']}")  # whole: `zoonode revoke ID` takes no shorter one
    considered = answer.get("considered", 0)
    if not selected:
        lines.append(
            no_match_text(answer, filters) or f"no lesson selected ({considered} considered)"
        )
    else:
        lines.append("")
        lines.append(f"{len(selected)} selected of {considered} considered")
    if considered and "floor" in answer:
        lines.append("  " + floors_text(answer))
    counts = {key: n for key, n in answer.get("down_weighted", {}).items() if n}
    left_out = [f"{n} {reason_text(key)}" for key, n in counts.items() if key in LEFT_OUT]
    if left_out:
        lines.append("  left out: " + "; ".join(left_out))
    weighed = [
        f"{n} {reason_text(key)}"
        for key, n in counts.items()
        if key in REASONS and key not in LEFT_OUT
    ]
    if weighed:
        lines.append(
            "  weighed (some may be among the selected, some also on the line above): "
            + "; ".join(weighed)
        )
    other = [f"{n} {reason_text(key)}" for key, n in counts.items() if key not in REASONS]
    if other:
        lines.append("  also: " + "; ".join(other))
    if legend and selected:
        lines += textwrap.wrap(QUERY_LEGEND, WIDTH)
    return "\n".join(lines)


def status_view(status: dict[str, Any]) -> str:
    """``GET /v1/status`` as a few lines, with how to join a network when alone."""
    counts = status.get("counts", {})
    lines = [
        f"node     {status['peer_id']}  (zoonode {status.get('version', '?')})",
        f"author   {status.get('author', '?')}",
        f"data     {status.get('data_dir', '?')}",
        f"api      {status.get('api') or 'off'}",
        f"encoder  backbone {status.get('backbone', '?')}, "
        f"adapter {status.get('adapter') or 'none (the anchor)'}",
        f"lessons  {counts.get('active', 0)} active, {counts.get('revoked', 0)} revoked, "
        f"{counts.get('superseded', 0)} superseded (replica {status.get('replica', '?')})",
        f"peers    {status.get('peers', 0)} connected, {status.get('mesh', 0)} in the gossip mesh",
    ]
    backlog = status.get("backlog")
    if backlog:
        lines.append(
            f"checks   {backlog['pending']} waiting for the embedding check "
            f"({backlog['check_rate']:g}/s); since start {backlog['promoted']} passed, "
            f"{backlog['rejected']} failed, {backlog['on_demand']} checked on demand, "
            f"{backlog.get('deferred', 0)} left to the background"
        )
        lines.append(
            f"backlog  {backlog.get('pending_authors', 0)} authors waiting; bounds "
            f"{backlog.get('max_pending', '?')} in total for newcomers, "
            f"{backlog.get('max_pending_per_author', '?')} per author; since start "
            f"{backlog.get('purged', 0)} purged with a banned author, "
            f"{backlog.get('ignored', 0)} ignored over the bounds"
        )
    if status.get("banned"):
        lines.append(
            f"bans     {status['banned']} authors banned here for failed embedding checks "
            "(GET /v1/banned lists them)"
        )
    trust = status.get("trust")
    if trust:
        when = "not yet computed"
        if trust.get("recomputed_at") is not None:
            at = trust["recomputed_at"] / 1000
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
            ago = max(0.0, time.time() - at)
            when = f"recomputed {stamp} ({ago:.0f} s ago, took {trust.get('seconds') or 0:.2f} s)"
        lines.append(
            f"trust    {trust.get('votes', 0)} verdicts in the graph from "
            f"{trust.get('voters', 0)} voters on {trust.get('authors', 0)} authors; "
            f"{trust.get('root_endorsements', 0)} endorsed by this node "
            f"({'in use' if trust.get('ready') else 'time known still decides'}); {when}"
        )
        if "stored" in trust:
            lines.append(
                f"verdicts {trust['stored']} stored; {trust.get('untrusted_stored', 0)} from "
                f"voters without trust (bound {trust.get('max_untrusted', 0)})"
            )
    addrs = status.get("addrs", [])
    if status.get("peers", 0) == 0:
        lines += textwrap.wrap(JOIN_HINT, WIDTH)
    else:
        lines.append("address (for --bootstrap):")
    lines += [f"  {a}" for a in addrs]
    return "\n".join(lines)


def peers_view(peers: list[dict[str, Any]]) -> str:
    """``GET /v1/peers`` as one line per peer."""
    if not peers:
        return "no peers connected"
    lines = [f"{'peer id':<54} {'score':>8}  mesh"]
    for p in peers:
        lines.append(f"{p['peer_id']:<54} {p['score']:>8.2f}  {'yes' if p.get('mesh') else 'no'}")
    lines.append("score: the gossip score this node gives the peer (0 neutral, below 0 penalised)")
    return "\n".join(lines)


def write_view(answer: dict[str, Any]) -> str:
    """A write's answer (publish, revoke): ``OUTCOME ID``."""
    return f"{answer['outcome']} {answer['id']}"


def import_view(summary: dict[str, int], source: str) -> str:
    """``zoonode import``'s last line: ``FILE: 38 accepted, 2 duplicate, 2 failed`` (each
    failed line is on stderr above it, ``FILE:LINE: code: message``)."""
    first = ("accepted", "duplicate")
    outcomes = sorted(
        ((key, n) for key, n in summary.items() if key != "errors" and n),
        key=lambda item: (first.index(item[0]) if item[0] in first else len(first), item[0]),
    )
    parts = [f"{n} {outcome}" for outcome, n in outcomes]
    if summary.get("errors"):
        parts.append(f"{summary['errors']} failed")
    return f"{source}: {', '.join(parts) or 'no lessons in it'}"


def feedback_view(answer: dict[str, Any]) -> str:
    """``POST /v1/experiences/{id}/feedback``'s answer: ``OUTCOME VERDICT on TARGET`` (with
    the verdict it replaced), then the signed verdict's id."""
    line = f"{answer['outcome']} {answer['verdict']} on {answer['target']}"
    if answer.get("previous") and answer["outcome"] != "unchanged":
        line += f" (was {answer['previous']})"
    return f"{line}\nverdict {answer['id']}"
