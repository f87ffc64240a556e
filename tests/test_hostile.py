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


OPEN_KEYS = """
import sys, time
from raycredit.tracking import TrialRun
uri, exp, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])
for k in range(5):
    while time.time() < t0 + k:  # both processes open key k at the same instant
        pass
    TrialRun(uri, exp, f"key{k}", run_name=f"r{k}", params={"a": 1}, tags={})
"""


def test_two_processes_opening_one_run_key_at_the_same_instant_get_one_run(tmp_path):
    import time

    from raycredit import tracking

    from mlflow_checks import runs_of

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "race")
    t0 = time.time() + 15  # after both have imported MLflow
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_KEYS, uri, exp, str(t0)], stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()[-2000:]
    assert time.time() > t0 + 4
    _, runs = runs_of(uri, "race")
    keys = sorted(r.data.tags[tracking.RUN_KEY_TAG] for r in runs)
    assert keys == [f"key{k}" for k in range(5)], keys


def test_a_store_reached_through_a_server_and_directly_is_one_lock(served_store, tmp_path):
    """Both ways round: a driver that opened the SQLite file itself (its file lock, then the claim in the
    database) and one that reaches the same file through `mlflow server` (the claim) refuse each other."""
    import contextlib

    from raycredit import tracking

    url, db = served_store
    direct = f"sqlite:///{db}"

    @contextlib.contextmanager
    def file_driver(name, holder):
        with locks.experiment_lock(locks.lock_path(db, name), name):
            tracking.ensure_experiment(direct, name)
            with tracking.server_lock(direct, name, holder):
                yield

    a, b = {"host": "a", "pid": 1, "since": "t1"}, {"host": "b", "pid": 2, "since": "t2"}
    with file_driver("both-ways", a):
        with pytest.raises(UserError, match=r"another driver is training into experiment 'both-ways' \(pid 1 on a"):
            with tracking.server_lock(url, "both-ways", b):
                pass
    with tracking.server_lock(url, "both-ways", b):
        with pytest.raises(UserError, match=r"another driver is training into experiment 'both-ways' \(pid 2 on b"):
            with file_driver("both-ways", a):
                pass
    with file_driver("both-ways", a):  # both released
        pass


HOLD_CLAIM = """
import sys, time
from raycredit import locks, tracking
with tracking.server_lock(sys.argv[1], "killed", locks.owner()):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_claim_of_a_driver_killed_on_this_machine_is_taken_over_at_once(tmp_path):
    """A SIGKILLed driver cannot release its claim; its pid is gone on this machine, so the next driver takes
    the lock at once instead of waiting for the claim to go stale (120 s) while naming a dead process."""
    import time

    from raycredit import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.ensure_experiment(uri, "killed")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, uri], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError, match=rf"pid {holder.pid} on "):
            with tracking.server_lock(uri, "killed", locks.owner()):
                pass
    finally:
        holder.kill()
        holder.wait()
    start = time.time()
    with tracking.server_lock(uri, "killed", locks.owner()):
        assert time.time() - start < 10


def test_another_users_lock_file_in_a_shared_folder_locks_and_refuses_in_one_line(tmp_path):
    """A shared store folder whose lock file another user created (mode 0644): a driver that may not write it
    still takes the lock (flock needs no write access), and is refused with one line while it is held. The
    driver is this process's user without its capabilities (`setpriv`), to which the file is another user's."""
    import os
    import shutil

    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to act as a user without access to another user's file")
    path = locks.lock_path(tmp_path / "mlflow.db", "exp")
    with locks.experiment_lock(path, "exp"):
        pass
    os.chown(path, 12345, 12345)
    code = ("import sys\nfrom pathlib import Path\nfrom raycredit import locks\nfrom raycredit.errors import "
            "UserError\np = Path(sys.argv[1])\ntry:\n    with locks.experiment_lock(p, 'exp'):\n"
            "        print('locked')\nexcept UserError as e:\n    print('refused:', e)\n")

    def unprivileged():
        return subprocess.run(["setpriv", "--bounding-set=-all", sys.executable, "-c", code, str(path)],
                              capture_output=True, text=True, timeout=60)

    free = unprivileged()
    assert free.returncode == 0 and free.stdout == "locked\n", free.stderr[-2000:]
    with locks.experiment_lock(path, "exp"):
        held = unprivileged()
    assert held.returncode == 0 and held.stdout.startswith("refused: another driver is training"), held
    assert "Traceback" not in held.stderr
