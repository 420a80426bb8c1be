"""Config layering: embedded defaults < file < environment < flags, typed and strict."""

from __future__ import annotations

import pytest

from zoonode.config import Config, ConfigError, load_config

PEER = "12D3KooWSPQSD8pppZJEg58cChDaXrnNTzUCBJWcPSfsKpyATYZw"


def test_defaults_match_the_dataclasses():
    assert load_config(env={}) == Config()


def test_layers_override_in_order(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("[selection]\nk = 7\nmin_similarity = 0.5\n[network]\nmdns = true\n")
    env = {
        "ZOONODE_SELECTION__K": "9",
        "ZOONODE_NETWORK__BOOTSTRAP": (
            f"/ip4/1.2.3.4/tcp/1/p2p/{PEER},/ip4/5.6.7.8/tcp/2/p2p/{PEER}"
        ),
    }
    cfg = load_config(path, env=env, overrides={"selection": {"candidates": 50, "k": None}})
    assert cfg.selection.k == 9  # env beats file; a None flag leaves it alone
    assert cfg.selection.min_similarity == 0.5
    assert cfg.selection.candidates == 50
    assert cfg.network.mdns is True
    assert cfg.network.bootstrap == [
        f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}",
        f"/ip4/5.6.7.8/tcp/2/p2p/{PEER}",
    ]


@pytest.mark.parametrize(
    ("text", "env", "match"),
    [
        ("[selection]\nkk = 1\n", {}, "unknown config key"),
        ("[nope]\nx = 1\n", {}, "unknown config key"),
        ("[selection]\nk = 'five'\n", {}, "must be int"),
        ("", {"ZOONODE_SELECTION__K": "five"}, "selection.k must be an integer, got 'five'"),
        ("", {"ZOONODE_NETWORK__MDNS": "maybe"}, "network.mdns must be true or false"),
        ("[selection\n", {}, "node.toml"),
        ("[store]\nreplica_backend = 'faiss'\n", {}, "replica_backend = 'faiss': must be one of"),
        ("[store]\nreplica_backend = 'faiss-ivf'\nivf_lists = 0\n", {}, "ivf_lists = 0: must be"),
        ("[selection]\nnewcomers_alone = true\n", {}, "must be str"),
        (
            "[selection]\nnewcomers_alone = 'sometimes'\n",
            {},
            "newcomers_alone = 'sometimes': must be one of",
        ),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, env, match):
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path, env=env)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", env={})


def test_data_dir(tmp_path):
    cfg = load_config(env={"ZOONODE_NODE__DATA_DIR": str(tmp_path)})
    assert cfg.data_path == tmp_path


def _numeric_settings():
    """(section, key, the field's annotated-types bounds) for every int or float setting."""
    import dataclasses
    import typing

    from zoonode.config import _base

    out = []
    sections = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls = sections[section.name]
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if _base(hint) in (int, float):
                assert typing.get_origin(hint) is typing.Annotated, f"{section.name}.{f.name}"
                bounds = {}
                for meta in typing.get_args(hint)[1:]:
                    for item in getattr(meta, "metadata", []):
                        for name in ("ge", "gt", "le", "lt"):
                            if getattr(item, name, None) is not None:
                                bounds[name] = getattr(item, name)
                out.append((section.name, f.name, _base(hint), bounds))
    return out


@pytest.mark.parametrize(("section", "key", "kind", "bounds"), _numeric_settings())
def test_every_numeric_setting_has_a_range(section, key, kind, bounds):
    """Issue #19, case 6: each out-of-range value is one line naming the key, the value and
    what is allowed."""
    assert bounds, f"{section}.{key} has no range"
    bad = []
    if "ge" in bounds or "gt" in bounds:
        low = bounds.get("ge", bounds.get("gt"))
        bad.append(kind(low - 1) if "ge" in bounds else kind(low))
    if "le" in bounds or "lt" in bounds:
        bad.append(kind(bounds.get("le", bounds.get("lt")) + 1))
    if kind is float:
        bad.append(float("nan"))
    for value in bad:
        with pytest.raises(ConfigError) as caught:
            load_config(env={}, overrides={section: {key: value}})
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"{section}.{key} = {value!r}: must be "), message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[store]\ncapacity = -5\n", "error: store.capacity = -5: must be at least 1"),
        (
            '[node]\nlog_level = "verbose"\n',
            "error: node.log_level = 'verbose': must be one of 'debug', 'info', 'warning', "
            "'error', 'critical'",
        ),
        ("[selection]\nk = 0\n", "error: selection.k = 0: must be at least 1"),
        (
            "[selection]\nmin_similarity = 7.5\n",
            "error: selection.min_similarity = 7.5: must be at most 1.0",
        ),
        (
            "[store]\nduplicate_cosine = nan\n",
            "error: store.duplicate_cosine = nan: must be a finite number",
        ),
        (
            '[api]\nlisten = "8780"\n',
            "error: api.listen = '8780': must be HOST:PORT (port 0-65535; 0 picks a free one) "
            "or empty",
        ),
    ],
)
def test_zoonode_start_refuses_a_bad_setting_in_one_line_exit_2(tmp_path, text, line):
    import subprocess

    from conftest import ZOONODE

    path = tmp_path / "node.toml"
    path.write_text(text)
    out = subprocess.run(
        [ZOONODE, "start", "--config", str(path), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_choice_lists_match_the_code():
    import typing

    from zoonode.config import NEWCOMERS_ALONE, SelectionConfig, StoreConfig
    from zoonode.replica import BACKENDS

    hints = typing.get_type_hints(StoreConfig, include_extras=True)
    assert typing.get_args(hints["replica_backend"]) == BACKENDS
    hints = typing.get_type_hints(SelectionConfig, include_extras=True)
    assert typing.get_args(hints["newcomers_alone"]) == NEWCOMERS_ALONE


@pytest.mark.parametrize(
    ("section", "values", "match"),
    [
        ("selection", {"floor_min": 0.5}, "floor_min"),  # above min_similarity 0.4
        ("selection", {"floor_margin": -0.1}, "floor_margin"),
        ("selection", {"per_author": 0}, "per_author"),
        ("selection", {"agreement_quantile": 1.0}, "agreement_quantile"),
        ("selection", {"answer_duplicate": 0.0}, "answer_duplicate"),
        ("node", {"blas_threads": -1}, "blas_threads"),
    ],
)
def test_selection_and_thread_settings_are_checked(section, values, match):
    with pytest.raises(ConfigError, match=match):
        load_config(env={}, overrides={section: values})


# -- found in review: these were tracebacks (exit 1), not one line (exit 2) ---------------------
@pytest.mark.parametrize(
    ("content", "env", "line"),
    [
        (None, {}, "cannot read config file {path}: Is a directory"),
        (b'[node]\nlog_level = "\xff"\n', {}, "{path}: not valid UTF-8 (byte 20)"),
        (b"[network]\nlisten = " + b"[" * 5000 + b"]" * 5000, {}, "{path}: nested too deeply"),
        (b"[store]\ncapacity = " + b"9" * 5000, {}, "{path}: Exceeds the limit (4300 digits)"),
        (
            b"",
            {"ZOONODE_NETWORK__LISTEN": "[" * 5000 + "]" * 5000},
            "environment value for network.listen is nested deeper than 32 levels",
        ),
        (
            b"",
            {"ZOONODE_NETWORK__LISTEN": "[/ip4/1.2.3.4]"},
            "environment value for network.listen is not JSON",
        ),
    ],
)
def test_a_config_file_or_env_that_cannot_be_read_is_one_line_exit_2(tmp_path, content, env, line):
    import os
    import subprocess

    from conftest import ZOONODE

    path = tmp_path / "node.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    want = line.format(path=path)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    assert str(caught.value).startswith(want)
    out = subprocess.run(
        [ZOONODE, "start", "--config", str(path), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert out.returncode == 2, out.stderr
    [printed] = out.stderr.strip().splitlines()
    assert printed.startswith(f"error: {want}")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("value", ["\u00e9\u00e9:8799", "a b:1", "-x:1", "x..y:1"])
def test_api_listen_host_must_be_an_ip_or_an_ascii_host_name(value):
    with pytest.raises(ConfigError, match="IP address or an ASCII host name"):
        load_config(env={}, overrides={"api": {"listen": value}})


@pytest.mark.parametrize("value", ["127.0.0.1:0", "localhost:8780", "[::1]:0", "node-1.lan:80"])
def test_api_listen_takes_ips_and_host_names(value):
    assert load_config(env={}, overrides={"api": {"listen": value}}).api.listen == value
