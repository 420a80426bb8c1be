"""The README's tour, run as a newcomer types it: every command of each ``<!-- tour -->``
block, from the repository root, against a real devnet, its output checked against the
README's with doctest's ELLIPSIS rule (``...`` stands for anything). The only changes: the
tour's data folder becomes a temporary one and ``.venv/bin/`` becomes this interpreter's."""

from __future__ import annotations

import doctest
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TOUR_DIR = "/tmp/zoonode-tour"
BLOCK = re.compile(r"<!-- tour(?:: (\w+))? -->\n```console\n(.*?)```", re.S)
CHECK = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")  # a log record's first line


def tour_blocks(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(kind, [(command, expected output)]) per tour block; a command is a ``$ `` line,
    with the lines of its here-document up to ``EOF`` when it has one."""
    blocks = []
    for kind, body in BLOCK.findall(text):
        steps: list[tuple[str, str]] = []
        lines = body.splitlines()
        i = 0
        command, expected = None, []
        while i < len(lines):
            line = lines[i]
            if line.startswith("$ "):
                if command is not None or expected:
                    steps.append((command or "", "\n".join(expected)))
                command, expected = line[2:], []
                if "<<'EOF'" in line:
                    while lines[i] != "EOF":
                        i += 1
                        command += "\n" + lines[i]
            else:
                expected.append(line)
            i += 1
        steps.append((command or "", "\n".join(expected)))
        blocks.append((kind or "run", steps))
    return blocks


def matches(want: str, got: str) -> bool:
    return doctest.OutputChecker().check_output(want + "\n", got, CHECK)


def test_the_readme_has_a_tour_and_ci_finds_its_test_command():
    text = README.read_text()
    kinds = [kind for kind, _ in tour_blocks(text)]
    assert kinds[0] == "background" and "stop" in kinds and kinds.count("run") >= 4
    found = re.findall(r"^    (.*) # test-command$", text, re.M)  # .ci/run's rule
    assert len(found) == 1 and found[0].endswith(".venv/bin/pytest")
    assert len(text.splitlines()) <= 300


def test_every_relative_link_in_the_docs_resolves():
    pages = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which is missing"


def test_zoonode_imports_from_the_clone_root():
    out = subprocess.run(
        [sys.executable, "-c", "import zoonode.native, zoonode.protocol, zoonode.defaults"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


def test_the_readme_tour_runs_verbatim(tmp_path):
    base = str(tmp_path / "tour")
    bindir = str(Path(sys.executable).parent) + "/"

    def local(text: str) -> str:
        return text.replace(TOUR_DIR, base).replace(".venv/bin/", bindir)

    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOONODE_")}
    env["COLUMNS"] = "100"
    blocks = tour_blocks(README.read_text())
    kind, [(command, want)] = blocks[0]
    assert kind == "background"
    log = tmp_path / "devnet.log"
    with log.open("w") as sink:
        devnet = subprocess.Popen(
            ["bash", "-c", "exec " + local(command)],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        last = local(want).splitlines()[-1]
        deadline = time.monotonic() + 120
        while last not in log.read_text():
            assert devnet.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert matches(local(want), log.read_text()), log.read_text()
        for kind, steps in blocks[1:]:
            if kind == "stop":
                devnet.send_signal(signal.SIGINT)
                assert devnet.wait(timeout=60) == 0, log.read_text()
                # What the devnet printed after its ready line, its log lines (stderr) aside,
                # is the README's block: no line it does not show (the SIGINT line was not).
                after = log.read_text().split(last, 1)[1].splitlines()
                said = [x for x in after if x.strip() and not LOG_LINE.match(x)]
                assert said == local(steps[0][1]).splitlines(), log.read_text()
                leftovers = sorted(p.name for p in Path(base).glob("node*/api.url"))
                assert leftovers == [], "api.url outlived its node"
                continue
            for command, want in steps:
                run = subprocess.run(
                    ["bash", "-c", local(command)],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=180,
                )
                got = run.stdout + run.stderr
                said = f"$ {command}\n--- README:\n{want}\n--- got:\n{got}"
                assert matches(local(want), got), said
                assert run.returncode == (1 if want.startswith("error:") else 0), got
    finally:
        if devnet.poll() is None:
            os.killpg(devnet.pid, signal.SIGKILL)
            devnet.wait()
