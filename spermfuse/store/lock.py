"""One writer at a time: an exclusive lock file in a folder (docs/GUARANTEES.md, rule 3).

The lock is a file created with ``O_EXCL`` that names its holder (pid, host, start time).
A second process refuses with one line naming the holder. A lock whose holder is a dead
process of this machine is stale (a kill -9 leaves it) and is taken over; a lock held on
another machine is never guessed dead: the message says which file to delete.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ..core.errors import SpermfuseError

LOCK_NAME = ".spermfuse.lock"


class LockError(SpermfuseError):
    """The folder is in use by another process; the message names it and the way out."""


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class FolderLock:
    """``with FolderLock(folder, what):`` holds ``folder/.spermfuse.lock`` for the block.

    ``what`` names the work in the refusal ("training", "the data cache", ...).
    """

    def __init__(self, folder: Path, what: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.held = False

    def acquire(self) -> None:
        """Take the lock, removing a stale one (its holder on this host has died); LockError while
        another process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _holder(self.path)
                if self._is_stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockError(
                    f"{self.folder}: in use for {self.what} by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                    f"since {holder.get('since', '?')}; wait for it to finish, or delete {self.path} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle)
            self.held = True
            return
        raise LockError(f"{self.path}: could not take the lock (another process keeps taking it); try again")

    def _is_stale(self, holder: dict) -> bool:
        if not holder:  # written but not yet filled by its creator, or unreadable: give it a moment
            time.sleep(0.2)
            try:
                return not _holder(self.path) and time.time() - self.path.stat().st_mtime > 5
            except FileNotFoundError:  # released meanwhile: try again
                return True
        return (
            holder.get("host") == socket.gethostname()
            and isinstance(holder.get("pid"), int)
            and not process_alive(holder["pid"])
        )

    def release(self) -> None:
        """Give the lock back (nothing when it is not held)."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.release()
