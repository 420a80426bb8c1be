"""``zoonode simulate``: run a scenario in one or both engines and write its results folder."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from zoonode.sim.metrics import summarise
from zoonode.sim.scenario import Scenario


def _with_adversaries(scenario: Scenario, n: int) -> Scenario:
    return dataclasses.replace(scenario, nodes=dataclasses.replace(scenario.nodes, adversarial=n))


def plan(scenario: Scenario, mode: str | None = None) -> list[tuple[str, str, Scenario]]:
    """(label, engine, scenario) for every run: the scenario itself in each engine, then the
    scale-mode sweep over adversary counts."""
    mode = mode or scenario.mode
    engines = ["scale", "real"] if mode == "both" else [mode]
    runs = [(engine, engine, scenario) for engine in engines]
    fb = scenario.feedback
    if fb.enabled and fb.compare_time_only and fb.standing != "time":
        time_only = dataclasses.replace(scenario, feedback=dataclasses.replace(fb, standing="time"))
        for engine in engines:
            runs.append((f"{engine}, time-only standing", engine, time_only))
    for n in scenario.sweep_adversarial:
        if n != scenario.nodes.adversarial:
            runs.append((f"scale, {n} adversarial", "scale", _with_adversaries(scenario, n)))
    return runs


def simulate(scenario: Scenario, out: Path, mode: str | None = None, progress=None) -> Path:
    from zoonode.native.encoder import Encoder
    from zoonode.sim.report import write_results

    started = time.monotonic()
    out = Path(out).resolve()  # node processes run in their own directories
    encoder = Encoder.default()
    runs: list[dict[str, Any]] = []
    todo = plan(scenario, mode)
    for number, (label, engine, sc) in enumerate(todo):

        def step(fraction: float, number: int = number) -> None:
            if progress:
                progress((number + fraction) / len(todo))

        if engine == "scale":
            from zoonode.sim.scale import run_scale

            raw = run_scale(sc, encoder, step)
        elif sc.feedback.enabled:
            from zoonode.sim.realfeedback import run_real_feedback

            raw = run_real_feedback(sc, encoder, out / "real-nodes", step)
        else:
            from zoonode.sim.real import run_real

            raw = run_real(sc, encoder, out / "real-nodes", step)
        runs.append({"label": label, "raw": raw, "metrics": summarise(raw)})
    return write_results(out, scenario, runs, time.monotonic() - started)
