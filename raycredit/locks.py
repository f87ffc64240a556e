"""One driver per experiment: an exclusive lock a search holds while it trains into an MLflow experiment.

Every store holds the lock as a claim in its own database (`tracking.server_lock`): a driver that reaches a
SQLite store directly and one that reaches the same file through `mlflow server` see each other's claim. A
SQLite store's drivers also take `flock` on a small file in the store's folder, first: the kernel releases it
when the holding process ends, however it ends, so a second launch is refused in an instant and a SIGKILLed
driver leaves nothing stale, and Linux maps it onto POSIX locks on NFS, so drivers on different hosts that
share the folder see each other too. The file records its holder (host, pid, start time, command) for the
message the next driver prints; its contents are never trusted for the decision, only the kernel's lock is.
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

from raycredit.errors import UserError
from raycredit.knobs import stable_hash


def lock_path(db: Path, experiment: str) -> Path:
    """The lock file of (SQLite store `db`, experiment): in the store's own folder, named after the database's
    file name and the experiment only, so every spelling of the store (a symlinked or bind-mounted folder, a
    relative or absolute path, the README's `--tracking-uri sqlite:///$PWD/...` beside the default, another
    host's NFS mount) names one file."""
    folder = db.parent.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".raycredit-{stable_hash([db.name, experiment])}.lock"


@contextlib.contextmanager
def store_mutex(uri: str) -> Iterator[None]:
    """For a SQLite store, hold an exclusive `flock` on a file in its folder for the body (waiting for it), so
    that a lookup and the creation that follows it (a run key's run) are one step across processes and, on NFS,
    hosts; nothing for a tracking server, where only the experiment's lock holder opens runs."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    path = db.parent.resolve() / f".raycredit-{stable_hash([db.name])}.runs.lock"
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except PermissionError:  # another user's file in a shared folder: flock needs no write access
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:  # ELOOP: a symlink planted in its place
        raise UserError(f"cannot open the store's lock file {path} ({e.strerror}): remove it if no driver is "
                        "running") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def experiment_lock(path: Path, experiment: str) -> Iterator[None]:
    """Hold the lock at `path` for the body, or raise UserError naming the driver that holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        writable = True
    except PermissionError:  # another user's lock file in a shared folder: flock needs no write access
        writable = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise UserError(f"cannot open the experiment's lock file {path} ({e.strerror}; owner uid "
                            f"{path.lstat().st_uid}): make it readable for this user, or use another "
                            "--tracking-uri folder") from None
    except OSError as e:  # ELOOP: a symlink planted in its place
        raise UserError(f"cannot open the experiment's lock file {path} ({e.strerror}): remove it if no "
                        "driver is running") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another driver is training into experiment {experiment!r} ({holder(path)}); wait "
                            "for it to finish, or stop it, then run this command again") from None
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def owner() -> dict:
    """This driver, as a lock records it."""
    from raycredit.tracking.store import redact

    return {"host": socket.gethostname(), "boot": boot_id(), "pid": os.getpid(),
            "pid_start": process_start(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": redact(" ".join(sys.argv))[:500]}  # a tracking URI's password stays in this process


def boot_id() -> str:
    """This machine's current boot (Linux); '' where there is none to read."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """When process `pid` started, in clock ticks since boot (Linux: tells a reused pid apart); '' when there is
    no such process or nothing to read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def dead_here(holder: dict) -> bool:
    """Whether a lock's `holder` (as `owner` records it) is a process of this machine's current boot that has
    ended: its pid is gone or now names a later process. A holder on another machine is never called dead."""
    boot = boot_id()
    if not boot or holder.get("boot") != boot or holder.get("host") != socket.gethostname():
        return False
    try:
        return process_start(int(holder["pid"])) != str(holder.get("pid_start", ""))
    except (KeyError, ValueError, TypeError):
        return False


def holder(path: Path, wait_s: float = 1.0) -> str:
    """Who holds the lock at `path`, as its holder wrote it. The holder writes itself just after it takes the
    lock, so an empty or partial record is read again for up to `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            owner = json.loads(path.read_text())
            return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "holder unknown"
            time.sleep(0.05)
