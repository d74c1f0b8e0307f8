"""One run a folder: a lock file that a training run holds while it writes its run folder.

The lock is `<out>/.nondeep.lock`, a file that holds the writer's PID and start time, locked with flock(2)
while the run lives. The kernel drops the lock when the process dies however it ends, so a lock file left
by a dead run is simply taken over; on a file system without flock the PID is checked instead. The file
stays after the run: it marks the folder as nondeep's, so a folder with files but without it holds someone
else's files and is refused unless forced.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from .errors import NondeepError
from .report import TEMP_SUFFIX

LOCK_NAME = ".nondeep.lock"

try:
    import fcntl
except ImportError:  # not POSIX: the PID check alone
    fcntl = None  # type: ignore[assignment]


class RunFolderError(NondeepError):
    """A run folder in use by another run, or holding files nondeep did not write."""


def check_folder_is_ours(out: Path, force: bool = False) -> None:
    """Refuse an existing, non-empty `out` that no nondeep run ever locked (its files are the user's),
    unless `force`."""
    if force or not out.is_dir() or (out / LOCK_NAME).exists():
        return
    foreign = sorted(p.name for p in out.iterdir() if not p.name.endswith(TEMP_SUFFIX))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunFolderError(f"{out} holds files nondeep did not write ({shown}): choose another --out, or pass "
                             f"--force to write the run there (files of the same names are replaced)")


class RunLock:
    """Holds `<out>/.nondeep.lock` from acquire() to release() (or the end of a `with` block)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise RunFolderError naming the PID of the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not self._lock(fd):
                raise RunFolderError(self._busy_message())
            holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": dt.datetime.now().isoformat(timespec="seconds")})
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode() + b"\n", 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                # ENOLCK and the like: a file system without flock, fall back to the PID
        holder = self._holder()
        return not (holder and holder.get("host") == socket.gethostname() and _alive(holder.get("pid")))

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _busy_message(self) -> str:
        holder = self._holder() or {}
        who = f"PID {holder.get('pid', '?')}" + (f" on {holder['host']}" if holder.get("host") else "")
        since = f", started {holder['started']}" if holder.get("started") else ""
        return (f"{self.path.parent} is being written by another nondeep run ({who}{since}): wait for it to "
                f"end, or choose another --out")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays as the folder's mark
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
