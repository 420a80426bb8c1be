"""Config layering: embedded defaults < file < environment < flags, typed and strict."""

from __future__ import annotations

import pytest

from zoonode.config import Config, ConfigError, load_config


def test_defaults_match_the_dataclasses():
    assert load_config(env={}) == Config()


def test_layers_override_in_order(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("[selection]\nk = 7\nmin_similarity = 0.5\n[network]\nmdns = true\n")
    env = {"ZOONODE_SELECTION__K": "9", "ZOONODE_NETWORK__BOOTSTRAP": "/ip4/1.2.3.4/tcp/1,/x"}
    cfg = load_config(path, env=env, overrides={"selection": {"candidates": 50, "k": None}})
    assert cfg.selection.k == 9  # env beats file; a None flag leaves it alone
    assert cfg.selection.min_similarity == 0.5
    assert cfg.selection.candidates == 50
    assert cfg.network.mdns is True
    assert cfg.network.bootstrap == ["/ip4/1.2.3.4/tcp/1", "/x"]


@pytest.mark.parametrize(
    ("text", "env", "match"),
    [
        ("[selection]\nkk = 1\n", {}, "unknown config key"),
        ("[nope]\nx = 1\n", {}, "unknown config key"),
        ("[selection]\nk = 'five'\n", {}, "must be int"),
        ("", {"ZOONODE_SELECTION__K": "five"}, "not a"),
        ("", {"ZOONODE_NETWORK__MDNS": "maybe"}, "not a"),
        ("[selection\n", {}, "node.toml"),
        ("[store]\nreplica_backend = 'faiss'\n", {}, "replica_backend must be one of"),
        ("[store]\nreplica_backend = 'faiss-ivf'\nivf_lists = 0\n", {}, "ivf_lists must be"),
        ("[selection]\nnewcomers_alone = true\n", {}, "must be str"),
        ("[selection]\nnewcomers_alone = 'sometimes'\n", {}, "newcomers_alone must be one of"),
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
