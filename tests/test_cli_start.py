"""`zoonode start` refuses addresses that cannot work in one line (exit 2) and shows its
defaults; the human views round and explain (pure)."""

from __future__ import annotations

import socket
import subprocess

from zoonode.humanview import feedback_view, import_view, query_view, status_view

from conftest import ZOONODE

PEER = "12D3KooWSPQSD8pppZJEg58cChDaXrnNTzUCBJWcPSfsKpyATYZw"


def start(tmp_path, *args):
    api = [] if "--api" in args else ["--api", "127.0.0.1:0"]
    return subprocess.run(
        [ZOONODE, "start", "--data-dir", str(tmp_path / "d"), *api, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_listen_and_bootstrap_addresses_are_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            ("--listen", "/ip4/127.0.0.1/tcp/99999"): "is not a multiaddr",
            ("--listen", "/ip4/192.0.2.1/tcp/4001"): "cannot listen on /ip4/192.0.2.1/tcp/4001",
            ("--listen", f"/ip4/127.0.0.1/tcp/{port}"): f"listen on /ip4/127.0.0.1/tcp/{port}",
            ("--bootstrap", "not-a-multiaddr"): "is not a multiaddr",
            ("--bootstrap", "/ip4/127.0.0.1/tcp/4001"): "names no peer",
            # TCP on an IP only: udp started a node listening nowhere, dns4 on 0.0.0.0 and ::
            ("--listen", "/ip4/127.0.0.1/udp/4001"): "cannot be listened on",
            ("--listen", "/dns4/localhost/tcp/0"): "cannot be listened on",
            # the API's address: a foreign IP was "[Errno 99] ..." alone, a port in use exit 1
            ("--api", "192.0.2.1:8780"): "cannot serve the HTTP API on 192.0.2.1:8780",
            ("--api", f"127.0.0.1:{port}"): f"HTTP API on 127.0.0.1:{port}: Address already",
        }
        for args, message in cases.items():
            out = start(tmp_path, *args)
            assert out.returncode == 2, (args, out.stderr)
            assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr
            assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "d" / "api.url").exists()


def test_start_help_shows_every_default():
    out = subprocess.run([ZOONODE, "start", "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(out.stdout.split())
    for default in ("/ip4/127.0.0.1/tcp/0", "127.0.0.1:8780", "zoonode", "network.bootstrap"):
        assert default in text, default


def test_query_view_rounds_and_explains():
    lesson = {
        "id": "ab" * 32,
        "author": "cd" * 32,
        "text": "Check the units before adding measured values",
        "domain": "physics.units",
        "confidence": 0.5,
        "relevance": 0.33966,
        "agreement": 1.0000001192092896,
        "standing": 1.07e-05,
        "group_size": 3,
    }
    view = query_view(
        {
            "selected": [lesson],
            "considered": 41,
            "down_weighted": {"below_similarity_floor": 40, "low_reputation": 1},
        }
    )
    assert view.splitlines()[0] == " 1. Check the units before adding measured values"
    assert "relevance 0.34, agreement 1.00, standing 0.00" in view
    assert "stands for 3 near-duplicates" in view and "author cdcdcdcd" in view
    assert f"    id {'ab' * 32}" in view.splitlines()  # whole, as revoke takes it
    assert "1 selected of 41 considered" in view and "40 below the similarity floor" in view
    assert "1.0000001" not in view and "e-05" not in view
    assert query_view({"selected": [], "considered": 7}).startswith("no lesson selected")
    assert "verdicts:" not in view  # no verdicts, no line (the README tour's view)
    trust = {
        **{"helpful": 2, "harmful": 1, "helpful_trusted": 1.5, "harmful_trusted": 0},
        **{"helpful_untrusted": 1, "harmful_untrusted": 1, "author_trust_standing": 0.4567},
    }
    voted = lesson | {"trust": trust}
    assert (
        "    verdicts weighted by the voters' trust: 1.50 helpful, 0.00 harmful"
        " (1 helpful, 1 harmful from untrusted voters); author's trust standing 0.46"
        in query_view({"selected": [voted], "considered": 1}).splitlines()
    )


def test_feedback_and_trust_views():
    answer = {"id": "ef" * 32, "target": "ab" * 32, "verdict": "harmful", "outcome": "accepted"}
    assert feedback_view(answer | {"previous": None}).splitlines() == [
        f"accepted harmful on {'ab' * 32}",
        f"verdict {'ef' * 32}",
    ]
    replaced = feedback_view(answer | {"outcome": "replaced", "previous": "helpful"})
    assert replaced.splitlines()[0].endswith("(was helpful)")
    trust = {"votes": 12, "voters": 3, "authors": 5, "root_endorsements": 2, "ready": False,
             "recomputed_at": 1, "seconds": 0.0123}  # fmt: skip
    view = status_view({"peer_id": PEER, "addrs": [], "peers": 1, "counts": {}, "trust": trust})
    line = "trust    12 verdicts in the graph from 3 voters on 5 authors; 2 endorsed by this node"
    assert line in view
    assert "recomputed 1970-01-01 00:00:00 UTC" in view
    assert "time known still decides" in view and "0.01 s" in view


def test_import_view_counts_in_words_accepted_first():
    """`zoonode import`'s last line, for people (it was the raw JSON of the counts)."""
    summary = {"pending": 1, "duplicate": 2, "accepted": 38, "errors": 2}
    assert import_view(summary, "f.jsonl") == (
        "f.jsonl: 38 accepted, 2 duplicate, 1 pending, 2 failed"
    )
    assert import_view({"duplicate": 3, "errors": 0}, "f.jsonl") == "f.jsonl: 3 duplicate"
    assert import_view({"errors": 0}, "empty.jsonl") == "empty.jsonl: no lessons in it"


def test_status_view_says_how_to_join_when_alone():
    addr = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"
    alone = status_view({"peer_id": PEER, "addrs": [addr], "peers": 0, "counts": {}})
    assert "--bootstrap" in alone and "network.mdns" in alone and alone.endswith(addr)
    joined = status_view({"peer_id": PEER, "addrs": [addr], "peers": 2, "counts": {}})
    assert "alone" not in joined and "address (for --bootstrap):" in joined


def test_encoder_settings_are_refused_at_start_with_the_setting_named(tmp_path):
    """A missing adapter file, a backbone folder without a model, a file that is no fitted
    head, a head fitted for another space or for other weights: one line naming the
    ``[encoder]`` setting, exit 2 (the last needs the model loaded, in the node)."""
    import numpy as np

    from zoonode.native.space import load_space

    space = load_space(None).hex
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "text.npz").write_text("not numpy")

    def head(name, space_id, weights="0" * 64):
        path = tmp_path / name
        with path.open("wb") as f:
            np.savez(f, adapter=np.eye(384, dtype=np.float32), weights_sha256=np.array(weights),
                     space_id=np.array(space_id))  # fmt: skip
        return path

    cases = {
        f'adapter = "{tmp_path}/missing.npz"': f"encoder.adapter = {tmp_path}/missing.npz: file",
        f'backbone = "{empty}"': f"encoder.backbone = {empty}: no transformers model",
        f'adapter = "{tmp_path}/text.npz"': "not a head from `zoonode space fit-head`",
        f'adapter = "{head("other.npz", "ab" * 16)}"': "fitted for space abababab",
        f'adapter = "{head("weights.npz", space)}"': "fitted for other weights",
    }
    for setting, message in cases.items():
        config = tmp_path / "c.toml"
        config.write_text(f"[encoder]\n{setting}\n")
        out = start(tmp_path, "--config", str(config))
        assert out.returncode == 2, (setting, out.stderr)
        line = out.stderr.strip().splitlines()[-1]  # after any start-up log line
        assert line.startswith("error: encoder.") and message in line, out.stderr
        assert len(line.splitlines()) == 1, out.stderr
    shown = subprocess.run(
        [ZOONODE, "space", "info", "--config", str(config)], capture_output=True, text=True
    )
    assert '"adapter": "' + str(tmp_path / "weights.npz") in shown.stdout
