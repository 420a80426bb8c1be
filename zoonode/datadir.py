"""One process per data dir: an OS lock (``flock``) on ``DATA_DIR/node.lock``.

Two nodes on one data dir share an identity, a store and a replica, and lose records between
them; the second one must refuse at once. ``flock`` is released by the kernel when the holder
exits, however it exits (kill -9 included), so a stale lock cannot exist; the file keeps the
holder's PID only to name it in the error. :func:`holder` tells whether a data dir is in use
(e.g. whether its ``api.url`` is live).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "node.lock"
_ATTEMPTS = 20  # x 10 ms


class DataDirBusy(RuntimeError):
    """Another process holds the data dir; ``pid`` is it (None if it could not be read)."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"data dir {data_dir} is in use by {who} (a running zoonode node?); "
            "stop it first, or pass another --data-dir"
        )
        self.data_dir, self.pid = data_dir, pid


class DataDirLock:
    """Held from :meth:`acquire` until :meth:`release` or the process ends."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock without waiting, or raise DataDirBusy naming the holder's PID."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                pid = _read_pid(fd)
                # No PID: a holder() probe's brief shared lock, or a holder that has not
                # written its PID yet. Either passes in microseconds: look again.
                if pid or attempt == _ATTEMPTS - 1:
                    os.close(fd)
                    raise DataDirBusy(self.data_dir, pid) from None
                time.sleep(0.01)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(data_dir: Path) -> int | None:
    """The PID of the process holding ``data_dir`` (0 if it holds it but its PID is not
    written yet), or None if no process holds it. Never takes the lock for long."""
    path = Path(data_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read_pid(fd) or 0
            raise
        return None  # nobody holds it (our shared lock goes with the descriptor)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
