"""Drivers as a user starts them (processes, each with its own local Ray instance): Ctrl-C pressed any number
of times ends a search cleanly, and two drivers never train into one experiment at once."""

import contextlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_checks import new_store, runs_of, wait_closed
from quiet import assert_quiet
from searches_loader import ONE_AT_A_TIME, ROOT


def wait_for_runs(uri: str, experiment: str, proc, n: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            _, runs = runs_of(uri, experiment)
        except Exception:  # the store or the experiment may not exist yet
            runs = []
        if len(runs) >= n:
            return
        assert proc.poll() is None, "the search ended before it could be interrupted"
        assert time.time() < deadline, "no run started in time"
        time.sleep(0.3)


def test_the_same_search_started_twice_at_once_trains_every_config_once(tmp_path):
    """Two identical commands within a second on one store and storage (two terminals, a retrying scheduler):
    one trains, the other refuses with one line and exit 2; every config has one FINISHED run, each epoch
    logged once. Then the same command again finds everything finished."""
    from mlflow_checks import assert_one_complete_run_per_trial

    uri = new_store(tmp_path / "mlflow.db")
    cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
           "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2", "--set", "n_train=500", "--epochs", "3",
           "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "twice", "--gpus-per-trial",
           "0", "--no-analysis", *ONE_AT_A_TIME]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    refused = next(err for p, (_, err) in zip((first, second), outs, strict=True) if p.returncode == 2)
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and "another driver is training into experiment 'twice' (pid " in lines[0], lines
    assert_one_complete_run_per_trial(uri, "twice", 4, 3)
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "all 4 runs already finished in 'twice'" in again.stdout
    assert "in the MLflow UI: `mlflow ui --backend-store-uri " in again.stdout  # where to look, as after a sweep
    assert "Ray" not in again.stdout + again.stderr  # nothing to train: nothing started
    assert_one_complete_run_per_trial(uri, "twice", 4, 3)


def test_storage_filled_mid_sweep_fails_trials_with_the_reason_and_a_rerun_completes_the_sweep(tmp_path):
    """--storage on a small tmpfs that a file fills once the first epoch is logged: the trials that cannot
    checkpoint fail with one line naming the path and the free space (no retry, nothing left RUNNING); once
    the file is deleted, the same command finishes every run, each epoch logged once."""
    from mlflow_checks import assert_one_complete_run_per_trial

    with small_disk(tmp_path / "disk") as disk:
        uri = new_store(tmp_path / "mlflow.db")
        cmd = small_sweep(uri, disk / "ray", "full")
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_runs(uri, "full", proc, 1)
        fill(disk / "filler")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, out[-2000:] + err[-3000:]
        failed = [line for line in out.splitlines() if " failed: no space left writing " in line]
        assert failed and all(str(disk / "ray") in line and "0 B free on its filesystem" in line for line in failed)
        _, runs = runs_of(uri, "full")
        assert not [r for r in runs if r.info.status == "RUNNING"]
        assert all(r.data.tags.get("raycredit.failure") for r in runs if r.info.status == "FAILED")
        (disk / "filler").unlink()
        again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
        assert_quiet(again.stdout, again.stderr)
        assert_one_complete_run_per_trial(uri, "full", 4, 6)


def test_the_stores_disk_filled_mid_sweep_fails_trials_in_one_line_each_and_a_rerun_completes(tmp_path):
    """The SQLite store on a small tmpfs that a file fills once the first epoch is logged: every trial that
    cannot write to it fails with one line naming the store and its free space, the driver ends with one line
    (exit 1), no traceback anywhere (MLflow logs each SQL error with one); once the file is deleted, the same
    command takes up the runs left RUNNING and finishes every run, each epoch logged once."""
    from mlflow_checks import assert_one_complete_run_per_trial

    with small_disk(tmp_path / "disk") as disk:
        uri = new_store(disk / "mlflow.db")
        cmd = small_sweep(uri, tmp_path / "ray", "storefull")
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_runs(uri, "storefull", proc, 1)
        fill(disk / "filler")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, out[-2000:] + err[-3000:]
        assert "Traceback" not in out + err, (out + err)[-5000:]
        failed = [line for line in out.splitlines() if " failed: " in line]
        # the free space as the trial saw it: a few KiB may come free again (a journal deleted) before it looks
        assert failed and all(re.search(rf"no space left writing {re.escape(str(disk / 'mlflow.db'))} \([\d.]+ "
                                        r"(B|KiB) free on its filesystem\)", line) for line in failed), failed
        last = [line for line in err.splitlines() if "error:" in line]
        assert len(last) == 1 and "a disk filled up during the sweep" in last[0], err[-3000:]
        (disk / "filler").unlink()
        again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
        assert_quiet(again.stdout, again.stderr)
        assert_one_complete_run_per_trial(uri, "storefull", 4, 6)


@contextlib.contextmanager
def small_disk(path: Path):
    """An 80 MiB tmpfs mounted at `path` for the body (skipped where it cannot be mounted), then unmounted
    (lazily: this process's MLflow client may keep a store on it open)."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def small_sweep(uri: str, storage: Path, experiment: str) -> list[str]:
    """The smoke scan shrunk to 4 trials of 6 short epochs, as a command."""
    return [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
            "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2", "--set", "n_train=500", "--epochs", "6",
            "--tracking-uri", uri, "--storage", str(storage), "--experiment", experiment, "--gpus-per-trial", "0",
            "--no-analysis", *ONE_AT_A_TIME]


def fill(path: Path) -> None:
    """Write zeros to `path` until its filesystem is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass


def test_a_store_reached_through_a_server_and_directly_has_one_driver(served_store, tmp_path):
    """The README's `mlflow server` on a SQLite file in one terminal, the file itself in another: whichever
    driver starts first trains, the other exits 2 with one line naming it, both ways round."""
    from mlflow.tracking import MlflowClient

    from raycredit import tracking

    url, db = served_store

    def cmd(uri, experiment, storage):
        return [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
                "--set", "credit_norm=true", "--epochs", "40", "--tracking-uri", uri, "--storage",
                str(tmp_path / storage), "--experiment", experiment, "--gpus-per-trial", "0", "--no-analysis",
                *ONE_AT_A_TIME]

    def claimed(experiment):
        prefix = tracking.lock_prefix(experiment)
        models = MlflowClient(url).search_registered_models(filter_string=f"name LIKE '{prefix}%'")
        return any(m.tags.get("state") == "held" for m in models)

    for experiment, first, second in (("via-server", url, f"sqlite:///{db}"), ("via-file", f"sqlite:///{db}", url)):
        holder = subprocess.Popen(cmd(first, experiment, "a"), cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 240
            while not claimed(experiment):
                assert holder.poll() is None and time.time() < deadline, holder.communicate()[1][-3000:]
                time.sleep(0.3)
            refused = subprocess.run(cmd(second, experiment, "b"), cwd=tmp_path, capture_output=True, text=True,
                                     timeout=300)
            lines = refused.stderr.strip().splitlines()
            assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
            assert f"another driver is training into experiment '{experiment}' (pid {holder.pid} on " in lines[0]
            assert "Traceback" not in refused.stdout and "runs, MLflow experiment" not in refused.stdout
            assert not list((tmp_path / "b").glob("*/checkpoints/*"))  # it started no trial
        finally:
            holder.send_signal(signal.SIGINT)
            holder.communicate(timeout=180)
        assert holder.returncode in (0, 130)


def test_a_store_rolled_back_to_an_older_copy_is_refused_naming_what_is_missing(tmp_path):
    """A backup of the store taken mid-sweep, restored after the driver was killed (its trials' checkpoints are
    epochs ahead of it), and again after the sweep finished (its record of its runs is ahead of it): each re-run
    exits 2 with one line saying the store is an older copy, instead of resuming histories with holes."""
    import os
    import sqlite3

    import psutil

    from mlflow_checks import assert_one_complete_run_per_trial

    db = tmp_path / "m.db"
    uri = new_store(db)
    cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
           "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2", "--set", "n_train=500", "--epochs", "15",
           "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "rolled", "--gpus-per-trial",
           "0", "--no-analysis", *ONE_AT_A_TIME]

    def logged() -> int:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                return int(con.execute("SELECT MAX(value) FROM metrics WHERE key = 'epoch'").fetchone()[0] or 0)
        except sqlite3.Error:
            return 0

    def copy(src: Path, dst: Path) -> None:
        for f in dst.parent.glob(dst.name + "*"):
            f.unlink()
        with contextlib.closing(sqlite3.connect(src)) as a, contextlib.closing(sqlite3.connect(dst)) as b:
            a.backup(b)

    def refused() -> str:
        p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "older copy" in lines[0], p.stderr[-3000:]
        return lines[0]

    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while logged() < 1:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    copy(db, tmp_path / "backup.db")
    backed_up = logged()
    while logged() < backed_up + 3:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    # the driver with everything it started: its Ray workers are not in its process group, and one left to end
    # on its own once its raylet is gone (up to a second or more) could finish its trial's last epochs and
    # remove its checkpoint, leaving nothing ahead of the backup for the re-run to find
    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.communicate()
    wait_closed(db)
    assert list((tmp_path / "ray").glob("*/checkpoints/*/checkpoint.pt"))  # the premise: a trial was cut mid-way
    copy(db, tmp_path / "current.db")
    copy(tmp_path / "backup.db", db)
    line = refused()
    assert "fewer epochs" in line or "not in" in line, line
    copy(tmp_path / "current.db", db)
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_quiet(done.stdout, done.stderr)
    assert_one_complete_run_per_trial(uri, "rolled", 4, 15)
    assert not list((tmp_path / "ray").glob("*/checkpoints/*/checkpoint.pt"))  # only the record is left
    copy(tmp_path / "backup.db", db)
    refused()


def test_ctrl_c_at_any_moment_any_number_of_times_ends_in_a_few_lines_and_v_resumes():
    """Ctrl-C while the local Ray instance is starting: the search stops with the resume hint once Ray is up (an
    interrupted start would leave processes nothing stops). Then, in the running sweep, Ctrl-C twice within
    0.5 s and twice more once "stopping the local Ray instance" is printed: ignored, no traceback. Each ends
    with exit 130, raycredit's hint and none of Tune's `Tuner.restore` advice, FileNotFoundError lines or status
    tables, in at most 12 lines; none of that instance's processes is left and no run is left RUNNING. The
    same command with -v resumes the sweep, shows Tune's tables, still without those lines, and finishes."""
    import os
    import shutil
    import tempfile
    import threading

    root = Path(tempfile.mkdtemp(prefix="rcc"))  # short: Ray's socket paths live under RAY_TMPDIR
    env = {**os.environ, "RAY_TMPDIR": str(root / "rt")}
    (root / "rt").mkdir()
    uri = new_store(root / "m.db")
    cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
           "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2", "--set", "n_train=500", "--epochs", "3",
           "--tracking-uri", uri, "--storage", str(root / "ray"), "--experiment",
           "ctrlc", "--gpus-per-trial", "0", "--no-analysis", *ONE_AT_A_TIME]

    def ours() -> list[int]:
        """Processes of this test's Ray instances (their command lines name RAY_TMPDIR)."""
        found = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and int(p.name) != os.getpid() and str(root / "rt").encode() in (
                        p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                continue
        return found

    def run(press) -> tuple[int, str, str]:
        with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as proc:
            out: list[str] = []
            reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
            reader.start()
            press(proc, out)
            err = proc.stderr.read()
            proc.wait(timeout=300)
            reader.join(timeout=30)
        return proc.returncode, "".join(out), err

    def while_starting(proc, out):
        deadline = time.time() + 120
        while not list((root / "rt").glob("ray/session_*")):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)

    def while_running_and_stopping(proc, out):
        wait_for_runs(uri, "ctrlc", proc, 1)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        deadline = time.time() + 120
        while not any("stopping the local Ray instance" in line for line in out):
            assert time.time() < deadline, out
            time.sleep(0.05)
        for _ in range(2):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)

    try:
        for press in (while_starting, while_running_and_stopping):
            code, out, err = run(press)
            text = out + err
            assert code in (130, -signal.SIGINT), (press.__name__, code, err[-3000:])  # -2: a press while exiting
            for noise in ("Traceback", "Tuner.restore", "FileNotFoundError", "== Status ==", "Result logdir",
                          "Token authentication"):
                assert noise not in text, (press.__name__, noise, text[-3000:])
            assert "re-run the same command to resume" in text and len(text.splitlines()) <= 12, (press.__name__,
                                                                                                 text)
            deadline = time.time() + 20
            while ours() and time.time() < deadline:
                time.sleep(0.5)
            assert not ours(), (press.__name__, ours())
        _, runs = runs_of(uri, "ctrlc")
        assert runs and not [r for r in runs if r.info.status == "RUNNING"]
        again = subprocess.run([*cmd, "-v"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
        assert "== Status ==" in again.stdout and "resuming sweep in" in again.stdout
        assert "Tuner.restore" not in again.stdout + again.stderr and "FileNotFoundError" not in again.stderr
        from mlflow_checks import assert_one_complete_run_per_trial

        assert_one_complete_run_per_trial(uri, "ctrlc", 4, 3)
    finally:
        shutil.rmtree(root, ignore_errors=True)
