"""Drivers as a user starts them (processes, each with its own local Ray instance): Ctrl-C pressed any number
of times ends a search cleanly, and two drivers never train into one experiment at once."""

import signal
import subprocess
import sys
import time

from mlflow_checks import runs_of
from searches_loader import ROOT


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


def test_double_ctrl_c_exits_130_without_traceback_and_leaves_nothing_running(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
           "--set", "credit_norm=true", "--epochs", "40", "--tracking-uri", uri, "--storage", str(tmp_path / "ray"),
           "--experiment", "ctrlc", "--gpus-per-trial", "0"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_runs(uri, "ctrlc", proc, 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert "re-run the same command to resume" in out + err
    _, runs = runs_of(uri, "ctrlc")
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def test_the_same_search_started_twice_at_once_trains_every_config_once(tmp_path):
    """Two identical commands within a second on one store and storage (two terminals, a retrying scheduler):
    one trains, the other refuses with one line and exit 2; every config has one FINISHED run, each epoch
    logged once. Then the same command again finds everything finished."""
    from mlflow_checks import assert_one_complete_run_per_trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
           "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2", "--set", "n_train=500", "--epochs", "3",
           "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "twice", "--gpus-per-trial",
           "0", "--no-analysis"]
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
    assert again.returncode == 0 and "4 of these configs already have a finished run" in again.stdout
    assert_one_complete_run_per_trial(uri, "twice", 4, 3)
