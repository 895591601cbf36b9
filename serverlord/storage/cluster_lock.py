"""A lock file that records which live processes use an embedded PostgreSQL cluster.

Every process that uses the cluster holds a shared POSIX record lock on byte 0 of
`DATA_DIR/serverlord.lock`, and a `serverlord serve` also holds an exclusive lock on
byte 1. The kernel drops a process's record locks when it exits, also on SIGKILL, so the
locks tell a live user of the cluster from one that died and left the server running.
Record locks (`fcntl.lockf`) are used because a failed conversion from shared to
exclusive keeps the shared lock, which `flock` does not promise.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_FILE = "serverlord.lock"

# Byte offsets of the two locks in LOCK_FILE.
USER_BYTE = 0
SERVER_BYTE = 1


class ServerRunning(Exception):
    """Another live `serverlord serve` uses the cluster."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        owner = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"the embedded PostgreSQL in {data_dir} is already run by another Server Lord "
            f"({owner}); stop it first or set another DATA_DIR"
        )
        self.pid = pid


class ClusterLock:
    """The locks one process holds on LOCK_FILE in a cluster's data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._fd: int | None = None

    def acquire(self, serving: bool) -> bool:
        """Take the user lock (and the server lock when `serving`).

        Return True when no other live process uses the cluster. The user lock is then
        held exclusively, so no other process starts or stops the cluster until `share()`.
        Raise ServerRunning when `serving` and another live server holds the server lock.
        """
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._fd = fd
        try:
            _match_owner(path, self.data_dir)
            if serving:
                self._take_server_lock(fd)
            # Waits while another process holds the lock exclusively to start or stop
            # the cluster.
            fcntl.lockf(fd, fcntl.LOCK_SH, 1, USER_BYTE)
            return _try_lock(fd, fcntl.LOCK_EX, USER_BYTE)
        except BaseException:
            self.release()
            raise

    def share(self) -> None:
        """Turn an exclusive user lock into a shared one, so other processes may attach."""
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_SH, 1, USER_BYTE)

    def release_and_check_last(self) -> bool:
        """Give up this process's use of the cluster; return True when it was the last user.

        On True the user lock is held exclusively until `release()`, so the caller may
        stop the cluster while no other process attaches. The shared lock is given up
        before the exclusive one is tried, so when two users leave at once, at least one
        of them gets the exclusive lock.
        """
        if self._fd is None:
            return False
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, USER_BYTE)
        return _try_lock(self._fd, fcntl.LOCK_EX, USER_BYTE)

    def release(self) -> None:
        """Drop every lock this process holds on the file."""
        if self._fd is not None:
            # Closing any descriptor of the file drops all of this process's record
            # locks on it, so the file is only ever opened once per process.
            os.close(self._fd)
            self._fd = None

    def _take_server_lock(self, fd: int) -> None:
        if not _try_lock(fd, fcntl.LOCK_EX, SERVER_BYTE):
            raise ServerRunning(self.data_dir, _read_pid(fd))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _try_lock(fd: int, kind: int, offset: int) -> bool:
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, 1, offset)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _read_pid(fd: int) -> int | None:
    # Read through the same descriptor: opening and closing another one would drop
    # this process's locks.
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _match_owner(path: Path, data_dir: Path) -> None:
    """Give the lock file the data folder's owner, the cluster's user when run as root."""
    if os.geteuid() != 0:
        return
    folder = data_dir.stat()
    if path.stat().st_uid != folder.st_uid:
        os.chown(path, folder.st_uid, folder.st_gid)
