"""Assertions about what a sweep left in MLflow, and runs logged the way a trial logs them (without Ray)."""

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from raycredit.tracking import RUN_KEY_TAG, SUMMARY_TAG

TEMPLATE: list[Path] = []  # this process's empty store, made on first use


def new_store(db: Path) -> str:
    """The sqlite URI of an empty MLflow store at `db`, a copy of one that raycredit's own create_sqlite_store
    made once in this process: creating a store runs MLflow's schema migrations (seconds of CPU), which tests
    that are not about creating a store need not repeat (test_disk and test_bad_input create theirs)."""
    from raycredit.tracking.store import create_sqlite_store

    if not TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="raycredit-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        create_sqlite_store(folder / "mlflow.db")
        TEMPLATE.append(folder / "mlflow.db")
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATE[0], db)
    return f"sqlite:///{db}"


def logged_run(uri: str, experiment: str, cfg, folder) -> str:
    """The run id of cfg trained and logged the way a trial logs it: per-epoch metrics, its final checkpoint
    (written under folder/<config key>/checkpoint.pt)."""
    from raycredit import tracking
    from raycredit.checkpoint import save_checkpoint
    from raycredit.train import train

    run = tracking.TrialRun(uri, tracking.ensure_experiment(uri, experiment), cfg.key(), run_name=cfg.rule.rule,
                            params=cfg.flat(), tags={})
    path = folder / cfg.key() / "checkpoint.pt"
    path.parent.mkdir(parents=True)

    def on_epoch(epoch, metrics, checkpoint_fn):
        run.log_epoch(epoch, metrics)
        save_checkpoint(checkpoint_fn(), path)

    train(cfg, on_epoch=on_epoch)
    run.log_checkpoint(path)
    run.finish()
    return run.run_id


def runs_of(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    return client, client.search_runs([exp.experiment_id], max_results=10000)


def assert_one_complete_run_per_trial(uri: str, experiment: str, n_trials: int, epochs: int):
    """Exactly one FINISHED run per trial, each with params, tags, epochs 1..E once each, a checkpoint
    (runs that summarize the search, such as its plots, are not trials)."""
    client, runs = runs_of(uri, experiment)
    runs = [r for r in runs if SUMMARY_TAG not in r.data.tags]
    keys = [r.data.tags.get(RUN_KEY_TAG) for r in runs]
    assert len(runs) == n_trials and len(set(keys)) == n_trials, (len(runs), len(set(keys)))
    for r in runs:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        assert {"rule", "search", "dataset", "seed", "code_version"} <= set(r.data.tags)
        assert {"rule", "d", "L", "lr", "seed", "epochs"} <= set(r.data.params)
        for metric in ("test_acc", "epoch"):
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, metric))
            assert steps == list(range(1, epochs + 1)), (r.info.run_name, metric, steps)
        arts = [a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")]
        assert arts == ["checkpoint/checkpoint.pt"], arts
    return runs


def trial_checkpoints(store, prefix: str = "sweeps/") -> dict[str, str]:
    """{trial key: object} of the trials' checkpoint files among the objects of `store` (tests/s3server.py's
    S3, tests/gcsserver.py's GCS) under `prefix`."""
    return {k.split("/")[-2]: k for k in store.keys(prefix) if "/checkpoints/" in k and k.endswith("/checkpoint.pt")}


def wait_closed(path: Path, timeout: float = 120) -> None:
    """Wait until no other process has `path` (or its SQLite journal files) open."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    deadline = time.time() + timeout
    while True:
        holders = set()
        for fd in Path("/proc").glob("[0-9]*/fd/*"):
            with contextlib.suppress(OSError):
                if os.readlink(fd) in names:
                    holders.add(fd.parts[2])
        holders.discard(str(os.getpid()))
        if not holders:
            return
        assert time.time() < deadline, f"processes {sorted(holders)} still hold {path}"
        time.sleep(0.5)


