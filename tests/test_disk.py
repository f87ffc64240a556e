"""Full disks, written directly (no Ray): a checkpoint or a new tracking store that does not fit fails with the
path and the free space, and leaves nothing half-written behind."""

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raycredit import disk
from raycredit.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, mounted for the test and unmounted after it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(path: Path, leave: int) -> None:
    """Write zeros to `path` until its filesystem has fewer than `leave` bytes free."""
    with open(path, "wb") as f:
        while disk.free_bytes(path) >= leave:
            f.write(b"\0" * 4096)
            f.flush()


def test_a_checkpoint_that_does_not_fit_raises_diskfull_and_keeps_the_previous_one(small_disk):
    path = small_disk / "checkpoint.pt"
    save_checkpoint({"format": 1, "w": torch.zeros(10)}, path)
    fill(small_disk / "filler", 64 << 10)
    with pytest.raises(disk.DiskFull) as e:
        save_checkpoint({"format": 1, "w": torch.zeros(1 << 18)}, path)
    assert str(e.value).startswith(f"no space left writing {path} (") and "free on its filesystem" in str(e.value)
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(10))
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoint.pt", "filler"]


def create_store(db: Path) -> subprocess.CompletedProcess:
    """tracking.create_sqlite_store(db) in its own process (MLflow keeps stores open, and the disk must be
    unmounted after the test)."""
    code = f"from raycredit import tracking; from pathlib import Path; tracking.create_sqlite_store(Path({str(db)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_tracking_store_created_on_a_full_disk_is_not_left_half_created(small_disk):
    db = small_disk / "mlflow.db"
    fill(small_disk / "filler", 100 << 10)
    p = create_store(db)
    assert p.returncode == 1 and f"UserError: cannot create the tracking store {db}: its disk is full" in p.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    (small_disk / "filler").unlink()
    assert create_store(db).returncode == 0
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert con.execute("SELECT name FROM experiments").fetchall() == [("Default",)]
