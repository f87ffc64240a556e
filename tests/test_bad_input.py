"""The bad-input corpus: every malformed input to a search or to `raycredit train` exits 2 with one line
on stderr, no traceback, and writes nothing (no MLflow store, no Tune storage, no run folder).

Both commands run in process, exactly as their scripts do (argparse exits and `main`'s return code);
`test_cli.py` checks the same once as a real process.
"""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from raycredit.search import run_search

from cifar_fixture import write_cifar10
from ports import free_port
from searches_loader import load_search

TRAIN_TINY = ["--n-train", "64", "--n-test", "32", "--input-dim", "8", "--d", "8", "--L", "2", "--probe-size", "16",
              "--rho-dirs", "2", "--epochs", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> bytes:
    """The bytes of a checkpoint written by `raycredit train` with TRAIN_TINY."""
    from raycredit.cli import main

    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", "--out", str(out), *TRAIN_TINY]) == 0
    return (out / "checkpoint.pt").read_bytes()


class Evil:
    """Unpickling this would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def setup(kind: str, tmp: Path, ckpt: bytes, monkeypatch) -> None:
    """Write the malformed file a case needs under tmp."""
    run = tmp / "o"
    if kind == "truncated_cifar":
        lists = write_cifar10(tmp / "cifar", per_batch=10)
        for name, value in lists.items():
            monkeypatch.setattr(torchvision.datasets.CIFAR10, name, value)
        batch = tmp / "cifar" / "cifar-10-batches-py" / "data_batch_2"
        batch.write_bytes(batch.read_bytes()[:200])
    elif kind == "npz_shapes":
        rng = np.random.default_rng(0)
        np.savez(tmp / "bad.npz", x_train=rng.normal(size=(40, 12)), y_train=rng.integers(0, 3, 40),
                 x_test=rng.normal(size=(10, 7)), y_test=rng.integers(0, 3, 10))
    elif kind == "npz_labels":
        rng = np.random.default_rng(0)
        np.savez(tmp / "bad.npz", x_train=rng.normal(size=(40, 12)), y_train=rng.normal(size=40),
                 x_test=rng.normal(size=(10, 12)), y_test=rng.integers(0, 3, 10))
    elif kind == "npz_huge_label":
        rng = np.random.default_rng(0)
        y_train, y_test = rng.integers(0, 3, 40), rng.integers(0, 3, 10)
        y_train[0] = y_test[0] = 10**9
        np.savez(tmp / "bad.npz", x_train=rng.normal(size=(40, 12)), y_train=y_train,
                 x_test=rng.normal(size=(10, 12)), y_test=y_test)
    elif kind in ("npz_complex", "npz_featureless", "npz_unseen"):
        rng = np.random.default_rng(0)
        x_train, x_test = rng.normal(size=(40, 12)), rng.normal(size=(10, 12))
        y_train, y_test = rng.integers(0, 3, 40), rng.integers(0, 3, 10)
        if kind == "npz_complex":
            x_train = x_train + 1j * x_train
        elif kind == "npz_featureless":
            x_train, x_test = np.zeros((40, 0)), np.zeros((10, 0))
        else:
            y_test[0] = 5
        np.savez(tmp / "bad.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    elif kind == "npz_garbage":
        (tmp / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip archive")
    elif kind.startswith("ckpt_"):
        run.mkdir()
        content = {"ckpt_garbage": b"\x00\x01 not a checkpoint",
                   "ckpt_truncated": ckpt[: len(ckpt) // 2],
                   "ckpt_empty": b"",
                   "ckpt_real": ckpt}.get(kind)
        if kind == "ckpt_pickle":
            torch.save({"format": Evil()}, run / "checkpoint.pt")
        elif kind == "ckpt_foreign":
            torch.save({"state_dict": {"w": torch.zeros(2)}}, run / "checkpoint.pt")
        else:
            (run / "checkpoint.pt").write_bytes(content)
    elif kind == "store_immutable":
        (tmp / "m.db").write_bytes(b"")
        if subprocess.run(["chattr", "+i", str(tmp / "m.db")], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here (needs root on ext4-like filesystems)")
    elif kind == "store_garbage":  # a hostile or truncated file where the store's database should be
        (tmp / "m.db").write_bytes(b"<html>not a database</html>")
    elif kind == "foreign_experiment":  # the experiment already holds another search's trials
        from raycredit import tracking
        from raycredit.tracking.client import get_client

        uri = f"sqlite:///{tmp / 'm.db'}"
        get_client(uri).create_run(tracking.ensure_experiment(uri, "both_fail_scan-smoke"), run_name="bp-d64-L4",
                                   tags={"search": "penalty_rescue"})
    elif kind == "artifacts_immutable":
        (tmp / "artifacts").mkdir()
        if subprocess.run(["chattr", "+i", str(tmp / "artifacts")], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here (needs root on ext4-like filesystems)")
    elif kind == "small_disk":
        (tmp / "small").mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmp / "small")],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
    elif kind == "afile":
        (tmp / "afile").write_text("a file where a folder is expected")
    elif kind != "":
        raise AssertionError(kind)


SEARCH, TRAIN = "search", "train"
CASES = [
    # config values and types, through a search's --set
    (SEARCH, "", ["--set", "rule=backprop"], "unknown rule 'backprop'; valid rules: bp"),
    (SEARCH, "", ["--set", "penalty_lam=-1"], "penalty_lam"),
    (SEARCH, "", ["--set", "bogus=1"], "unknown config key 'bogus'"),
    (SEARCH, "", ["--set", "alpha=1.5"], "alpha"),
    (SEARCH, "", ["--set", "lr=fast"], "lr"),
    (SEARCH, "", ["--set", "d"], "expected KEY=VALUE"),
    # a knob given as a search flag: the hint spells it with --set
    (SEARCH, "", ["--lr", "0.01"], "unrecognized arguments: --lr 0.01 (a search sets a config knob with --set: "
                                   "--set lr=0.01;"),
    (SEARCH, "", ["--credit-norm"], "--set credit_norm=VALUE"),
    (SEARCH, "", ["--set", "arch=vit_mini"], "synthetic"),
    (SEARCH, "", ["--set", "rule=vector_field", "--set", "arch=small_cnn", "--dataset", "cifar10",
                  "--data-dir", "{tmp}/cifar"], "supports architectures resmlp"),
    (SEARCH, "", ["--set", "arch=mlp"], "fa_mode: reference needs layers of one shape"),
    (SEARCH, "", ["--set", "arch=small_cnn", "--set", "fa_mode=lillicrap", "--dataset", "digits"],
     "no feedback path through small_cnn"),
    (SEARCH, "", ["--set", "fa_mode=backprop"], "fa_mode: 'backprop' is not one of lillicrap, reference"),
    # flags
    (SEARCH, "", ["--seeds", "a,b"], "--seeds"),
    (SEARCH, "", ["--seeds", ","], "--seeds: no seeds given"),
    (SEARCH, "", ["--epochs", "x"], "invalid int value"),
    (SEARCH, "", ["--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (SEARCH, "", ["--max-failures", "-1"], "--max-failures"),
    (SEARCH, "", ["--population", "0"], "--population 0: must be >= 1"),
    (SEARCH, "", ["--population", "many"], "invalid int value"),
    (SEARCH, "", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (SEARCH, "", ["--preset", "huge"], "invalid choice: 'huge'"),
    # cluster address
    (SEARCH, "", ["--address", "127.0.0.1:{port}"], "cannot reach a Ray cluster"),
    (SEARCH, "", ["--address", "nonsense"], "expected host:port"),
    # tracking store and storage
    (SEARCH, "afile", ["--storage", "{tmp}/afile/ray"], "--storage: cannot create"),
    (SEARCH, "afile", ["--tracking-uri", "sqlite:///{tmp}/afile/m.db"], "--tracking-uri: cannot create"),
    (SEARCH, "", ["--tracking-uri", "mlruns/m.db"], "is not a URI"),
    (SEARCH, "store_immutable", [], "the file is not"),
    (SEARCH, "store_garbage", [], "is not a SQLite database"),
    (SEARCH, "foreign_experiment", [], "holds the runs of search 'penalty_rescue' (e.g. 'bp-d64-L4')"),
    (SEARCH, "artifacts_immutable", [], "the artifact folder of experiment 'both_fail_scan-smoke': cannot write"),
    (SEARCH, "small_disk", ["--storage", "{tmp}/small/ray"], "small has 1.0 MiB free (a sweep needs at least"),
    (SEARCH, "small_disk", ["--tracking-uri", "sqlite:///{tmp}/small/m.db"], "1.0 MiB free"),
    # data
    (SEARCH, "", ["--dataset", "cifar10", "--data-dir", "{tmp}/missing"], "--download"),
    (SEARCH, "truncated_cifar", ["--dataset", "cifar10", "--data-dir", "{tmp}/cifar"], "not found or corrupted"),
    (SEARCH, "", ["--dataset", "npz", "--data-dir", "{tmp}/none.npz"], "npz file not found"),
    (SEARCH, "", ["--dataset", "toy_lq", "--set", "random_targets=True"], "toy_lq has target vectors"),
    (SEARCH, "npz_shapes", ["--dataset", "npz", "--data-dir", "{tmp}/bad.npz"], "x_test 7"),
    (SEARCH, "npz_labels", ["--dataset", "npz", "--data-dir", "{tmp}/bad.npz"], "y_train integer"),
    (SEARCH, "npz_garbage", ["--dataset", "npz", "--data-dir", "{tmp}/bad.npz"], "cannot read npz file"),
    (SEARCH, "npz_complex", ["--dataset", "npz", "--data-dir", "{tmp}/bad.npz"], "must be real numbers"),
    (SEARCH, "npz_featureless", ["--dataset", "npz", "--data-dir", "{tmp}/bad.npz"], "has no features"),
    (SEARCH, "npz_unseen", ["--dataset", "npz", "--data-dir", "{tmp}/bad.npz"], "test labels 5 never occur"),
    (SEARCH, "npz_huge_label", ["--dataset", "npz", "--data-dir", "{tmp}/bad.npz"], "d/L/n_classes: a model of"),
    (SEARCH, "", ["--experiment", "\U0001F600" * 100], "--experiment: 400 bytes"),
    (SEARCH, "", ["--experiment", "lab's scan"], "quotes"),
    (SEARCH, "afile", ["--out", "{tmp}/afile"], "--out"),
    # sizes and values that used to give tracebacks or hang
    (SEARCH, "", ["--set", "lr=inf"], "lr: inf is not finite"),
    (SEARCH, "", ["--set", "data_seed=1180591620717411303424"], "data_seed"),
    (SEARCH, "", ["--set", "n_train=2000000000"], "synthetic data of"),
    (SEARCH, "", ["--set", "n_classes=1000000000"], "synthetic data of"),
    (SEARCH, "", ["--set", "d=1000000"], "a model of about"),
    (SEARCH, "", ["--cpus-per-trial", "nan"], "--cpus-per-trial"),
    (SEARCH, "", ["--cpus-per-trial", "inf"], "--cpus-per-trial"),
    (SEARCH, "", ["--gpus-per-trial", "nan"], "--gpus-per-trial"),
    (SEARCH, "", ["--trial-timeout", "-1"], "--trial-timeout -1.0: must be a finite number >= 0"),
    (SEARCH, "", ["--hang-after", "nan"], "--hang-after nan: must be a finite number >= 0"),
    (SEARCH, "", ["--hang-after", "1.5"], "below 10 s a busy machine's scheduling delays count as a hang"),
    (SEARCH, "", ["--system-metrics", "-1"], "--system-metrics -1.0: must be a finite number >= 0"),
    (SEARCH, "", ["--experiment", "x" * 300], "--experiment"),
    (SEARCH, "", ["--experiment", "../../x"], "--experiment"),
    (SEARCH, "", ["--tracking-uri", "file:///{tmp}/mlruns"], "tracking URI scheme"),
    (SEARCH, "", ["--tracking-uri", "postgresql://u@127.0.0.1/db"], "tracking URI scheme"),
    (SEARCH, "", ["--tracking-uri", "http://127.0.0.1:{port}"], "cannot reach the MLflow tracking server"),
    (SEARCH, "", ["--set", "device=cuda:7"], "device"),
    (SEARCH, "", ["--set", "parent_run=0123456789abcdef0123456789abcdef", "--set", "parent_epoch=2"],
     "no MLflow store at"),
    (SEARCH, "", ["--set", "parent_run={tmp}/nothing", "--set", "parent_epoch=2"], "no checkpoint at"),
    (SEARCH, "ckpt_real", ["--set", "parent_run={tmp}/o", "--set", "parent_epoch=2"],
     "holds epoch 1, not parent_epoch=2"),
    (SEARCH, "", ["--set", "parent_run=not-a-run", "--set", "parent_epoch=2"], "not an MLflow run id"),
    (SEARCH, "", ["--set", "keep_epochs=3,99"], "keep_epochs: epoch 99 is beyond epochs=8"),
    (SEARCH, "", ["--set", "freeze_model=true"], "freeze_model: 'bp' has no auxiliary nets"),
    (TRAIN, "", ["--from-run", "0123456789abcdef", "--from-epoch", "1", "--epochs", "2"], "is a run key"),
    (TRAIN, "ckpt_real", ["--from-run", "{tmp}/o/checkpoint.pt", "--from-epoch", "1", "--d", "16", "--epochs", "2",
                          "--out", "{tmp}/branch"], "changes d"),
    # one run: knobs and flags
    (TRAIN, "", ["--rule", "backprop"], "unknown rule 'backprop'"),
    (TRAIN, "", ["--d", "abc"], "invalid int value"),
    (TRAIN, "", ["--optimizer", "lion"], "invalid choice"),
    (TRAIN, "", ["--device", "gpu0"], "is not a device"),
    (TRAIN, "", ["--bogus", "1"], "unrecognized arguments: --bogus"),
    (TRAIN, "", ["--rule", "scaffold", "--blend-alpha", "1.2"], "blend_alpha: 1.2 must be <= 1"),
    (TRAIN, "", ["--rule", "scaffold", "--aux-kind", "oracle"], "invalid choice: 'oracle'"),
    (TRAIN, "", ["--rule", "scaffold", "--decay-to", "0.5"], "set freeze_after too"),
    (TRAIN, "", ["--rule", "vector_field", "--vf-dirs", "0"], "vf_dirs: 0 must be >= 1"),
    (TRAIN, "", ["--rule", "credit_bridge", "--warmup-ratio", "1"], "warmup_ratio: 1.0 must be < 1"),
    (TRAIN, "", ["--rule", "credit_bridge", "--s-type", "eTT"], "invalid choice: 'eTT'"),
    (TRAIN, "", ["--dataset", "npz", "--data-dir", "/nonexistent/x.npz"], "npz file not found"),
    # checkpoints given to --resume
    (TRAIN, "", ["--resume"], "no checkpoint at"),
    (TRAIN, "ckpt_garbage", ["--resume"], "cannot read checkpoint"),
    (TRAIN, "ckpt_truncated", ["--resume"], "cannot read checkpoint"),
    (TRAIN, "ckpt_empty", ["--resume"], "cannot read checkpoint"),
    (TRAIN, "ckpt_pickle", ["--resume"], "cannot read checkpoint"),
    (TRAIN, "ckpt_foreign", ["--resume"], "is not a raycredit checkpoint"),
    (TRAIN, "ckpt_real", ["--resume", "--d", "16"], "written by a different config (differs in d)"),
    (TRAIN, "ckpt_real", [], "already holds a run; pass --resume"),
]


def undo(kind: str, tmp: Path) -> None:
    if kind in ("store_immutable", "artifacts_immutable"):
        subprocess.run(["chattr", "-i", str(tmp / ("m.db" if kind == "store_immutable" else "artifacts"))],
                       check=True)
    elif kind == "small_disk":
        subprocess.run(["umount", str(tmp / "small")], check=True)


def snapshot(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("tool, kind, argv, words", CASES,
                         ids=[f"{c[0]}-{i}-{c[1] or c[2][0].lstrip('-')}" for i, c in enumerate(CASES)])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, real_checkpoint,
                                                            tool, kind, argv, words):
    setup(kind, tmp_path, real_checkpoint, monkeypatch)
    try:
        check_case(tmp_path, capsys, tool, argv, words)
    finally:
        undo(kind, tmp_path)


def check_case(tmp_path, capsys, tool, argv, words):
    argv = [a.format(port=free_port(), tmp=tmp_path) for a in argv]
    before = snapshot(tmp_path)
    if tool == SEARCH:
        scan = load_search("both_fail_scan")
        base = ["--preset", "smoke", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                "--storage", str(tmp_path / "ray"), "--out", str(tmp_path / "reports")]
        try:
            code = run_search("both_fail_scan", scan.__doc__, scan.PRESETS, argv=base + argv, analysis=None)
        except SystemExit as e:
            code = e.code
    else:
        from raycredit.cli import main

        try:
            code = main(["train", "--out", str(tmp_path / "o"), *TRAIN_TINY, *argv])
        except SystemExit as e:
            code = e.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and words in lines[0], lines
    assert "Traceback" not in captured.err and "unpickled" not in captured.out
    assert snapshot(tmp_path) == before, "bad input wrote files"
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name in ("ray", "reports", "mlflow_runs")]



def test_an_address_that_answers_the_http2_preface_and_then_nothing_exits_2(tmp_path, capsys):
    """A service that sends HTTP/2 SETTINGS and then stays silent (ray.init would wait on it indefinitely,
    holding the experiment's lock): refused in one line within the probe's 5 s."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            conn.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # SETTINGS, then nothing

    threading.Thread(target=serve, daemon=True).start()
    try:
        start = time.time()
        check_case(tmp_path, capsys, SEARCH, ["--address", f"127.0.0.1:{server.getsockname()[1]}"],
                   "answers, but not as a Ray cluster")
        assert time.time() - start < 30
    finally:
        server.close()
        for conn in held:
            conn.close()
