"""Round two of the faults a shared cluster produces (issue #29), at unit level: one lock per store whatever its
spelling, no secret in what a driver writes, no symlink followed."""

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from raycredit import locks
from raycredit.errors import UserError

from mlflow_checks import new_store


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
    from raycredit.tracking import provenance

    def fake_git(argv, **kw):
        out = "https://bob:ghp_TOKEN123@github.example/lab/raycredit.git" if "remote.origin.url" in argv else "x"
        return subprocess.CompletedProcess(argv, 0, stdout=out, stderr="")

    monkeypatch.setattr(provenance.subprocess, "run", fake_git)
    tags = provenance.source_tags("both_fail_scan")
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

    from raycredit.engine.trialfile import own_folder, read_checkpoint
    from raycredit.storage import Place

    v = victim(tmp_path)
    root = tmp_path / "checkpoints"
    folder = root / "trialkey"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").symlink_to(v)
    assert read_checkpoint(Place.of(folder / "checkpoint.pt"), "trialkey", []) == {}
    out = capsys.readouterr().out
    assert "is a symbolic link" in out and "set aside" in out and out.count("\n") == 1
    assert not os.path.lexists(folder / "checkpoint.pt") and v.read_text() == "theirs"

    planted = root / "other"
    planted.symlink_to(v.parent)
    own_folder(Place.of(planted))
    assert planted.is_dir() and not planted.is_symlink() and sorted(os.listdir(v.parent)) == ["precious.txt"]
    assert "was a symbolic link" in capsys.readouterr().out


def test_another_users_checkpoint_is_refused(tmp_path, monkeypatch):
    import os

    from raycredit.storage import check_own_file

    f = tmp_path / "checkpoint.pt"
    f.write_bytes(b"x")
    check_own_file(f)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(f).st_uid + 1)
    with pytest.raises(UserError, match="belongs to another user"):
        check_own_file(f)


OPEN_KEYS = """
import sys, time
from mlflow.tracking import MlflowClient
from raycredit.tracking import TrialRun
from raycredit.tracking.client import get_client
uri, exp = sys.argv[1], sys.argv[2]
get_client(uri).search_runs([exp])  # the store opened: each key's lookup and creation take milliseconds
create = MlflowClient.create_run
def slow_create(self, *a, **k):  # a busy store: 0.3 s between a lookup's answer and the creation it decided
    time.sleep(0.3)
    return create(self, *a, **k)
MlflowClient.create_run = slow_create
print("ready", flush=True)
t0 = float(sys.stdin.readline())
for k in range(5):
    while time.time() < t0 + k:  # both processes open key k at the same instant
        pass
    TrialRun(uri, exp, f"key{k}", run_name=f"r{k}", params={"a": 1}, tags={})
"""


@pytest.mark.system
def test_two_processes_opening_one_run_key_at_the_same_instant_get_one_run(tmp_path):
    import time

    from raycredit import tracking

    from mlflow_checks import runs_of

    uri = new_store(tmp_path / "mlflow.db")
    exp = tracking.ensure_experiment(uri, "race")
    with contextlib.ExitStack() as running:  # each process waited for, its pipes closed
        procs = [running.enter_context(subprocess.Popen(
            [sys.executable, "-c", OPEN_KEYS, uri, exp], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)) for _ in range(2)]
        for p in procs:  # both have imported MLflow
            assert p.stdout.readline() == "ready\n", p.stderr.read()[-2000:]
        t0 = time.time() + 0.5
        for p in procs:
            p.stdin.write(f"{t0}\n")
            p.stdin.flush()
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read()[-2000:]
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


@pytest.mark.system
def test_the_claim_of_a_driver_killed_on_this_machine_is_taken_over_at_once(tmp_path):
    """A SIGKILLed driver cannot release its claim; its pid is gone on this machine, so the next driver takes
    the lock at once instead of waiting for the claim to go stale (120 s) while naming a dead process."""
    import time

    from raycredit import tracking

    uri = new_store(tmp_path / "mlflow.db")
    tracking.ensure_experiment(uri, "killed")
    with subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, uri], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline() == "held\n"
            with pytest.raises(UserError, match=rf"pid {holder.pid} on "):
                with tracking.server_lock(uri, "killed", locks.owner()):
                    pass
        finally:
            holder.kill()
    start = time.time()
    with tracking.server_lock(uri, "killed", locks.owner()):
        assert time.time() - start < 10


@pytest.mark.system
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


@pytest.mark.system
def test_no_planted_secret_leaves_a_sweep_even_through_a_tracking_server_outage():
    """A URI password, a git remote's token, AWS keys and a GitHub token planted where a user has them; the
    tracking server stops answering for 10 s mid-sweep (MLflow's messages quote the URL of every failed
    request). None of them is in the driver's output, any file of the Ray session (its logs), the sweep's
    storage, the report, or the store's database (runs' tags and params) and artifacts."""
    import os
    import shutil
    import signal
    import sqlite3
    import tempfile
    import time

    from ports import free_port, server
    from searches_loader import ONE_AT_A_TIME, ROOT

    secrets = {"password": "PWPLANTED0d1", "git": "ghpPLANTED2e3", "aws_id": "AKIAPLANTED4f5",
               "aws_key": "AWSPLANTED6a7", "github": "GHTOKENPLANTED8b9"}
    root = Path(tempfile.mkdtemp(prefix="rcs"))  # short: Ray's socket paths live under RAY_TMPDIR
    try:
        port = free_port()
        db = root / "srv.db"
        with server([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                     "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(root / "art"),
                     "--workers", "1"], port, root / "srv.log") as srv:
            env = {**os.environ, "RAY_TMPDIR": str(root / "rt"), "AWS_ACCESS_KEY_ID": secrets["aws_id"],
                   "AWS_SECRET_ACCESS_KEY": secrets["aws_key"], "GITHUB_TOKEN": secrets["github"],
                   "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "remote.origin.url",
                   "GIT_CONFIG_VALUE_0": f"https://bob:{secrets['git']}@github.example/lab/raycredit.git",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
            (root / "rt").mkdir()
            uri = f"http://alice:{secrets['password']}@127.0.0.1:{port}"
            cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds",
                   "0", "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2", "--set", "n_train=500",
                   "--epochs", "6", "--tracking-uri", uri, "--storage", str(root / "ray"), "--out",
                   str(root / "report"), "--experiment", "secrets", "--gpus-per-trial", "0", "--max-failures", "4",
                   *ONE_AT_A_TIME]
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            deadline = time.time() + 240
            while True:  # the outage starts once a trial has logged an epoch
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                        if con.execute("SELECT COUNT(*) FROM metrics WHERE key = 'epoch'").fetchone()[0]:
                            break
                except sqlite3.Error:
                    pass
                assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
                time.sleep(0.2)
            os.killpg(srv.pid, signal.SIGSTOP)
            time.sleep(10)
            os.killpg(srv.pid, signal.SIGCONT)
            out, err = proc.communicate(timeout=400)
        assert proc.returncode in (0, 1), err[-3000:]
        assert "127.0.0.1" in out + err  # the sweep said where its store is
        leaks = [f"driver output: {name}" for name, s in secrets.items() if s in out + err]
        for folder in ("rt", "ray", "report", "art"):
            for f in (root / folder).rglob("*"):
                if f.is_file() and not f.is_symlink():
                    data = f.read_bytes()
                    leaks += [f"{f.relative_to(root)}: {name}" for name, s in secrets.items() if s.encode() in data]
        for f in root.glob("srv.db*"):
            data = f.read_bytes()
            leaks += [f"{f.name}: {name}" for name, s in secrets.items() if s.encode() in data]
        assert not leaks, leaks
        with sqlite3.connect(db) as con:  # the runs are there, with their source tags
            urls = con.execute("SELECT value FROM tags WHERE key = 'mlflow.source.git.repoURL'").fetchall()
        assert urls and {u for (u,) in urls} == {"https://***@github.example/lab/raycredit.git"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_uri_password_reaches_mlflow_as_its_basic_auth_not_in_its_messages(monkeypatch):
    """MLflow quotes the URL of a failed request; the URL it gets has no credentials, which it sends as the same
    basic auth from its own variables."""
    from mlflow.exceptions import MlflowException

    from raycredit.tracking.client import get_client

    from ports import free_port

    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
              "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()  # nothing listens there: an outage
    client = get_client(f"http://alice:p%40ss-PLANTED@127.0.0.1:{port}")
    assert client.tracking_uri == f"http://127.0.0.1:{port}"
    creds = client._tracking_client.store.get_host_creds()
    assert (creds.username, creds.password) == ("alice", "p@ss-PLANTED")
    with pytest.raises(MlflowException) as e:
        client.get_experiment_by_name("x")
    assert f"127.0.0.1:{port}" in str(e.value) and "PLANTED" not in str(e.value) and "alice" not in str(e.value)


def test_a_local_ray_instance_starts_without_secrets_a_trial_does_not_need(monkeypatch):
    import os

    from raycredit.engine.cluster import worker_environment

    planted = {"GITHUB_TOKEN": "g", "HF_TOKEN": "h", "DB_PASSWORD": "d", "OPENAI_API_KEY": "o"}
    needed = {"AWS_SECRET_ACCESS_KEY": "a", "MLFLOW_TRACKING_PASSWORD": "m", "RAY_AUTH_TOKEN": "r", "HOME": "/x"}
    for k, v in {**planted, **needed}.items():
        monkeypatch.setenv(k, v)
    with worker_environment():
        assert not set(planted) & set(os.environ)
        assert all(os.environ[k] == v for k, v in needed.items())
    assert all(os.environ[k] == v for k, v in {**planted, **needed}.items())


def test_a_lock_holder_still_writing_its_record_is_named_not_unknown(tmp_path):
    """The second of two drivers started at once may find the lock taken and its record not yet written: it
    reads it again for a moment, so its one line names the holder."""
    import json
    import threading

    from raycredit import locks

    path = tmp_path / "x.lock"
    path.write_text("")
    record = {"pid": 4242, "host": "h", "since": "2026-01-01 00:00:00"}
    threading.Timer(0.2, lambda: path.write_text(json.dumps(record))).start()
    assert locks.holder(path) == "pid 4242 on h, since 2026-01-01 00:00:00"
    path.write_text("{")
    assert locks.holder(path, wait_s=0.1) == "holder unknown"
