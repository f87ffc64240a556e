"""Disk space and writability: checked before a sweep, and named when a write fails during one."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from raycredit.errors import UserError

# Free space a sweep needs on the filesystems of --storage and of a SQLite tracking store before it starts,
# in bytes: Tune's state and a few trials' checkpoints of the small models a first sweep uses. Larger sweeps
# need more; a disk that fills during a sweep fails the trials that cannot write, with the reason (DiskFull).
MIN_FREE = 64 * 2**20
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """A write failed because the filesystem (or the user's quota) is full; the message names the path and
    the free space."""

    def __str__(self) -> str:
        return self.strerror


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists."""
    while not path.exists():
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing(path)).free


def check_writable(path: Path, flag: str) -> None:
    """UserError unless `path` is, or can be created as, a writable folder on a filesystem with MIN_FREE bytes
    free (nothing is created here)."""
    found = existing(path)
    if not found.is_dir():
        raise UserError(f"{flag}: cannot create {path}: {found} is not a folder")
    if not os.access(found, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: cannot write to {found}")
    free = free_bytes(found)
    if free < MIN_FREE:
        raise UserError(f"{flag}: {found} has {human(free)} free (a sweep needs at least {human(MIN_FREE)}); "
                        "free some space or choose another folder")


def check_writable_file(path: Path, flag: str) -> None:
    """UserError when the file `path` exists but this user cannot write to it."""
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag}: cannot write to {path} (its folder is writable, the file is not); fix its "
                        "permissions or choose another store")


def full_cause(e: BaseException | None) -> BaseException | None:
    """The exception of `e`'s chain (`e`, what it was raised from or while handling) that says the disk is
    full, or None (libraries wrap the OSError: torch's writer in a RuntimeError, SQLite's "database or disk is
    full" in SQLAlchemy's)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno in FULL_ERRNOS) or "database or disk is full" in str(e):
            return e
        e = e.__cause__ or e.__context__
    return None


def is_full(e: BaseException | None) -> bool:
    return full_cause(e) is not None


def full_reason(e: BaseException) -> str:
    """What a full-disk error chain (is_full(e)) says, in one line: the OSError's, or SQLite's message."""
    cause = full_cause(e)
    if isinstance(cause, OSError):
        return str(cause) if isinstance(cause, DiskFull) else f"{cause.strerror}: {cause.filename or 'a file'}"
    return "the SQLite tracking store: database or disk is full" if cause is not None else "no space left"


def full_error(path: Path, e: BaseException) -> DiskFull:
    """The DiskFull to raise for a write to `path` that failed with `e` (is_full(e))."""
    quota = "disk quota exceeded" in str(e).lower() or getattr(e, "errno", None) == errno.EDQUOT
    what = "disk quota exceeded" if quota else "no space left"
    return DiskFull(errno.EDQUOT if quota else errno.ENOSPC,
                    f"{what} writing {path} ({human(free_bytes(path))} free on its filesystem)")


def replace_file(path: Path, write) -> None:
    """Replace `path` with what write(binary file) writes, atomically: a crash or a full disk mid-write leaves
    the previous file intact (DiskFull naming the path and the free space).

    The temporary file is created exclusively under a fresh random name (`tempfile.mkstemp`: O_EXCL, so a file
    or symlink planted in shared storage is never written through), and renaming it over `path` replaces `path`
    itself, never what a symlink there points to."""
    import tempfile

    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # a network filesystem may report a full disk only here
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_full(e):
            raise full_error(path, e) from None
        raise
