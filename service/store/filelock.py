"""An exclusive lock on a file that says who holds it and goes away when it is released.

Used for a launch's lock beside a SQLite store and in a sweep's storage folder: the kernel drops
the `flock` of a killed process, the file names the holder for the one who is refused, and the
file is removed on release so that no `.lock` file stays behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from bnsweep.store.errors import StoreFailure


def holder_line() -> str:
    """Who this process is, as a lock's holder: host, pid and since when (UTC)."""
    since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"host {socket.gethostname()} pid {os.getpid()} since {since}"


def read_holder(path: Path) -> str | None:
    """The holder written into the lock file at `path`, if any (None when there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text.splitlines()[0][:300] if text else None


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock file at `path` (without creating it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def held_file_lock(path: Path, busy: Callable[[str], BaseException]) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if need be) with `holder_line()` written in
    it, or raise `busy(holder)` at once when another process holds it.

    On release the file is unlinked while the lock is still held. A process that opened the
    file before the unlink may then lock the unlinked file, which guards nothing: after taking
    the lock, the path must still name the file locked, else it is tried again."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StoreFailure(
                f"cannot create the lock file {path}: {err.strerror or err}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy(read_holder(path) or "another process") from None
        if _same_file(fd, path):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder_line()}\n".encode(), 0)
        yield
    finally:
        if _same_file(fd, path):
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
