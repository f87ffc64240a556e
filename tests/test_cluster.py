"""Real clusters on 127.0.0.1: a `ray start --head` cluster (searches with --address auto, drivers
interrupted and killed, the whole cluster restarted) and a `ray.cluster_utils.Cluster` that loses a node.

Each test stops exactly the processes it started: the `ray start --head --block` process gets SIGTERM
(never `ray stop`); the Cluster driver shuts its own nodes down.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from raycredit.tracking import ATTEMPT_TAG, NODE_TAG, RESUMED_TAG, RUN_KEY_TAG, SUMMARY_TAG
from raycredit.train import train

from mlflow_checks import assert_one_complete_run_per_trial, new_store, runs_of
from node_loss_driver import CONFIGS, EXPERIMENT
from quiet import assert_quiet
from raycluster import Head
from searches_loader import ONE_AT_A_TIME, load_search

ROOT = Path(__file__).resolve().parents[1]
# smoke preset, --seeds 0, one credit_norm: 4 rules x 2 d x 2 L; trained shorter and on less data than the
# preset (the faults and their count are the point, not the accuracies)
SMOKE_TRIALS, SMOKE_EPOCHS = 16, 4


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    h = Head(tmp_path_factory.mktemp("head"))
    h.start()
    yield h
    h.stop()


def scan_cmd(tmp: Path, experiment: str):
    return [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
            "--set", "credit_norm=true", "--epochs", str(SMOKE_EPOCHS), "--set", "n_train=500",
            "--address", "auto", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--storage", str(tmp / "ray"),
            "--experiment", experiment, "--out", str(tmp / "reports"), *ONE_AT_A_TIME]


def run_env(address: str) -> dict:
    return {**os.environ, "RAY_ADDRESS": address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def finished_runs(uri: str, experiment: str) -> dict:
    try:
        _, runs = runs_of(uri, experiment)
    except Exception:  # the store or experiment may not exist yet
        return {}
    return {r.info.run_id: r.info.end_time for r in runs if r.info.status == "FINISHED"}


def unfinished(tmp: Path) -> list[Path]:
    """The folders of the trials of scan_cmd(tmp, …) that started and have not finished (a finished trial
    removes its own)."""
    return list((tmp / "ray").glob("*/checkpoints/*"))


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


def test_interrupted_killed_and_restarted_cluster_sweep_completes_once(head, tmp_path):
    """The smoke scan with --address auto: Ctrl-C, re-run, SIGKILL of the driver, the whole cluster
    stopped and started again, re-run: every trial finishes exactly once and the analysis runs."""
    uri = new_store(tmp_path / "mlflow.db")
    cmd = scan_cmd(tmp_path, "killed")
    # Ctrl-C: Tune saves its state, unfinished runs are marked KILLED (not left RUNNING), exit code 130
    assert interrupt_after(cmd, run_env(head.address), tmp_path, uri, 2, signal.SIGINT) == 130
    client, runs = runs_of(uri, "killed")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # SIGKILL of the resumed driver: nothing gets a chance to clean up
    assert interrupt_after(cmd, run_env(head.address), tmp_path, uri, 6, signal.SIGKILL) == -signal.SIGKILL
    before = finished_runs(uri, "killed")
    assert 6 <= len(before) < SMOKE_TRIALS
    cluster = psutil.Process(head.proc.pid).children(recursive=True)
    head.stop()  # the whole cluster goes down; a new one comes up at another port
    psutil.wait_procs(cluster, timeout=60)  # its workers too, which end on their own once their raylet is gone
    # whether the killed driver's last trial is left unfinished is a race: the cluster ends it some time after
    # its driver, and a trial of a few short epochs may finish (and remove its folder) before that
    left = unfinished(tmp_path)
    head.start()

    p = subprocess.run(cmd, cwd=tmp_path, env=run_env(head.address), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert_quiet(p.stdout, p.stderr)  # the search and its analyses
    assert ("resuming sweep" in p.stdout) == bool(left), (left, p.stdout[-3000:])  # from the trials left
    assert "of these configs already have a finished run" in p.stdout
    assert "notice: the Ray cluster has no GPUs" in p.stdout
    assert "# Both-fail scan" in p.stdout  # the analysis ran, over every setting of the grid
    assert (tmp_path / "reports" / "both_fail.csv").exists()
    assert "d=128 L=4 credit_norm=True" in (tmp_path / "reports" / "both_fail.md").read_text()
    runs = assert_one_complete_run_per_trial(uri, "killed", SMOKE_TRIALS, SMOKE_EPOCHS)
    after = {r.info.run_id: r.info.end_time for r in runs}
    assert {k: after[k] for k in before} == before, "a trial that had finished was run again"
    assert not MlflowClient(uri).search_runs(
        [runs[0].info.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert not unfinished(tmp_path), "checkpoint files left behind"


def test_optuna_search_killed_and_rerun_completes_its_trials_once(head, tmp_path, capsys):
    uri = new_store(tmp_path / "mlflow.db")
    cmd = [sys.executable, str(ROOT / "searches" / "optuna_scaffold.py"), "--preset", "smoke", "--address", "auto",
           "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "optuna",
           "--out", str(tmp_path / "reports"), "--num-samples", "4", *ONE_AT_A_TIME]
    env = run_env(head.address)
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
    assert_quiet(p.stdout, p.stderr)  # the Optuna search and its export
    assert "resuming search" in p.stdout and "best test_acc" in p.stdout
    client, runs = runs_of(uri, "optuna")
    trials = [r for r in runs if SUMMARY_TAG not in r.data.tags]
    keys = [r.data.tags[RUN_KEY_TAG] for r in trials]
    assert len(trials) == 4 and len(set(keys)) == 4, keys
    for r in trials:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "test_acc"))
        assert steps == list(range(1, len(steps) + 1)) and steps, (r.info.run_name, steps)
        full = steps[-1] == 4
        assert full or r.data.tags.get("raycredit.stopped_early") == "1", (r.info.run_name, steps)
    assert not unfinished(tmp_path), "checkpoint files left behind"
    summary = [r for r in runs if SUMMARY_TAG in r.data.tags and r.info.run_name == "optuna_scaffold-best"]
    assert len(summary) == 1 and summary[0].data.params["rule"] == "scaffold"
    assert float(summary[0].data.metrics["best_test_acc"]) == max(float(r.data.metrics["test_acc"]) for r in trials)
    assert len({r.info.run_name for r in trials}) == 4
    assert_exported_study(tmp_path / "reports" / "optuna", trials, summary[0])
    (tmp_path / "reports" / "optuna" / "study.db").unlink()
    capsys.readouterr()
    assert load_search("optuna_scaffold").main([*cmd[2:], "--export-study"]) == 0  # in this process: no Ray
    printed = capsys.readouterr().out
    assert "Optuna study" in printed and "Optuna (TPE)" not in printed, printed  # nothing ran
    assert_exported_study(tmp_path / "reports" / "optuna", trials, summary[0])
    both = [subprocess.Popen([*cmd, "--export-study"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]  # two at once
    for q in both:
        out, err = q.communicate(timeout=300)
        assert q.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert_exported_study(tmp_path / "reports" / "optuna", trials, summary[0])
    assert not list((tmp_path / "reports" / "optuna").glob(".study.db*"))


def assert_exported_study(folder, trials, summary):
    """The study written beside the report holds every trial with the knobs its run drew, its run's last
    test_acc, its ASHA mark and its per-epoch values; the files the search lists exist."""
    import optuna

    storage = f"sqlite:///{folder / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == len(trials)
    by_run = {r.info.run_id: r for r in trials}
    for t in study.trials:
        run = by_run[t.user_attrs["run_id"]]
        assert t.state == optuna.trial.TrialState.COMPLETE and t.value == run.data.metrics["test_acc"]
        assert sorted(t.params) == sorted(run.data.tags["raycredit.searched"].split(","))
        assert all(str(v) == run.data.params[k] for k, v in t.params.items())
        assert ("aux_lr" in t.params) == (t.params["aux_kind"] != "gaussian_noise")
        assert t.user_attrs["stopped_early"] == (run.data.tags.get("raycredit.stopped_early") == "1")
        assert sorted(t.intermediate_values) == list(range(1, int(run.data.metrics["epoch"]) + 1))
    assert study.best_trial.user_attrs["run_id"] == summary.data.tags["best_run_id"]
    assert len(pd.read_csv(folder / "trials.csv")) == len(trials)
    importances = pd.read_csv(folder / "param_importances.csv")
    assert {"blend_alpha", "aux_kind"} <= set(importances["param"])
    for plot in ("param_importances.png", "history.png", "parallel_coordinate.png"):
        assert (folder / plot).stat().st_size > 1000, plot


def test_a_worker_node_removed_mid_sweep_loses_nothing(tmp_path):
    """ray.cluster_utils.Cluster, head + 2 worker nodes with a logical GPU each, sharing no folder: the sweep's
    storage is a bucket on moto's S3 server, which every node reads (the per-node probe) with the credentials
    of its environment; one worker node is removed (processes killed) once a trial on it has logged 2 epochs,
    and that trial resumes on another node from its checkpoint object. (A shared folder's side of the probe:
    test_engine's node-local storage test and test_storage.)"""
    from s3server import s3_server

    with s3_server(tmp_path / "s3.log") as s3:
        p = subprocess.run([sys.executable, str(ROOT / "tests" / "node_loss_driver.py"), str(tmp_path),
                            f"s3://{s3.bucket}/sweeps"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={**os.environ, **s3.env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert not [k for k in s3.keys("sweeps/") if k.endswith("/checkpoint.pt")]
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["visibility"]) == 3 and all(result["visibility"].values()), result["visibility"]
    assert result["status"] == {c.key(): "FINISHED" for c in CONFIGS}
    epochs = CONFIGS[0].train.epochs
    runs = assert_one_complete_run_per_trial(f"sqlite:///{tmp_path / 'mlflow.db'}", EXPERIMENT, len(CONFIGS), epochs)
    by_key = {r.data.tags[RUN_KEY_TAG]: r for r in runs}
    moved = [r for r in runs if int(r.data.tags[ATTEMPT_TAG]) > 1]
    assert by_key[result["removed"]["trial"]] in moved, "the trial on the removed node did not resume elsewhere"
    for r in moved:
        assert r.data.tags[NODE_TAG] != result["removed"]["node"]
    assert int(by_key[result["removed"]["trial"]].data.tags[RESUMED_TAG]) >= 1, "restarted from scratch"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trials (cpus_per_trial=1)
    try:
        for cfg in CONFIGS:
            expected = train(cfg)["final"]
            logged = by_key[cfg.key()].data.metrics
            for name in ("test_acc", "train_loss", "deep_cos", "deep_rho", "h_norm/l3"):
                assert logged[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), (cfg.rule.rule, name)
    finally:
        torch.set_num_threads(threads)


def test_a_lineage_search_killed_after_its_trunk_retrains_nothing_and_finishes_every_branch_once(head, tmp_path):
    """handoff.py's smoke preset (one seed): SIGKILL of the driver once the trunk has finished and a branch has
    started; the same command again finishes every branch exactly once, from the trunk's kept checkpoint,
    without retraining or modifying the trunk."""
    uri = new_store(tmp_path / "mlflow.db")
    cmd = [sys.executable, str(ROOT / "searches" / "handoff.py"), "--preset", "smoke", "--seeds", "0",
           "--set", "d=16", "--set", "L=2", "--set", "n_train=500", "--epochs", "4", "--address", "auto",
           "--tracking-uri", uri,
           "--storage", str(tmp_path / "ray"), "--experiment", "killed", "--out", str(tmp_path / "reports"),
           *ONE_AT_A_TIME]
    env = run_env(head.address)
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while True:
            try:
                _, runs = runs_of(uri, "killed")
            except Exception:
                runs = []
            if any(r.info.status == "FINISHED" for r in runs) and any("mlflow.parentRunId" in r.data.tags
                                                                       for r in runs):
                break
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    client, runs = runs_of(uri, "killed")
    [trunk] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # a branch is tagged as it is created
    assert trunk.info.status == "FINISHED"

    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert_quiet(p.stdout, p.stderr)  # the lineage search and its analysis
    assert "1 of these configs already have a finished run" in p.stdout
    assert "continue_DFA" in (tmp_path / "reports" / "handoff.md").read_text()
    client, runs = runs_of(uri, "killed")
    keys = [r.data.tags[RUN_KEY_TAG] for r in runs]
    assert len(runs) == 13 and len(set(keys)) == 13, keys
    names = sorted(r.info.run_name for r in runs)  # what the UI lists: every branch says what distinguishes it
    assert len(set(names)) == 13, names
    again = client.get_run(trunk.info.run_id)
    assert again.info.end_time == trunk.info.end_time and again.data.metrics == trunk.data.metrics
    assert sorted(m.step for m in client.get_metric_history(trunk.info.run_id, "test_acc")) == list(range(1, 5))
    assert sorted(a.path for a in client.list_artifacts(trunk.info.run_id, "checkpoint")) == [
        "checkpoint/checkpoint.pt", "checkpoint/epoch-2"]
    first_epochs = {m.step: m.value for m in client.get_metric_history(trunk.info.run_id, "test_acc")}
    for r in runs:
        if r.info.run_id == trunk.info.run_id:
            continue
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == trunk.info.run_id
        assert r.data.tags["raycredit.parent_epoch"] == "2"
        history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "test_acc")}
        epochs = int(r.data.params["epochs"])
        assert sorted(history) == list(range(1, epochs + 1)), (r.info.run_name, sorted(history))
        assert [history[e] for e in (1, 2)] == [first_epochs[e] for e in (1, 2)]  # the trunk's, inherited
