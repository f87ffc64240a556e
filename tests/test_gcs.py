"""--storage gs://…: a sweep and the preflight against a real Google Cloud Storage-compatible server
(fake-gcs-server, tests/gcsserver.py) on 127.0.0.1, reached as Google is: the endpoint in the URI's query, a
service-account key in GOOGLE_APPLICATION_CREDENTIALS. The outage and the exact numbers of a resumed trial are
proven on S3 (tests/test_s3.py), through the same pyarrow layer."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gcsserver import gcs_server
from mlflow_checks import assert_one_complete_run_per_trial, new_store, trial_checkpoints, wait_closed
from ports import free_port
from quiet import assert_quiet, leaks
from searches_loader import ROOT, load_search

pytestmark = pytest.mark.system

SHRUNK = ["--preset", "smoke", "--seeds", "0", "--set", "d=16", "--set", "L=2", "--set", "n_train=500", "--epochs",
          "3", "--gpus-per-trial", "0"]


def test_the_preflight_takes_a_gcs_bucket_it_can_write_and_refuses_a_bad_one_in_one_line(tmp_path, capsys,
                                                                                         monkeypatch):
    """A bucket it can write passes the preflight and keeps no probe object. A missing bucket (not made, as
    pyarrow's client would), and an endpoint nothing answers (refused within the probe's retry limit, not after
    the client's own retries of many minutes), exit 2 in one line each, before any trial, with no store made,
    no object written and no key printed."""
    from raycredit import storage

    scan = load_search("both_fail_scan")
    monkeypatch.setattr(storage, "PROBE_RETRY_S", 3)  # the limit the probe adds, shorter than a user's 15 s
    with gcs_server(tmp_path) as gcs:
        for k, v in gcs.env().items():
            monkeypatch.setenv(k, v)  # read as each client is made
        storage.check_storage(gcs.uri("sweeps"))
        assert not [k for k in gcs.keys() if "probe" in k], gcs.keys()
        closed = f"gs://raycredit/sweeps?scheme=http&endpoint_override=127.0.0.1:{free_port()}"
        for name, where, words in [
                ("missing bucket", gcs.uri("sweeps").replace("raycredit", "no-such-bucket", 1),
                 "there is no bucket no-such-bucket (raycredit makes none)"),
                ("no endpoint", closed, "cannot write there")]:
            db = tmp_path / f"{name}.db"
            began = time.monotonic()
            code = scan.main([*SHRUNK, "--tracking-uri", f"sqlite:///{db}", "--storage", where])
            took = time.monotonic() - began
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and words in lines[0], (name, out, err)
            assert "endpoint_override" not in lines[0], lines[0]  # the URI is printed without its query
            assert gcs.private_key.splitlines()[5] not in out + err, name
            assert not db.exists(), name
            assert took < 60, (name, took)  # a hang guard, not a speed target: the client's own limit is 15 min
        assert not [k for k in gcs.keys() if "probe" in k], gcs.keys()
        assert not gcs.has_bucket("no-such-bucket")  # pyarrow's create_dir would have made it, in the project


EPOCHS = 8


def test_a_sweep_on_gcs_killed_and_rerun_finishes_every_run_once_and_leaks_no_key():
    """The driver SIGKILLed once a trial's checkpoint is an object in the bucket, then the same command re-run:
    it says it resumes from the bucket, the trials the kill left a checkpoint for resume from it, every run
    exists once with every epoch once, no checkpoint object is left, nothing is written to a local folder, and
    no line of the private key is in any output, Ray session file, object or the store."""
    from raycredit.tracking import RESUMED_TAG, RUN_KEY_TAG

    root = Path(tempfile.mkdtemp(prefix="rcgs"))  # short: Ray's socket paths live under RAY_TMPDIR
    try:
        with gcs_server(root) as gcs:
            (root / "rt").mkdir()
            db = root / "mlflow.db"
            uri = new_store(db)
            env = {**os.environ, **gcs.env(), "RAY_TMPDIR": str(root / "rt")}
            cmd = [sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), "--preset", "smoke", "--seeds", "0",
                   "--set", "credit_norm=true", "--set", "d=16", "--set", "L=2", "--set", "n_train=300",
                   "--epochs", str(EPOCHS), "--set", "checkpoint_every=2", "--gpus-per-trial", "0",
                   "--tracking-uri", uri, "--storage", gcs.uri("sweeps"), "--experiment", "gcs", "--no-analysis"]

            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            deadline = time.time() + 240
            while not trial_checkpoints(gcs):
                assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)
            first = proc.communicate()
            wait_closed(db)  # the driver's Ray workers end on their own once its raylet is gone
            left_by_kill = trial_checkpoints(gcs)
            assert left_by_kill, "every trial finished before the kill took effect"
            p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=400)
            assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
            assert_quiet(p.stdout, p.stderr)
            assert "resuming sweep in gs://raycredit/sweeps/" in p.stdout, p.stdout[-3000:]
            runs = assert_one_complete_run_per_trial(uri, "gcs", 4, EPOCHS)
            resumed = {r.data.tags[RUN_KEY_TAG]: int(r.data.tags.get(RESUMED_TAG, 0)) for r in runs}
            assert {resumed[k] for k in left_by_kill} - {0}, (resumed, left_by_kill)
            left = gcs.keys("sweeps/")
            assert not trial_checkpoints(gcs), left
            assert [k for k in left if k.endswith("raycredit-store.json")], left  # the sweep's record
            objects = {k: gcs.read(k) for k in left}
        assert sorted(d.name for d in root.iterdir() if d.is_dir()) == ["artifacts", "rt"]
        secret = gcs.private_key.splitlines()[5]  # a line of the key's base64 body
        found = leaks(secret, {"first driver": "".join(first), "driver": p.stdout + p.stderr}, root, objects)
        assert not found, found
    finally:
        shutil.rmtree(root, ignore_errors=True)
