"""Round two of the faults a shared cluster produces (issue #29), at unit level: one lock per store whatever its
spelling, no secret in what a driver writes, no symlink followed."""

import subprocess
import sys
from pathlib import Path

import pytest

from raycredit import locks
from raycredit.errors import UserError


def test_every_spelling_of_a_sqlite_store_takes_one_lock(tmp_path, monkeypatch):
    """The store's folder reached through a symlink, a relative path and an absolute one: one lock file, and a
    second driver is refused whichever spelling it uses."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    spellings = [real / "mlflow.db", tmp_path / "link" / "mlflow.db", Path("link/mlflow.db"), Path("real/mlflow.db")]
    paths = {locks.lock_path(p, "exp") for p in spellings}
    assert len(paths) == 1 and next(iter(paths)).parent == real
    assert locks.lock_path(real / "other.db", "exp") not in paths
    assert locks.lock_path(real / "mlflow.db", "x") not in paths
    with locks.experiment_lock(locks.lock_path(spellings[0], "exp"), "exp"):
        for p in spellings[1:]:
            with pytest.raises(UserError, match="another driver is training into experiment 'exp'"):
                with locks.experiment_lock(locks.lock_path(p, "exp"), "exp"):
                    pass


def test_a_lock_records_its_command_without_the_uri_password(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["both_fail_scan.py", "--tracking-uri", "http://alice:s3cret@10.0.0.1:5000"])
    command = locks.owner()["command"]
    assert "s3cret" not in command and "alice" not in command and "http://***@10.0.0.1:5000" in command


def test_the_git_remote_tag_carries_no_token(monkeypatch):
    from raycredit import search

    def fake_git(argv, **kw):
        out = "https://bob:ghp_TOKEN123@github.example/lab/raycredit.git" if "remote.origin.url" in argv else "x"
        return subprocess.CompletedProcess(argv, 0, stdout=out, stderr="")

    monkeypatch.setattr(search.subprocess, "run", fake_git)
    tags = search.source_tags("both_fail_scan")
    url = tags["mlflow.source.git.repoURL"]
    assert "ghp_TOKEN123" not in url and "bob" not in url and url.endswith("@github.example/lab/raycredit.git")


def victim(tmp_path: Path) -> Path:
    """Another user's file, as far as a sweep is concerned: its content must never change."""
    v = tmp_path / "someone_else" / "precious.txt"
    v.parent.mkdir()
    v.write_text("theirs")
    return v


def test_writing_a_checkpoint_never_goes_through_a_planted_symlink(tmp_path):
    """A symlink planted as the old temporary name and another as the checkpoint itself: the write creates its
    own temporary file and replaces the link, and the files they point to are untouched."""
    import torch

    from raycredit.checkpoint import save_checkpoint

    v = victim(tmp_path)
    folder = tmp_path / "trial"
    folder.mkdir()
    (folder / "checkpoint.pt.tmp").symlink_to(v)
    (folder / "checkpoint.pt").symlink_to(v)
    save_checkpoint({"format": 1, "x": torch.ones(2)}, folder / "checkpoint.pt")
    assert v.read_text() == "theirs"
    assert not (folder / "checkpoint.pt").is_symlink()
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["x"].tolist() == [1.0, 1.0]


def test_a_symlinked_checkpoint_or_trial_folder_is_set_aside_not_used(tmp_path, capsys):
    import os

    from raycredit.engine.trainable import own_folder, read_checkpoint

    v = victim(tmp_path)
    root = tmp_path / "checkpoints"
    folder = root / "trialkey"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").symlink_to(v)
    assert read_checkpoint(folder / "checkpoint.pt", "trialkey", []) == {}
    out = capsys.readouterr().out
    assert "is a symbolic link" in out and "set aside" in out and out.count("\n") == 1
    assert not os.path.lexists(folder / "checkpoint.pt") and v.read_text() == "theirs"

    planted = root / "other"
    planted.symlink_to(v.parent)
    own_folder(planted)
    assert planted.is_dir() and not planted.is_symlink() and sorted(os.listdir(v.parent)) == ["precious.txt"]
    assert "was a symbolic link" in capsys.readouterr().out


def test_another_users_checkpoint_is_refused(tmp_path, monkeypatch):
    import os

    from raycredit.checkpoint import check_own_file

    f = tmp_path / "checkpoint.pt"
    f.write_bytes(b"x")
    check_own_file(f)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(f).st_uid + 1)
    with pytest.raises(UserError, match="belongs to another user"):
        check_own_file(f)
