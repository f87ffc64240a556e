"""Ctrl-C, pressed any number of times, ends a search cleanly: exit 130, the resume hint, no traceback, no run
left RUNNING. The search runs as a process with its own local Ray instance, as a user starts it."""

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
