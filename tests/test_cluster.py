"""A real `ray start --head` cluster on 127.0.0.1: the smoke scan with --address auto, and a driver killed mid-sweep.

The fixture starts `ray start --head --block` and stops exactly that cluster by
sending SIGTERM to the process it started (never `ray stop`).
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_checks import assert_one_complete_run_per_trial, runs_of

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TRIALS, SMOKE_EPOCHS = 16, 8  # smoke preset with --seeds 0: 4 rules x 2 d x 2 L


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = open(tmp_path_factory.mktemp("head") / "ray_start.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
    time.sleep(3)  # the raylet registers shortly after the GCS port opens
    yield address
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def scan_cmd(tmp: Path, experiment: str):
    return [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
            "--address", "auto", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--storage", str(tmp / "ray"),
            "--experiment", experiment, "--out", str(tmp / "reports")]


def run_env(address: str) -> dict:
    return {**os.environ, "RAY_ADDRESS": address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_smoke_scan_against_a_running_cluster(head, tmp_path):
    p = subprocess.run(scan_cmd(tmp_path, "smoke"), cwd=tmp_path, env=run_env(head), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "notice: the Ray cluster has no GPUs" in p.stdout
    assert "d=128 L=4:" in p.stdout and "/1 seeds" in p.stdout
    assert (tmp_path / "reports" / "both_fail.csv").exists() and (tmp_path / "reports" / "both_fail.md").exists()
    assert_one_complete_run_per_trial(f"sqlite:///{tmp_path / 'mlflow.db'}", "smoke", SMOKE_TRIALS, SMOKE_EPOCHS)


def finished_runs(uri: str, experiment: str) -> dict:
    try:
        _, runs = runs_of(uri, experiment)
    except Exception:  # the store or experiment may not exist yet
        return {}
    return {r.info.run_id: r.info.end_time for r in runs if r.info.status == "FINISHED"}


def interrupt_after(cmd, env, cwd: Path, uri: str, n_finished: int, sig: int) -> int:
    """Start the search, send `sig` once n_finished of its runs are FINISHED; return its exit code."""
    with open(cwd / f"driver-{sig}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while len(finished_runs(uri, "killed")) < n_finished:
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.5)
        proc.send_signal(sig)
        return proc.wait(timeout=120)


def test_interrupted_and_killed_driver_resumes_without_rerun_or_duplicates(head, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd, env = scan_cmd(tmp_path, "killed"), run_env(head)
    # Ctrl-C: Tune saves its state, unfinished runs are marked KILLED (not left RUNNING), exit code 130
    assert interrupt_after(cmd, env, tmp_path, uri, 2, signal.SIGINT) == 130
    client, runs = runs_of(uri, "killed")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # SIGKILL of the resumed driver: nothing gets a chance to clean up
    assert interrupt_after(cmd, env, tmp_path, uri, 6, signal.SIGKILL) == -signal.SIGKILL
    before = finished_runs(uri, "killed")
    assert 6 <= len(before) < SMOKE_TRIALS

    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resuming sweep" in p.stdout
    assert "of these configs already have a finished run" in p.stdout
    runs = assert_one_complete_run_per_trial(uri, "killed", SMOKE_TRIALS, SMOKE_EPOCHS)
    after = {r.info.run_id: r.info.end_time for r in runs}
    assert {k: after[k] for k in before} == before, "a trial that had finished was run again"
    assert not MlflowClient(uri).search_runs(
        [runs[0].info.experiment_id], filter_string="attributes.status = 'RUNNING'")


def test_optuna_search_killed_and_rerun_completes_its_trials_once(head, tmp_path):
    from raycredit.tracking import RUN_KEY_TAG, SUMMARY_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, str(ROOT / "searches" / "optuna_scaffold.py"), "--preset", "smoke", "--address", "auto",
           "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "optuna",
           "--out", str(tmp_path / "reports"), "--num-samples", "6"]
    env = run_env(head)
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while True:  # kill once two trials have logged an epoch
            try:
                _, runs = runs_of(uri, "optuna")
            except Exception:
                runs = []
            if sum("epoch" in r.data.metrics for r in runs) >= 2:
                break
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)

    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resuming search" in p.stdout and "best test_acc" in p.stdout
    client, runs = runs_of(uri, "optuna")
    trials = [r for r in runs if SUMMARY_TAG not in r.data.tags]
    keys = [r.data.tags[RUN_KEY_TAG] for r in trials]
    assert len(trials) == 6 and len(set(keys)) == 6, keys
    for r in trials:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "test_acc"))
        assert steps == list(range(1, len(steps) + 1)) and steps, (r.info.run_name, steps)
        full = steps[-1] == 4
        assert full or r.data.tags.get("raycredit.stopped_early") == "1", (r.info.run_name, steps)
    assert not list((tmp_path / "ray").glob("*/checkpoints/*")), "checkpoint files left behind"
    summary = [r for r in runs if SUMMARY_TAG in r.data.tags]
    assert len(summary) == 1 and summary[0].data.params["rule"] == "scaffold"
    assert float(summary[0].data.metrics["best_test_acc"]) == max(float(r.data.metrics["test_acc"]) for r in trials)
