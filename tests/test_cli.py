"""The real `zoonode` console script, run as a subprocess."""

from __future__ import annotations

import json
import stat
import subprocess

from zoonode import __version__

from conftest import ZOONODE


def run(*args, cwd=None, timeout=180):
    return subprocess.run(
        [ZOONODE, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_version():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"zoonode {__version__}"


def test_keygen_writes_0600_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "id.pem"
    first = run("keygen", "--path", str(path))
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(json.loads(first.stdout)["public_key"])) == 32
    before = path.read_bytes()
    second = run("keygen", "--path", str(path))
    assert second.returncode == 1
    assert "refusing to overwrite" in second.stderr
    assert path.read_bytes() == before


def test_create_then_verify_then_tamper(tmp_path):
    record = tmp_path / "rec.zoo"
    created = run(
        "experience",
        "create",
        "Check units before adding measured values",
        "--domain",
        "physics.units",
        "--confidence",
        "0.7",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(record),
    )
    assert created.returncode == 0, created.stderr
    record_id = json.loads(created.stdout)["id"]

    ok = run("experience", "verify", str(record))
    assert ok.returncode == 0, ok.stdout
    fields = json.loads(ok.stdout)
    assert fields["valid"] and fields["id"] == record_id
    assert fields["text"] == "Check units before adding measured values"
    assert fields["domain"] == "physics.units" and fields["confidence"] == 0.7

    data = bytearray(record.read_bytes())
    data[-5] ^= 0x40
    record.write_bytes(bytes(data))
    bad = run("experience", "verify", str(record))
    assert bad.returncode == 1
    assert json.loads(bad.stdout) == {
        "valid": False,
        "code": "bad_signature",
        "reason": "signature does not verify",
    }


def test_verify_accepts_hex_and_reports_decode_errors(tmp_path):
    vectors = json.loads(
        (
            __import__("importlib").resources.files("zoonode.protocol") / "vectors" / "v1.json"
        ).read_text()
    )
    good = tmp_path / "good.hex"
    good.write_text(vectors["valid"][0]["wire_hex"] + "\n")
    assert run("experience", "verify", str(good)).returncode == 0
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\xc1\xc1not msgpack")
    out = run("experience", "verify", str(garbage))
    assert out.returncode == 1
    assert json.loads(out.stdout)["code"] == "malformed"
    missing = run("experience", "verify", str(tmp_path / "absent"))
    assert missing.returncode == 2


def test_create_refuses_a_bad_confidence_with_the_apis_code(tmp_path):
    """The same fault, the same code: `experience create` runs the API's lesson checks."""
    for value, code in (("nan", "non_finite"), ("1e400", "non_finite"), ("1.5", "out_of_range")):
        out = run(
            "experience", "create", "Check the units first", "--domain", "math",
            "--confidence", value, "--data-dir", str(tmp_path / "d"),
        )  # fmt: skip
        assert out.returncode == 1, out.stdout
        assert out.stderr.startswith(f"error: {code}: confidence"), out.stderr
        assert not out.stdout


def test_usage_errors_of_feedback_and_import_carry_a_code(tmp_path):
    """`error: CODE: MESSAGE` as every other refusal (fresh-clone review: these two had no
    code): a feedback without its verdict is the API's missing_field, two verdicts are
    bad_request; a file that is not there is not_found, one that cannot be read unreadable.
    Exit 2 (a bad argument), said before any node is looked for (none runs here)."""
    data = ["--data-dir", str(tmp_path / "none")]
    target = "ab" * 32
    cases = [
        (["feedback", target, *data], "missing_field: a verdict is required: give exactly one of "
         "--helpful, --harmful, --withdraw"),
        (["feedback", target, "--harmful", "--helpful", *data], "bad_request: give exactly one of "
         "--helpful, --harmful, --withdraw, not --helpful and --harmful"),
        (["import", str(tmp_path / "absent.jsonl"), *data],
         f"not_found: cannot read {tmp_path / 'absent.jsonl'}: No such file or directory"),
        (["import", str(tmp_path), *data], f"unreadable: cannot read {tmp_path}: Is a directory"),
        (["experience", "verify", str(tmp_path / "absent")],
         f"not_found: cannot read {tmp_path / 'absent'}: No such file or directory"),
    ]  # fmt: skip
    for args, message in cases:
        out = run(*args)
        assert (out.returncode, out.stderr) == (2, f"error: {message}\n"), (args, out.stderr)


def test_devnet_says_when_it_reuses_an_earlier_base_dir(tmp_path):
    """`devnet --base-dir` over an earlier run's folder reuses its nodes' data; its first line
    says so (it did silently). A fresh folder says nothing of the kind (the README tour's
    first line, checked by test_readme_tour). Stopped once the line is read: the rest of the
    start is the tour's."""
    base = tmp_path / "net"
    assert run("keygen", "--data-dir", str(base / "node1")).returncode == 0  # an earlier node1
    proc = subprocess.Popen(
        [ZOONODE, "devnet", "--nodes", "2", "--base-dir", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()
    assert first == (
        f"zoonode devnet: reusing the data of an earlier run in {base} (node1: identities, "
        "lessons, peers); a new --base-dir starts afresh\n"
    )
