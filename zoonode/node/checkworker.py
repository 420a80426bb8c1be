"""The background check's encoder in a process of its own (``ingest.check_process``).

In a thread of the node, the check's Python work (tokenising, the head's numpy, the hand-off
around each runtime call) takes the node's GIL, and every time it asks for it a query on the
knowledge-base thread is made to hand it over (the interpreter's switch interval, 5 ms) and
wait until the check thread, niced and on 2 busy cores, is scheduled to take it: a priority
inversion that made queries beside a draining backlog slower than the CPU the check used
(benchmarks/drain_query.py). A process shares no GIL: the kernel's priorities alone decide,
and the whole process is niced.

The worker loads the node's encoder from the same settings, then answers one batch of texts
at a time over a pipe with their compact vectors. It exits when the node closes the pipe or
dies (EOF, ``kill -9`` included): no stray process. A batch is only ever re-encoded here; the
verdicts and every write stay in the node.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np

from zoonode.native.encoder import EncoderSettings

log = logging.getLogger("zoonode.node.checker")

START_TIMEOUT_S = 300.0  # loading the encoder (an ONNX export on first use takes a while)


def serve(conn, settings: EncoderSettings, nice: int, threads: int) -> None:
    """Worker process: encode each list of texts received, answer ``(True, vectors)`` or
    ``(False, message)``; return on ``None`` or a closed pipe. The encoder loads at the
    node's priority (a few seconds, once: niced on 2 busy cores it took minutes), then every
    thread of the worker is niced by ``nice``."""
    from zoonode.native.encoder import Encoder

    encoder = Encoder.from_settings(settings)
    encoder.encode_compact(["warm-up"], 1, False, threads)
    conn.send((True, renice(nice)))  # ready
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):
            return
        if texts is None:
            return
        try:
            out = encoder.encode_compact(texts, len(texts), False, threads)
            conn.send((True, np.ascontiguousarray(out, np.float32)))
        except Exception as exc:  # handed back to the checker, which logs it
            conn.send((False, f"{type(exc).__name__}: {exc}"))


def renice(nice: int) -> int:
    """Raise the nice of every thread of this process by ``nice`` (Linux keeps one per
    thread; elsewhere the process's); the calling thread's nice after."""
    if nice:
        tasks = Path("/proc/self/task")
        tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
        for tid in tids:
            with contextlib.suppress(OSError):  # a thread gone, or no permission
                now = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(now + nice, 19))
    return os.getpriority(os.PRIO_PROCESS, 0)


class CheckProcess:
    """The encoder of the background check in a worker process, started on first use and
    started again if it died. ``encode`` blocks (call it from a thread: the pipe wait holds no
    GIL). Thread-safe: one batch at a time."""

    def __init__(self, settings: EncoderSettings, nice: int, threads: int) -> None:
        self.settings = settings
        self.nice = nice
        self.threads = threads
        self.proc = None
        self.conn = None
        self.worker_nice: int | None = None  # the worker's nice, read back once started
        self.base_nice: int | None = None  # the starting thread's (the node's) nice
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def niced(self) -> bool:
        """Whether the worker runs at a lower priority than the node: its nice as read back
        from the worker, not the setting's (a renice the kernel refused, or a node itself
        started at nice 19, leaves it at the node's). False until it has started: it loads
        the encoder at the node's priority."""
        return (
            self.worker_nice is not None
            and self.base_nice is not None
            and self.worker_nice > self.base_nice
        )

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self.base_nice = os.getpriority(os.PRIO_PROCESS, 0)  # the worker inherits this
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=serve,
            args=(theirs, self.settings, self.nice, self.threads),
            name="zoonode-check",
            daemon=True,
        )
        proc.start()
        theirs.close()
        if not ours.poll(START_TIMEOUT_S):
            proc.kill()
            raise RuntimeError("the check's encoder process did not start")
        try:
            _, self.worker_nice = ours.recv()
        except EOFError:
            proc.join(5)
            raise RuntimeError(
                f"the check's encoder process exited while starting ({proc.exitcode})"
            ) from None
        self.proc, self.conn = proc, ours

    def start(self) -> None:
        """Start the worker unless it runs (blocks while the encoder loads)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> None:
        if self.proc is None or not self.proc.is_alive():
            self._drop()
            self._start()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self._ensure()
            try:
                self.conn.send(list(texts))
                ok, value = self.conn.recv()
            except (EOFError, OSError) as exc:
                self._drop()
                raise RuntimeError(f"the check's encoder process died: {exc}") from None
            if not ok:
                raise RuntimeError(value)
            return value

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
        if self.proc is not None:
            self.proc.join(0.1)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        self.proc = self.conn = None
        self.worker_nice = None

    def close(self) -> None:
        """Ask the worker to exit, then make sure it did (it also exits on EOF). Safe to
        call from any thread while a batch runs: the batch's answer is then dropped."""
        proc, conn = self.proc, self.conn
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            conn.send(None)
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        with contextlib.suppress(OSError):
            conn.close()
