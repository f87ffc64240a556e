"""One driver per experiment: an exclusive lock a search holds while it trains into an MLflow experiment.

For a SQLite store the lock is `flock` on a small file beside the store (a tracking server's lock is a claim
on the server itself: `tracking.server_lock`): the kernel releases it when the holding process ends, however it
ends (a SIGKILLed driver leaves no stale lock), and Linux maps it onto POSIX locks on NFS, so drivers on
different hosts that share the folder see each other too. The file records its holder (host, pid,
start time, command) for the message the next driver prints; its contents are never trusted for the
decision, only the kernel's lock is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from raycredit.config import stable_hash
from raycredit.errors import UserError


def lock_path(db: Path, experiment: str) -> Path:
    """The lock file of (SQLite store `db`, experiment), in the store's folder. The store is identified by its
    folder's device and inode and its file name, so every spelling of it (a symlinked folder, a relative or
    absolute path, the README's `--tracking-uri sqlite:///$PWD/...` beside the default) takes one lock; a lock
    file's own path is the resolved folder's."""
    folder = db.parent.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    st = folder.stat()
    return folder / f".raycredit-{stable_hash([st.st_dev, st.st_ino, db.name, experiment])}.lock"


@contextlib.contextmanager
def experiment_lock(path: Path, experiment: str) -> Iterator[None]:
    """Hold the lock at `path` for the body, or raise UserError naming the driver that holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another driver is training into experiment {experiment!r} ({holder(path)}); wait "
                            "for it to finish, or stop it, then run this command again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def owner() -> dict:
    """This driver, as a lock records it."""
    from raycredit.tracking.store import redact

    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": redact(" ".join(sys.argv))[:500]}  # a tracking URI's password stays in this process


def holder(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
