"""Simulations: the scenario format, a scale-mode run of 1,000+ nodes, a tiny real-mode run
of real processes, and the CLI's results folder."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from zoonode.config import ConfigError
from zoonode.experiences import now_ms
from zoonode.sim.metrics import summarise
from zoonode.sim.real import history_overrides
from zoonode.sim.scale import run_scale
from zoonode.sim.scenario import parse_scenario
from zoonode.sim.workload import build_workload

from conftest import ZOONODE

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


def test_scenario_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key"):
        parse_scenario("[nodes]\nhonst = 3\n")
    with pytest.raises(ConfigError, match="unknown roles"):
        parse_scenario('[nodes]\nadversarial = 1\nroles = ["wizard"]\n')
    with pytest.raises(ConfigError, match="mode"):
        parse_scenario('mode = "quantum"\n')
    assert parse_scenario("seed = 3\n").seed == 3


def test_history_ages_are_checked_and_real_mode_refuses_what_it_cannot_model():
    assert parse_scenario("").history.honest_age_days == 7.0  # an established network
    with pytest.raises(ConfigError, match="negative"):
        parse_scenario("[history]\nattacker_age_days = -1\n")
    with pytest.raises(ConfigError, match=r"history\.attacker_age_days"):
        parse_scenario('mode = "real"\n[history]\nattacker_age_days = 3.5\n')
    assert parse_scenario('mode = "real"\n[history]\nattacker_age_days = 7\n')


def test_real_mode_gives_aged_authors_as_trust_and_fresh_ones_nothing(encoder):
    fresh = parse_scenario('[nodes]\nhonest = 3\nadversarial = 1\nroles = ["poison"]\n')
    workload = build_workload(fresh, encoder, now_ms())
    honest = {r.experience.author.hex() for rs in workload.honest.values() for r in rs}
    bad = {a.hex() for a in workload.adversarial_authors}
    overrides = history_overrides(fresh, workload)
    assert set(overrides["trusted_authors"]) == honest and overrides["newcomers_alone"] == "never"
    sleepers = parse_scenario(
        '[nodes]\nhonest = 3\nadversarial = 1\nroles = ["poison"]\n'
        "[history]\nhonest_age_days = 0\nattacker_age_days = 7\n"
    )
    assert set(history_overrides(sleepers, workload)["trusted_authors"]) == bad
    young = parse_scenario("[history]\nhonest_age_days = 0\n")
    assert history_overrides(young, workload) == {}


def test_scale_mode_standing_stops_fresh_colluders_but_not_sleepers(encoder):
    text = """
        seed = 4
        duration_s = 6
        [nodes]
        honest = 60
        adversarial = 18
        roles = ["poison"]
        [workload]
        lessons_per_node = 2
        publish_window_s = 2
        targets = 5
        query_nodes = 3
        [history]
        attacker_age_days = {age}
        """
    fresh = summarise(run_scale(parse_scenario(text.format(age=0)), encoder))
    sleepers = summarise(run_scale(parse_scenario(text.format(age=7)), encoder))
    assert fresh["attack_success"] == 0.0, fresh
    assert sleepers["attack_success"] > 0.1, sleepers
    assert sleepers["attack_success_undefended"] > 0.5
    assert fresh["relevant_hit_rate"] >= sleepers["relevant_hit_rate"]


def test_scale_mode_thousand_nodes_defences_beat_the_undefended_baseline(encoder):
    scenario = parse_scenario(
        """
        name = "ci-scale"
        seed = 11
        duration_s = 11
        [nodes]
        honest = 850
        adversarial = 150
        roles = ["sybil", "forger", "hijack", "malformed"]
        [workload]
        lessons_per_node = 1
        publish_window_s = 3
        targets = 6
        query_nodes = 4
        [attack]
        records_per_attacker = 10
        """
    )
    raw = run_scale(scenario, encoder)
    m = summarise(raw)
    assert m["nodes"] == 1000
    assert m["delivery_rate"] > 0.95, m
    assert m["forged_delivered"] == 0
    assert m["rejected"]["bad_signature"] > 0
    assert m["rejected"]["embedding_mismatch"] > 0
    assert m["attack_success"] < m["attack_success_undefended"]
    assert m["relevant_hit_rate"] > m["relevant_hit_rate_undefended"]
    assert m["attackers_excluded"] > 0  # forgers' messages end up dropped unread


def test_tiny_real_and_scale_agree_and_write_a_report(tmp_path):
    scenario = SCENARIOS / "tiny-both.toml"  # the shipped agreement scenario
    out = tmp_path / "results"
    done = subprocess.run(  # a relative --out, as a user types it: node processes must cope
        [ZOONODE, "simulate", str(scenario), "--out", "results"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    scale, real = (run["metrics"] for run in metrics["runs"])
    assert real["mode"] == "real" and real["nodes"] == 6
    for m in (scale, real):
        assert m["forged_delivered"] == 0
        assert m["attack_success"] < m["attack_success_undefended"]
    # The agreement that makes the scale mode believable (tolerances in simulations/README).
    assert abs(scale["delivery_rate"] - real["delivery_rate"]) <= 0.05
    assert abs(scale["attack_success"] - real["attack_success"]) <= 0.1
    # With standing both defended shares are 0; the undefended ones still compare what the
    # attackers' records do to plain top-k in each engine.
    assert abs(scale["attack_success_undefended"] - real["attack_success_undefended"]) <= 0.1
    assert abs(scale["relevant_hit_rate"] - real["relevant_hit_rate"]) <= 0.2
    report = (out / "report.md").read_text()
    assert "| attack_success |" in report
    for plot in ("latency_cdf.png", "attack_success.png"):
        assert (out / plot).stat().st_size > 1000


def test_bad_scenario_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[nodes]\nhonest = 'many'\n")
    done = subprocess.run(
        [ZOONODE, "simulate", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "nodes.honest" in done.stderr and "Traceback" not in done.stderr


def test_scale_mode_trust_from_verdicts_beats_sleepers_that_time_alone_lets_in(encoder):
    """The feedback loop (issue 24): agents' verdicts -> each node's personalised trust ->
    standing. Sleepers (aged, a helpful ring, harmful on honest authors) take a share of the
    top-5 with time-only standing and less with trust."""
    text = """
        seed = 4
        duration_s = 11
        [nodes]
        honest = 30
        adversarial = 8
        roles = ["poison"]
        [workload]
        lessons_per_node = 1
        publish_window_s = 2
        targets = 10
        query_nodes = 5
        [attack]
        poison_per_target = 2
        [history]
        attacker_age_days = 7
        [feedback]
        enabled = true
        standing = "{standing}"
        start_s = 2
        round_s = 2
        tasks_per_round = 4
        """
    trust = summarise(run_scale(parse_scenario(text.format(standing="trust")), encoder))
    time_only = summarise(run_scale(parse_scenario(text.format(standing="time")), encoder))
    assert time_only["attack_success"] > 0.2, time_only
    assert trust["attack_success"] < time_only["attack_success"] / 2, trust
    assert trust["trust_ready_share_final"] == 1.0
    assert trust["standing_adversarial_final"] <= 0.2 + 1e-9  # age alone, capped
    assert time_only["standing_adversarial_final"] == 1.0
    with pytest.raises(ConfigError, match=r"feedback\.standing"):
        parse_scenario('[feedback]\nstanding = "vibes"\n')
    with pytest.raises(ConfigError, match="not both"):
        parse_scenario('mode = "both"\n[feedback]\nenabled = true\n')
    with pytest.raises(ConfigError, match="scale mode only"):
        parse_scenario('mode = "real"\n[feedback]\nenabled = true\nnewcomers = 1\n')
    with pytest.raises(ConfigError, match="newcomers"):
        parse_scenario("[feedback]\nnewcomers = 3\n")
    with pytest.raises(ConfigError, match="agents_share"):
        parse_scenario("[feedback]\nagents_share = 0\n")
    with pytest.raises(ConfigError, match="records_per_message"):
        parse_scenario("[attack]\nrecords_per_message = 0\n")


def test_scale_mode_newcomer_introduced_by_a_few_operators_is_served_one_nobody_knows_is_not(
    encoder,
):
    """Two honest newcomers join mid-run with a lesson on a topic nobody covers; the first is
    a trusted author at 5 honest nodes. Their agents serve it and rate it helpful, so trust
    reaches it at the watched nodes; the second is served nowhere (standing 0: time known 0,
    no verdict)."""
    raw = run_scale(
        parse_scenario(
            """
            seed = 6
            duration_s = 16
            [nodes]
            honest = 30
            adversarial = 6
            roles = ["poison"]
            [workload]
            lessons_per_node = 1
            publish_window_s = 2
            query_nodes = 5
            [attack]
            poison_per_target = 1
            records_per_message = 10
            [history]
            attacker_age_days = 7
            [feedback]
            enabled = true
            start_s = 2
            round_s = 2
            tasks_per_round = 4
            newcomers = 2
            newcomer_join_s = 4
            introducers = 5
            """
        ),
        encoder,
    )
    rounds = raw["feedback"]["rounds"]
    assert rounds[0]["standing_newcomer_0"] is None  # not joined yet
    assert max(r["newcomer_topic_hit_rate"] or 0 for r in rounds) > 0  # introducers serve it
    assert rounds[-1]["trust_newcomer_0"] > 0
    assert all(r["trust_newcomer_1"] in (None, 0.0) for r in rounds)
    assert rounds[-1]["attack_success"] == 0.0 and rounds[0]["attack_success"] > 0
    assert summarise(raw)["relevant_hit_rate"] >= 0.9


def test_real_mode_agents_rate_lessons_through_the_api_and_verdicts_travel(tmp_path, encoder):
    """Real ``zoonode start`` processes (2 honest) and a sleeper process: the sleeper is aged
    in the honest nodes' history, so its poison is served before trust forms; the agents'
    verdicts go through the HTTP API and the sleepers' through the feedback topic, and every
    watched node stores verdicts it did not cast."""
    from zoonode.sim.realfeedback import run_real_feedback

    scenario = parse_scenario(
        """
        mode = "real"
        seed = 5
        duration_s = 8
        [nodes]
        honest = 2
        adversarial = 1
        roles = ["poison"]
        [topology]
        attacker_connections = 2
        [workload]
        lessons_per_node = 2
        publish_window_s = 1
        query_nodes = 2
        [attack]
        poison_per_target = 1
        [history]
        attacker_age_days = 7
        [feedback]
        enabled = true
        round_s = 8
        tasks_per_round = 3
        recompute_s = 1
        harmful_per_attacker = 2
        """
    )
    raw = run_real_feedback(scenario, encoder, tmp_path / "nodes")
    m = summarise(raw)
    assert m["delivery_rate"] == 1.0
    [first] = raw["feedback"]["rounds"]
    assert first["attack_success"] > 0  # an aged sleeper, as the node's history says
    assert first["votes"] > 0
    # Every honest node holds the sleeper's verdicts and its peer's, by gossip or sync.
    workload = build_workload(scenario, encoder, now_ms())  # the same seeded identities
    authors = [workload.identities[i].author for i in range(3)]
    for i in (0, 1):
        db = sqlite3.connect(tmp_path / "nodes" / f"node{i}" / "experiences.sqlite")
        voters = {v for (v,) in db.execute("SELECT DISTINCT voter FROM feedback")}
        db.close()
        assert authors[2] in voters and authors[1 - i] in voters, i
