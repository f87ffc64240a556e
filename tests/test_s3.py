"""--storage on object storage: a real S3 server (moto's, on 127.0.0.1; tests/s3server.py) holds the sweep's Tune
state, the trials' checkpoints and its record, with the AWS clients' standard variables for endpoint and keys."""

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mlflow_checks import assert_one_complete_run_per_trial, new_store, trial_checkpoints, wait_closed
from ports import free_port
from quiet import assert_quiet, leaks
from s3server import KEYS, s3_server
from searches_loader import ONE_AT_A_TIME, ROOT, load_search

pytestmark = pytest.mark.system

# two trials at a time (not ONE_AT_A_TIME): when the driver is killed both are mid-way with epochs to go, so a
# checkpoint is left however long a trial's worker outlives its raylet (one trial of 6 epochs finished first)
EPOCHS = 12
SHRUNK = ["--preset", "smoke", "--seeds", "0", "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2",
          "--set", "n_train=500", "--epochs", str(EPOCHS), "--set", "checkpoint_every=2", "--gpus-per-trial", "0"]


def epochs_logged(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return int(con.execute("SELECT COUNT(*) FROM metrics WHERE key = 'epoch'").fetchone()[0])


def test_a_sweep_on_s3_killed_and_rerun_through_an_outage_finishes_every_run_once_and_leaks_no_key():
    """The driver SIGKILLed once a trial's checkpoint is on S3, the same command re-run, and the S3 server frozen
    for 30 s in the middle of the re-run (SIGSTOP: requests hang, as when a store stops answering): the re-run
    waits it out and finishes; the trials left with a checkpoint resume from it, every run exists once with
    every epoch once and the numbers of uninterrupted training, no checkpoint object is left, and nothing is
    written to a local folder; the secret key is in no output, Ray session file, S3 object or the store."""
    import torch

    from raycredit.search import expand
    from raycredit.tracking import RESUMED_TAG, RUN_KEY_TAG
    from raycredit.train import train

    root = Path(tempfile.mkdtemp(prefix="rcs3"))  # short: Ray's socket paths live under RAY_TMPDIR
    try:
        with s3_server(root / "s3.log") as s3:
            (root / "rt").mkdir()
            db = root / "mlflow.db"
            uri = new_store(db)
            env = {**os.environ, **s3.env(), "RAY_TMPDIR": str(root / "rt")}
            cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), *SHRUNK, "--tracking-uri", uri,
                   "--storage", f"s3://{s3.bucket}/sweeps", "--experiment", "s3", "--no-analysis"]
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            deadline = time.time() + 240
            while not trial_checkpoints(s3):
                assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)
            first = proc.communicate()
            wait_closed(db)  # the driver's Ray workers end on their own once its raylet is gone
            left_by_kill = trial_checkpoints(s3)
            assert left_by_kill, "every trial finished before the kill took effect"
            # the re-run, with the S3 server frozen for 30 s once it has logged an epoch
            before = epochs_logged(db)
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            while epochs_logged(db) == before:
                assert proc.poll() is None and time.time() < deadline + 240, proc.communicate()[1][-3000:]
                time.sleep(0.2)
            os.killpg(s3.proc.pid, signal.SIGSTOP)
            time.sleep(30)
            os.killpg(s3.proc.pid, signal.SIGCONT)
            out, err = proc.communicate(timeout=400)
            assert proc.returncode == 0, out[-3000:] + err[-3000:]
            assert_quiet(out, err)
            assert "resuming sweep in s3://raycredit/sweeps/" in out, out[-3000:]
            runs = assert_one_complete_run_per_trial(uri, "s3", 4, EPOCHS)
            resumed = {r.data.tags[RUN_KEY_TAG]: int(r.data.tags.get(RESUMED_TAG, 0)) for r in runs}
            assert {resumed[k] for k in left_by_kill} - {0} and all(resumed[k] >= 2 for k in left_by_kill), resumed
            left = s3.keys("sweeps/")
            assert not trial_checkpoints(s3), left
            assert [k for k in left if k.endswith("raycredit-store.json")], left  # the sweep's record
            objects = {k: s3.client().get_object(Bucket=s3.bucket, Key=k)["Body"].read() for k in left}
        # Ray's session and the store's artifacts (the runs' final checkpoints): no ray_results, no trial folder
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["artifacts", "rt"]

        by_key = {r.data.tags[RUN_KEY_TAG]: r for r in runs}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the trials (cpus_per_trial=1)
        try:
            for cfg in expand(load_search("both_fail_scan").PRESETS["smoke"], {
                    "seed": [0], "credit_norm": True, "d": 16, "L": 2, "n_train": 500, "epochs": EPOCHS,
                    "checkpoint_every": 2})[:2]:
                expected = train(cfg)["final"]
                for name in ("train_loss", "test_acc", "deep_cos"):
                    assert by_key[cfg.key()].data.metrics[name] == pytest.approx(expected[name], rel=1e-9,
                                                                                      abs=1e-12)
        finally:
            torch.set_num_threads(threads)

        found = leaks(KEYS["AWS_SECRET_ACCESS_KEY"], {"first driver": "".join(first), "driver": out + err}, root,
                      objects)
        assert not found, found
    finally:
        shutil.rmtree(root, ignore_errors=True)


BAD = {  # (storage, what the one line says)
    "missing bucket": ("s3://no-such-bucket/sweeps", "there is no bucket no-such-bucket (raycredit makes none)"),
    "unsupported scheme": ("ftp2://host/sweeps", "Unrecognized filesystem type"),
    "credentials in the URI": ("s3://AKIAX:hunter2@raycredit/sweeps", "credentials in the URI"),
}


def test_bad_object_storage_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """A missing bucket, an unknown scheme, keys inside the URI, keys the server does not know, an endpoint
    nothing answers, and an Optuna search (which could not resume safely there): one line each, exit 2, before
    any trial, with no store, folder or object made."""
    scan = load_search("both_fail_scan")
    with s3_server(tmp_path / "s3.log") as s3, s3_server(tmp_path / "iam.log", check_credentials=True) as iam:
        closed = f"http://127.0.0.1:{free_port()}"
        cases = [(name, storage, words, s3.endpoint) for name, (storage, words) in BAD.items()]
        cases += [("unknown key", "s3://raycredit/sweeps", "cannot write there", iam.endpoint),
                  ("no endpoint", "s3://raycredit/sweeps", "cannot write there", closed)]
        for name, storage, words, endpoint in cases:
            for k, v in {**KEYS, "AWS_ENDPOINT_URL": endpoint}.items():
                monkeypatch.setenv(k, v)
            db = tmp_path / f"{name}.db"
            code = scan.main([*SHRUNK, "--tracking-uri", f"sqlite:///{db}", "--storage", storage])
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and words in lines[0], (name, out, err)
            assert "hunter2" not in out + err and KEYS["AWS_SECRET_ACCESS_KEY"] not in out + err, name
            assert not db.exists(), name
        # an Optuna search resumes by unpickling Tune's state, whose writer a bucket cannot show: refused
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
        db = tmp_path / "optuna.db"
        code = load_search("optuna_scaffold").main(["--preset", "smoke", "--tracking-uri", f"sqlite:///{db}",
                                                   "--storage", "s3://raycredit/sweeps"])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "an Optuna search resumes by unpickling" in lines[0], (out, err)
        assert not db.exists()
        assert s3.keys() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iam.log", "s3.log"]


def test_a_lineage_search_submitted_as_a_ray_job_with_its_storage_and_mlflow_artifacts_on_s3(tmp_path):
    """`ray job submit --working-dir . -- python searches/snapshot_recovery.py --address auto …` to a `ray start
    --head` cluster whose node holds the S3 credentials, with the sweep's storage and MLflow's artifacts (a
    tracking server with --artifacts-destination s3://…) on S3: the search's lines stream back through the
    job's logs without a warning or a key, the branches read their trunk's kept checkpoint back from S3
    through the server, every run's checkpoint lands in the bucket, the report is written, `raycredit
    diagnose` reproduces a branch from its S3 checkpoint, and `raycredit train --from-run` branches from a run's
    kept epoch in the bucket."""
    from mlflow.tracking import MlflowClient

    from raycredit.cli import main as raycredit
    from raycredit.tracking import PARENT_RUN_TAG, SUMMARY_TAG

    from mlflow_checks import runs_of
    from ports import server
    from raycluster import Head

    with s3_server(tmp_path / "s3.log") as s3:
        env = {**s3.env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
        port = free_port()
        with server([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                     "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}", "--artifacts-destination",
                     f"s3://{s3.bucket}/mlflow", "--workers", "1"], port, tmp_path / "srv.log", env):
            uri = f"http://127.0.0.1:{port}"
            head = Head(tmp_path, dashboard=True, env=env)
            head.start()
            try:
                # a `ray start` cluster has token authentication on where ~/.ray/auth_token exists; the job
                # client then needs RAY_AUTH_MODE=token to use the same token (ray 2.60)
                auth = {"RAY_AUTH_MODE": "token"} if (Path.home() / ".ray" / "auth_token").exists() else {}
                client_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
                deadline = time.time() + 120
                while True:  # the head's job agent registers some seconds after its dashboard answers
                    p = subprocess.run(
                        [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address",
                         head.dashboard_url, "--working-dir", ".", "--", "python", "searches/snapshot_recovery.py",
                         "--preset", "smoke", "--seeds", "0", "--epochs", "2", "--set", "n_train=500", "--set",
                         "n_test=200", "--gpus-per-trial", "0", "--address", "auto", "--tracking-uri", uri, "--storage",
                         f"s3://{s3.bucket}/sweeps", "--out", str(tmp_path / "report"), *ONE_AT_A_TIME],
                        cwd=ROOT, env={**client_env, **auth}, capture_output=True, text=True, timeout=400)
                    if "No available agent to submit job" not in p.stderr or time.time() > deadline:
                        break
                    time.sleep(2)
            finally:
                head.stop()
            assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
            # the job's own lines: between `ray job submit`'s "Tailing logs" and its verdict
            job = p.stdout.split("Tailing logs until the job exits")[-1].rsplit("------", 1)[0]
            assert "snapshot_recovery: " in job and "runs finished, 0 failed" in job, p.stdout[-3000:]
            assert_quiet(job)
            assert KEYS["AWS_SECRET_ACCESS_KEY"] not in p.stdout + p.stderr
            _, runs = runs_of(uri, "snapshot_recovery-smoke")
            trials = [r for r in runs if SUMMARY_TAG not in r.data.tags]
            branches = [r for r in trials if PARENT_RUN_TAG in r.data.tags]
            assert branches and {r.info.status for r in trials} == {"FINISHED"}
            stored = s3.keys("mlflow/")
            for r in trials:  # every run's last checkpoint is an object in the bucket
                assert any(k.startswith("mlflow/") and r.info.run_id in k and k.endswith("checkpoint.pt")
                           for k in stored), r.info.run_name
            left = s3.keys("sweeps/")
            assert not [k for k in left if k.endswith("/checkpoint.pt")], left
            assert [k for k in left if k.endswith("raycredit-store.json")], left  # the sweep's record
            assert (tmp_path / "report" / "recovery.md").read_text().strip()
            d = subprocess.run([sys.executable, "-m", "raycredit.cli", "diagnose", "--run-id",
                                branches[0].info.run_id, "--tracking-uri", uri, "--null-draws", "0"], cwd=tmp_path,
                               env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                               timeout=300)
            assert d.returncode == 0, d.stdout[-3000:] + d.stderr[-3000:]
            assert_quiet(d.stdout, d.stderr)
            # `raycredit train --from-run`: a branch of a run whose kept epoch the server holds in the bucket
            tiny = ["--rule", "dfa", "--epochs", "4", "--n-train", "256", "--n-test", "128", "--d", "16", "--L", "2",
                    "--probe-size", "32", "--rho-dirs", "4", "--device", "cpu", "--no-progress"]
            assert raycredit(["train", *tiny, "--keep-epochs", "2", "--out", str(tmp_path / "trunk")]) == 0
            client = MlflowClient(uri)
            run_id = client.create_run(client.create_experiment("trunks")).info.run_id
            client.log_artifact(run_id, str(tmp_path / "trunk" / "epoch-2" / "checkpoint.pt"), "checkpoint/epoch-2")
            assert [k for k in s3.keys("mlflow/") if run_id in k and "/checkpoint/epoch-2/" in k]
            assert raycredit(["train", *tiny, "--from-run", run_id, "--from-epoch", "2", "--tracking-uri", uri,
                              "--out", str(tmp_path / "branch")]) == 0
            want, got = ([{k: v for k, v in h.items() if k != "time_s"}
                          for h in json.loads((tmp_path / d / "result.json").read_text())["history"]]
                         for d in ("trunk", "branch"))
            assert got == want  # a branch that changes nothing: the trunk's history
