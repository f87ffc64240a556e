import json
import subprocess
import sys

import pytest

from mlflow_checks import new_store
from quiet import assert_quiet

TINY_FLAGS = ["--n-train", "256", "--n-test", "128", "--input-dim", "16", "--d", "16", "--L", "2",
              "--probe-size", "32", "--rho-dirs", "4", "--device", "cpu", "--no-progress"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "raycredit.cli", *args], capture_output=True, text=True)


def test_train_writes_result_json_and_resumes(tmp_path):
    out = tmp_path / "run"
    p = cli("train", "--rule", "dfa", "--dataset", "synthetic", "--epochs", "2", "--seed", "0", "--out", str(out),
            *TINY_FLAGS)
    assert p.returncode == 0, p.stderr
    assert_quiet(p.stdout, p.stderr)
    r = json.loads((out / "result.json").read_text())
    assert set(r) >= {"config", "final", "history"}
    assert r["config"]["rule"]["rule"] == "dfa" and r["config"]["train"]["epochs"] == 2
    assert len(r["history"]) == 2 and r["final"]["epoch"] == 2
    for k in ("test_acc", "deep_cos", "deep_rho", "cos/l1", "rho/l2", "nudge/l0", "h_norm/l2", "mode1b"):
        assert k in r["final"], k
    assert (out / "checkpoint.pt").exists()

    again = cli("train", "--rule", "dfa", "--epochs", "2", "--out", str(out), *TINY_FLAGS)
    assert again.returncode == 2 and "--resume" in again.stderr

    longer = cli("train", "--rule", "dfa", "--epochs", "4", "--seed", "0", "--out", str(out), "--resume", *TINY_FLAGS)
    assert longer.returncode == 0, longer.stderr
    r4 = json.loads((out / "result.json").read_text())
    assert [h["epoch"] for h in r4["history"]] == [1, 2, 3, 4]
    assert r4["history"][:2] == [{**h, "time_s": h2["time_s"]} for h, h2 in zip(r["history"], r4["history"],
                                                                              strict=False)]
    fresh = cli("train", "--rule", "dfa", "--epochs", "4", "--seed", "0", "--out", str(tmp_path / "b"), *TINY_FLAGS)
    assert fresh.returncode == 0
    rb = json.loads((tmp_path / "b" / "result.json").read_text())
    drop = lambda h: {k: v for k, v in h.items() if k != "time_s"}  # noqa: E731
    assert [drop(h) for h in rb["history"]] == [drop(h) for h in r4["history"]]


def test_bad_input_as_a_process_exits_2_without_traceback(tmp_path):
    p = cli("train", "--out", str(tmp_path / "o"), "--rule", "scaffold", "--blend-alpha", "1.2")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["raycredit: error: blend_alpha: 1.2 must be <= 1"]
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_exits_2(tmp_path):
    p = cli("train", "--out", str(tmp_path / "o"), *TINY_FLAGS, "--device", "cuda:0")
    assert p.returncode == 2 and "CUDA is not available" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_help_lists_every_knob_and_every_rule():
    from raycredit.config import field_docs
    from raycredit.rules import RULES

    p = cli("train", "--help")
    assert p.returncode == 0
    for _, key, _ in field_docs():
        assert "--" + key.replace("_", "-") in p.stdout, key
    listed = " ".join(p.stdout[p.stdout.index("--rule STR"):].split("(default 'bp')")[0].split())
    assert all(f" {rule}," in listed or listed.endswith(f" {rule}") for rule in RULES), listed


@pytest.mark.system
def test_diagnose_from_a_folder_without_a_store_creates_nothing(tmp_path):
    """Run from another folder, `raycredit diagnose` reports the missing default store instead of creating an
    empty mlflow_runs/mlflow.db there and then saying the run is missing."""
    p = subprocess.run([sys.executable, "-m", "raycredit.cli", "diagnose", "--run-id", "0123abcd"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    [line] = p.stderr.strip().splitlines()
    assert f"no MLflow store at sqlite:///{tmp_path}/mlflow_runs/mlflow.db" in line, line
    assert list(tmp_path.iterdir()) == []


def test_train_branches_from_an_mlflow_runs_kept_epoch(tmp_path, capsys):
    """`raycredit train --from-run RUN_ID --from-epoch E`: the branch downloads the run's kept checkpoint; one
    that changes nothing reproduces the parent's later epochs; an epoch the run did not keep is named."""

    from mlflow.tracking import MlflowClient

    from raycredit.cli import main

    trunk = tmp_path / "trunk"
    assert main(["train", "--rule", "dfa", "--epochs", "4", "--keep-epochs", "2", "--out", str(trunk),
                 *TINY_FLAGS]) == 0
    uri = new_store(tmp_path / "m.db")
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("trunks", (tmp_path / "artifacts").as_uri())).info.run_id
    # the --out folder's layout is the run artifact's: it uploads as it is
    client.log_artifact(run_id, str(trunk / "epoch-2" / "checkpoint.pt"), "checkpoint/epoch-2")
    client.log_artifact(run_id, str(trunk / "checkpoint.pt"), "checkpoint")
    capsys.readouterr()

    assert main(["train", "--rule", "dfa", "--epochs", "4", "--from-run", run_id, "--from-epoch", "2",
                 "--tracking-uri", uri, "--out", str(tmp_path / "branch"), *TINY_FLAGS]) == 0
    assert f"branch of {run_id} at epoch 2" in capsys.readouterr().out
    drop = lambda h: {k: v for k, v in h.items() if k != "time_s"}  # noqa: E731
    want, got = (json.loads((d / "result.json").read_text())["history"] for d in (trunk, tmp_path / "branch"))
    assert [drop(h) for h in got] == [drop(h) for h in want]
    assert main(["train", "--rule", "dfa", "--epochs", "4", "--from-run", run_id, "--from-epoch", "3",
                 "--tracking-uri", uri, "--out", str(tmp_path / "b3"), *TINY_FLAGS]) == 2
    assert "holds epoch 4, not parent_epoch=3" in capsys.readouterr().err
    assert not (tmp_path / "b3").exists()


def test_resume_needs_no_flags(tmp_path, capsys):
    """`raycredit train --out DIR --resume` continues the run in DIR with its own config."""
    import shutil

    from raycredit.cli import main

    full = tmp_path / "full"
    assert main(["train", "--rule", "fa", "--epochs", "3", "--keep-epochs", "2", "--seed", "3", "--out", str(full),
                 *TINY_FLAGS]) == 0
    cut = tmp_path / "cut"  # a run stopped after its second epoch
    cut.mkdir()
    shutil.copy(full / "epoch-2" / "checkpoint.pt", cut / "checkpoint.pt")
    assert main(["train", "--out", str(cut), "--resume", "--no-progress"]) == 0
    drop = lambda h: {k: v for k, v in h.items() if k != "time_s"}  # noqa: E731
    want, got = (json.loads((d / "result.json").read_text()) for d in (full, cut))
    assert got["config"] == want["config"]
    assert [drop(h) for h in got["history"]] == [drop(h) for h in want["history"]]


@pytest.fixture
def listeners():
    """Ports on 127.0.0.1 that are not a Ray cluster: an HTTP/1 server (like the Ray dashboard or an MLflow UI), a
    listener that accepts and never answers, and a port nothing listens on. Started and stopped here."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    http = HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    from ports import free_port

    try:
        yield {"http": http.server_address[1], "silent": silent.getsockname()[1], "closed": free_port()}
    finally:
        http.shutdown()
        http.server_close()
        thread.join()
        silent.close()


@pytest.mark.parametrize("argv, words", [
    ([], "`--preset smoke` needs no data"),
    (["--preset", "smoke", "--address", "127.0.0.1:{http}"], "answers, but not as a Ray cluster"),
    (["--preset", "smoke", "--address", "127.0.0.1:{silent}"], "answers, but not as a Ray cluster"),
    (["--preset", "smoke", "--address", "127.0.0.1:{closed}"], "cannot reach a Ray cluster"),
], ids=["paper-default-without-data", "address-http-port", "address-silent-port", "address-closed-port"])
@pytest.mark.system
def test_first_hour_mistakes_as_a_process_exit_2_in_one_line_within_30s(tmp_path, listeners, argv, words):
    import time

    from searches_loader import ROOT

    argv = [a.format(**listeners) for a in argv]
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), *argv,
                        "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--storage", str(tmp_path / "ray")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - t0
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and words in lines[0], (p.returncode, p.stderr)
    assert elapsed < 30 and "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []
