"""--storage gs://…: the preflight against a real Google Cloud Storage-compatible server (tests/gcsserver.py) on
127.0.0.1, reached as Google is: the endpoint in the URI's query, a service-account key in
GOOGLE_APPLICATION_CREDENTIALS.

Only the preflight: that server (gcp-storage-emulator, the GCS server found on the index) answers a folder's
listing with nothing where Google lists its entries, so the sweep's own reading of its folders (which checkpoints
exist) could not be told apart from the server's faults. Sweeps on object storage are proven on S3
(tests/test_s3.py), through the same pyarrow layer."""

import time

import pytest

from gcsserver import gcs_server
from ports import free_port
from searches_loader import load_search

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
