"""One job per backup directory: an exclusive lock that rank 0 holds while it trains.

Two jobs writing one backup directory overwrite and delete each other's backups, and resume each
other's. Rank 0 takes an ``flock`` on ``<backup_dir>/.distnn-backup.lock`` — the kernel drops it
when the process ends, however it ends — and writes the holder (host, pid, start time) into the
file, so that a second job is refused with a message naming it. On NFS, Linux implements ``flock``
with POSIX record locks arbitrated by the server; Lustre needs its ``flock`` mount option. A
filesystem without locks gets a warning, not a refusal. See docs/architecture.md, "Reliability: files and backups".
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys

try:
    import fcntl
except ImportError:  # not a POSIX system: no locks, and a warning says so
    fcntl = None

LOCK_NAME = ".distnn-backup.lock"
_held: dict[str, "DirectoryLock"] = {}  # the locks this process holds, by real path


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):  # being written, or not ours
        return "holder not recorded yet"


class DirectoryLock:
    """The lock of one backup directory, held by this process (``acquire`` / ``release``)."""

    def __init__(self, key: str, path: str, fd: int):
        self._key, self.path, self._fd = key, path, fd

    @classmethod
    def acquire(cls, directory: str) -> "DirectoryLock | None":
        """Lock ``directory`` (created if missing) for this process, or raise ``RuntimeError``
        naming the job that holds it. A lock this process already holds (left by a ``fit`` that
        raised) is reused. ``None`` when the filesystem cannot lock."""
        os.makedirs(directory, exist_ok=True)
        key = os.path.realpath(directory)
        if key in _held:
            return _held[key]
        path = os.path.join(directory, LOCK_NAME)
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is None:
                    raise OSError("fcntl is not available on this platform")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RuntimeError(
                    f"The backup directory {directory} is in use by another job ({holder}). Two jobs writing one "
                    "backup directory overwrite and delete each other's backups: give this job its own "
                    "backup_dir, or wait until that job ends") from None
            except OSError as exc:
                os.close(fd)
                print(f"distnn: WARNING: cannot lock the backup directory {directory} ({exc}); a second job "
                      "using it would not be detected", file=sys.stderr, flush=True)
                return None
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # a holder removed the file as it finished: lock the file now under that name
        else:
            raise RuntimeError(f"Could not lock the backup directory {directory}: its lock file keeps being replaced")
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}).encode(), 0)
        lock = _held[key] = cls(key, path, fd)
        return lock

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no other job can hold it meanwhile) and unlock."""
        if _held.get(self._key) is not self:
            return
        del _held[self._key]
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
