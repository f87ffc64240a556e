"""The sweep engine on the shared local Ray session (2 CPUs, 1 logical GPU)."""

from pathlib import Path

import pytest

from raycredit import engine, tracking
from raycredit.checkpoint import CHECKPOINT_FILE
from raycredit.config import Config
from raycredit.data import load_data
from raycredit.errors import UserError
from raycredit.rules import applied, make_config
from raycredit.search import run_search

from mlflow_checks import assert_one_complete_run_per_trial, new_store, runs_of
from ports import free_port
from searches_loader import load_search


def test_four_quarter_gpu_trials_share_one_gpu_at_once(ray_session, tmp_path):
    uri = new_store(tmp_path / "mlflow.db")
    exp_id = tracking.ensure_experiment(uri, "packing")
    configs = [Config.from_dict(dict(rule="bp", dataset="synthetic", n_train=3000, n_test=200, input_dim=32, d=64,
                                     L=2, epochs=3, probe_size=32, rho_dirs=2, diag_every=3, seed=s, device="cpu"))
               for s in range(4)]
    settings = engine.SweepSettings(search="packing", experiment_id=exp_id, tracking_uri=uri, code_version="test",
                                    cpus_per_trial=0.25, gpus_per_trial=0.25, system_metrics_s=0.2)
    status = engine.run_trials(configs, settings, name="packing", storage=str(tmp_path / "ray"), max_failures=0)
    assert sorted(status.values()) == ["FINISHED"] * 4
    runs = assert_one_complete_run_per_trial(uri, "packing", 4, 3)
    for r in runs:  # MLflow's system metrics, sampled every 0.2 s by each trial
        assert r.data.metrics["system/cpu_utilization_percentage"] >= 0
        assert r.data.metrics["system/system_memory_usage_megabytes"] > 0
    starts = [r.info.start_time for r in runs]
    ends = [r.info.end_time for r in runs]
    assert max(starts) < min(ends), "the four 0.25-GPU trials did not all run at the same time"


def test_resumed_trial_reuses_its_run_and_skips_logged_epochs(tmp_path):
    uri = new_store(tmp_path / "mlflow.db")
    exp = tracking.ensure_experiment(uri, "dedup")
    kw = dict(run_name="r", params={"a": 1}, tags={"rule": "bp"})
    first = tracking.TrialRun(uri, exp, "key1", **kw)
    for e in (1, 2, 3):
        first.log_epoch(e, {"epoch": e, "test_acc": 0.1 * e})
    again = tracking.TrialRun(uri, exp, "key1", **kw)  # as after a crash: same key, the run is still RUNNING
    assert again.run_id == first.run_id and again.last_epoch == 3
    for e in (2, 3, 4):
        again.log_epoch(e, {"epoch": e, "test_acc": 0.1 * e})
    again.finish()
    client, runs = runs_of(uri, "dedup")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "test_acc")) == [1, 2, 3, 4]


def test_address_auto_without_a_live_cluster_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    scan = load_search("both_fail_scan")
    db = tmp_path / "m.db"
    code = run_search("both_fail_scan", scan.__doc__, scan.PRESETS, analysis=None, argv=[
        "--preset", "smoke", "--address", "auto", "--tracking-uri", f"sqlite:///{db}", "--storage", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot reach a Ray cluster" in err[0], err
    assert not db.exists()


def test_run_found_without_params_gets_them(tmp_path):
    """A trial killed right after create_run leaves a keyed run with no params; its retry must add them."""
    from mlflow.tracking import MlflowClient

    uri = new_store(tmp_path / "mlflow.db")
    exp = tracking.ensure_experiment(uri, "orphan")
    MlflowClient(uri).create_run(exp, tags={tracking.RUN_KEY_TAG: "k"})
    run = tracking.TrialRun(uri, exp, "k", run_name="r", params={"d": 8, "rule": "fa"}, tags={})
    assert MlflowClient(uri).get_run(run.run_id).data.params == {"d": "8", "rule": "fa"}
    again = tracking.TrialRun(uri, exp, "k", run_name="r", params={"d": 8, "rule": "fa"}, tags={})
    assert again.run_id == run.run_id


def test_two_trials_logging_one_dataset_at_once_both_get_it(tmp_path):
    """MLflow looks a dataset up, then inserts it: a second trial inserting the same dataset in between (as
    concurrent trials did in CI) makes the first one's insert fail on the unique key; it must retry and reuse it."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset
    from mlflow.tracking import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    uri = new_store(tmp_path / "mlflow.db")
    exp = tracking.ensure_experiment(uri, "inputs")
    first, second = (tracking.TrialRun(uri, exp, k, run_name=k, params={}, tags={}) for k in ("a", "b"))
    dataset = ("synthetic", "0123456789", {"n_train": 10}, {"x_train": [10, 4]})
    raced = []

    def other_trial_inserts_first(session, context, instances):
        if not raced and any(isinstance(o, SqlDataset) for o in session.new):
            raced.append(True)
            second.log_dataset(*dataset)

    event.listen(Session, "before_flush", other_trial_inserts_first)
    try:
        first.log_dataset(*dataset)
    finally:
        event.remove(Session, "before_flush", other_trial_inserts_first)
    assert raced
    client = MlflowClient(uri)
    ids = {r: [i.dataset.digest for i in client.get_run(r.run_id).inputs.dataset_inputs] for r in (first, second)}
    assert ids == {first: ["0123456789"], second: ["0123456789"]}


def test_a_diverging_trial_is_recorded_and_the_sweep_finishes(ray_session, tmp_path):
    import torch

    from analysis import summary
    from raycredit.checkpoint import load_checkpoint

    uri = new_store(tmp_path / "mlflow.db")
    exp_id = tracking.ensure_experiment(uri, "diverge")
    base = dict(rule="bp", dataset="synthetic", n_train=512, n_test=128, input_dim=16, d=16, L=2, epochs=4,
                probe_size=32, rho_dirs=2, device="cpu")
    blowup = make_config({**base, "optimizer": "sgd", "lr": 10.0, "clip_norm": 0.0})  # finite epoch 1, then inf
    fine = Config.from_dict(base)
    settings = engine.SweepSettings(search="diverge", experiment_id=exp_id, tracking_uri=uri, code_version="test",
                                    cpus_per_trial=1, gpus_per_trial=0)
    status = engine.run_trials([blowup, fine], settings, name="diverge", storage=str(tmp_path / "ray"),
                               max_failures=0)
    assert status == {blowup.key(): "FINISHED", fine.key(): "FINISHED"}
    client, runs = runs_of(uri, "diverge")
    by_key = {r.data.tags[tracking.RUN_KEY_TAG]: r for r in runs}
    bad, good = by_key[blowup.key()], by_key[fine.key()]
    assert bad.info.status == "FINISHED" and bad.data.tags["diverged"] == "1"
    assert bad.data.metrics["diverged"] == 1.0 and bad.data.metrics["epoch"] == 2
    steps = [m.step for m in client.get_metric_history(bad.info.run_id, "train_loss")]
    assert steps == [1, 2]  # its metrics are kept up to the blow-up
    assert good.data.tags["diverged"] == "0" and good.data.metrics["epoch"] == 4
    # the diverged run keeps its last finite checkpoint: epoch 1's
    ckpt = load_checkpoint(client.download_artifacts(bad.info.run_id, "checkpoint/checkpoint.pt", str(tmp_path)))
    assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    # and the analysis reads the store as usual
    text = summary.run(uri, "diverge", tmp_path / "report")
    rows = [line for line in text.splitlines() if line.startswith("| bp ")]
    assert sorted(r.strip(" |").rsplit("|", 1)[-1].strip() for r in rows) == ["0.000", "1.000"], rows  # diverged


def test_sweep_logs_to_an_mlflow_server_and_prints_no_credential(ray_session, tmp_path, mlflow_server, capfd):
    """The URI carries a password (as a user might paste it): the sweep works, and the password appears in no
    output of the driver and in no log of the trials' workers."""
    secret = "s3cr3t-" + tmp_path.name
    with_password = mlflow_server.replace("http://", f"http://alice:{secret}@")
    scan = load_search("both_fail_scan")
    rc = scan.main(["--preset", "smoke", "--seeds", "0", "--set", "d=16", "--set", "L=2", "--epochs", "2",
                    "--set", "n_train=500", "--set", "credit_norm=true", "--tracking-uri", with_password,
                    "--storage", str(tmp_path / "ray"),
                    "--out", str(tmp_path / "report"), "--gpus-per-trial", "0", "--experiment", "served"])
    assert rc == 0
    assert_one_complete_run_per_trial(mlflow_server, "served", 4, 2)
    assert "d=16 L=2 credit_norm=True: " in (tmp_path / "report" / "both_fail.md").read_text()
    out, err = capfd.readouterr()
    assert "http://***@127.0.0.1" in out and secret not in out + err
    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaked, leaked
    # nor in the sweep's storage: Tune pickles its state (the trials, the tuner) there
    stored = [str(p) for p in (tmp_path / "ray").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not stored, stored


def interrupted_trial(tmp_path, name: str, epochs: int):
    """A one-trial sweep `name` as a killed driver leaves it: (uri, cfg, settings, the trial's run, the trial's
    checkpoint folder), the run open and the folder empty; the test fills both."""
    uri = new_store(tmp_path / "mlflow.db")
    exp_id = tracking.ensure_experiment(uri, name)
    cfg = Config.from_dict(dict(rule="dfa", dataset="synthetic", n_train=256, n_test=64, input_dim=8, d=8, L=1,
                                epochs=epochs, probe_size=16, rho_dirs=2, device="cpu"))
    settings = engine.SweepSettings(search=name, experiment_id=exp_id, tracking_uri=uri, code_version="test",
                                    cpus_per_trial=1, gpus_per_trial=0)
    run = tracking.TrialRun(uri, exp_id, cfg.key(), run_name=name, params=cfg.flat(), tags={
        "rule": "dfa", "search": name, "dataset": "synthetic", "seed": 0, "code_version": "test"})
    folder = tmp_path / "ray" / name / "checkpoints" / cfg.key()
    folder.mkdir(parents=True)
    return uri, cfg, settings, run, folder


def test_trial_killed_after_its_last_checkpoint_finishes_on_resume(ray_session, tmp_path):
    """The driver died after the trial saved its final checkpoint but before its run was closed."""
    from raycredit.checkpoint import save_checkpoint
    from raycredit.train import train

    uri, cfg, settings, run, folder = interrupted_trial(tmp_path, "late", 2)

    def log_and_save(epoch, metrics, fn):
        run.log_epoch(epoch, metrics)
        save_checkpoint(fn(), folder / CHECKPOINT_FILE)

    expected = train(cfg, on_epoch=log_and_save)["final"]
    status = engine.run_trials([cfg], settings, name="late", storage=str(tmp_path / "ray"), max_failures=0)
    assert status == {cfg.key(): "FINISHED"}
    runs = assert_one_complete_run_per_trial(uri, "late", 1, 2)
    assert runs[0].data.metrics["test_acc"] == expected["test_acc"]
    assert not folder.exists()  # removed once the final checkpoint is in MLflow


def test_node_local_storage_on_a_multi_node_cluster_exits_2_and_leaves_nothing(ray_session, tmp_path, capsys,
                                                                              monkeypatch):
    """The probe itself runs on real nodes in test_cluster's node-loss test; here one node cannot see
    the storage folder, as when each node of a cluster has its own disk."""
    def one_node_blind(storage: str) -> dict:
        Path(storage).mkdir(parents=True, exist_ok=True)  # as the real probe does
        return {"10.0.0.1 (node aaaaaaaa)": True, "10.0.0.2 (node bbbbbbbb)": False}

    monkeypatch.setattr(engine.cluster, "storage_visibility", one_node_blind)
    scan = load_search("both_fail_scan")
    db = tmp_path / "m.db"
    code = run_search("both_fail_scan", scan.__doc__, scan.PRESETS, analysis=None, argv=[
        "--preset", "smoke", "--tracking-uri", f"sqlite:///{db}", "--storage", str(tmp_path / "local" / "ray")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "is node-local: 1 of 2 nodes cannot read it (10.0.0.2 (node bbbbbbbb))" in err[0], err
    assert not db.exists() and not (tmp_path / "local").exists()


def test_16_trials_log_every_epoch_into_sqlite_without_losing_a_point(ray_session, tmp_path):
    """Eight trials at a time write to one SQLite store, twice over; every metric point of every epoch arrives."""
    import sqlite3

    from raycredit.train import train

    uri = new_store(tmp_path / "mlflow.db")
    exp_id = tracking.ensure_experiment(uri, "load")
    rules = ("bp", "fa", "dfa", "frozen")
    configs = [Config.from_dict(dict(rule=rules[s % 4], dataset="synthetic", n_train=256, n_test=64, input_dim=8,
                                     d=8, L=2, epochs=3, probe_size=16, rho_dirs=2, seed=s, device="cpu"))
               for s in range(16)]
    settings = engine.SweepSettings(search="load", experiment_id=exp_id, tracking_uri=uri, code_version="test",
                                    cpus_per_trial=0.125, gpus_per_trial=0)
    status = engine.run_trials(configs, settings, name="load", storage=str(tmp_path / "ray"), max_failures=0)
    assert status == {c.key(): "FINISHED" for c in configs}
    runs = assert_one_complete_run_per_trial(uri, "load", 16, 3)
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    concurrent = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert concurrent >= 4, concurrent

    points_per_run = {c.rule.rule: sum(len(h) for h in train(c)["history"]) for c in configs[:4]}
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        logged = con.execute("SELECT COUNT(*) FROM metrics JOIN runs ON metrics.run_uuid = runs.run_uuid "
                             "WHERE runs.experiment_id = ?", (int(exp_id),)).fetchone()[0]
    assert logged == sum(points_per_run[c.rule.rule] for c in configs)
    # params are the config's knobs that apply to the run's rule and nothing else (no URIs, tokens or
    # environment); tags are raycredit's own
    for r in runs:
        assert set(r.data.params) == set(applied(next(c for c in configs if c.key() == r.data.tags[
            tracking.RUN_KEY_TAG]).flat()))
        assert {t for t in r.data.tags if not t.startswith("mlflow.")} == {
            "rule", "search", "dataset", "seed", "code_version", "n_classes", "diverged", tracking.RUN_KEY_TAG,
            tracking.ATTEMPT_TAG, tracking.NODE_TAG, tracking.PID_TAG, tracking.DEVICE_TAG}
        assert r.data.tags[tracking.DEVICE_TAG] == "cpu"  # the device used (these configs ask for cpu)


def test_a_population_trial_logs_each_member_as_its_own_run(ray_session, tmp_path):
    """Three configs in one trial: each member has the run a separate trial would have, the diverging one included."""
    import torch

    from raycredit.checkpoint import load_checkpoint
    from raycredit.train import train

    uri = new_store(tmp_path / "mlflow.db")
    exp_id = tracking.ensure_experiment(uri, "pop")
    base = dict(rule="bp", dataset="synthetic", n_train=512, n_test=128, input_dim=16, d=16, L=2, epochs=3,
                probe_size=32, rho_dirs=2, optimizer="sgd", clip_norm=0.0, device="cpu")
    configs = [make_config({**base, "lr": lr, "seed": s}) for lr, s in ((0.05, 0), (10.0, 0), (0.05, 1))]
    settings = engine.SweepSettings(search="pop", experiment_id=exp_id, tracking_uri=uri, code_version="test",
                                    cpus_per_trial=1, gpus_per_trial=0)
    storage = tmp_path / "ray"
    status = engine.run_trials(configs, settings, name="pop", storage=str(storage), max_failures=0, population=3)
    assert status == {c.key(): "FINISHED" for c in configs}
    client, runs = runs_of(uri, "pop")
    by_key = {r.data.tags[tracking.RUN_KEY_TAG]: r for r in runs}
    assert set(by_key) == {c.key() for c in configs}
    assert len({r.data.tags[tracking.POPULATION_TAG] for r in runs}) == 1  # one trial trained them all
    for cfg in configs:
        run = by_key[cfg.key()]
        assert run.info.status == "FINISHED" and run.data.params == {k: str(v) for k, v in applied(cfg.flat()).items()}
        assert run.info.run_name == engine.run_label(cfg)
        alone = train(cfg)["history"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_loss")]
        assert steps == list(range(1, len(alone) + 1))
        ckpt = load_checkpoint(client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt",
                                                         str(tmp_path / cfg.key())))
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
        if cfg.train.lr == 10.0:
            assert run.data.tags["diverged"] == "1" and ckpt["epoch"] == len(alone) - 1  # its last finite state
        else:
            assert run.data.tags["diverged"] == "0" and ckpt["epoch"] == 3
            for k in ("test_loss", "test_acc", "deep_cos", "train_loss"):
                assert run.data.metrics[k] == pytest.approx(alone[-1][k], rel=1e-4, abs=1e-5), k
    assert not any((storage / "pop" / "checkpoints").iterdir())  # nothing left once every member is in MLflow


def test_a_population_trial_resumes_from_its_checkpoint(ray_session, tmp_path):
    """An attempt died after epoch 1: the next continues every member's run, exactly as if uninterrupted."""
    import copy

    from raycredit.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from raycredit.population import population_key, train_population

    uri = new_store(tmp_path / "mlflow.db")
    exp_id = tracking.ensure_experiment(uri, "popres")
    base = dict(rule="fa", dataset="synthetic", n_train=512, n_test=128, input_dim=16, d=16, L=2, epochs=3,
                probe_size=32, rho_dirs=2, device="cpu")
    configs = [make_config({**base, "seed": s}) for s in (0, 1)]
    settings = engine.SweepSettings(search="popres", experiment_id=exp_id, tracking_uri=uri, code_version="test",
                                    cpus_per_trial=1, gpus_per_trial=0)
    runs = [engine.open_run(settings, c, c.key(), engine.run_label(c), load_data(c.data)) for c in configs]
    at_1 = {}

    def first_attempt(epoch, results, checkpoint_fn):
        if epoch == 1:
            for run, m in zip(runs, results, strict=True):
                run.log_epoch(epoch, m)
            at_1.update(copy.deepcopy(dict(zip((c.key() for c in configs), checkpoint_fn(), strict=True))))

    expected = train_population(configs, on_epoch=first_attempt)
    folder = tmp_path / "ray" / "popres" / "checkpoints" / population_key(configs)
    folder.mkdir(parents=True)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "population": at_1}, folder / CHECKPOINT_FILE)
    status = engine.run_trials(configs, settings, name="popres", storage=str(tmp_path / "ray"), max_failures=0,
                               population=2)
    assert status == {c.key(): "FINISHED" for c in configs}
    logged = {r.data.tags[tracking.RUN_KEY_TAG]: r for r in assert_one_complete_run_per_trial(uri, "popres", 2, 3)}
    for cfg, want in zip(configs, expected, strict=True):
        run = logged[cfg.key()]
        assert run.data.tags[tracking.RESUMED_TAG] == "1" and run.data.tags[tracking.ATTEMPT_TAG] == "2"
        assert {k: v for k, v in run.data.metrics.items() if k != "time_s"} == \
               {k: v for k, v in want["final"].items() if k != "time_s"}


@pytest.mark.parametrize("argv, words", [
    (["--cpus-per-trial", "100"], "--cpus-per-trial 100: no node of the Ray cluster has that many CPUs (the largest "
                                  "has 1)"),
    (["--gpus-per-trial", "2"], "--gpus-per-trial 2: no node of the Ray cluster has that many GPUs (the largest "
                                "has 1)"),
])
def test_trial_resources_no_node_has_exit_2_instead_of_hanging(ray_session, tmp_path, capsys, argv, words):
    scan = load_search("both_fail_scan")
    db = tmp_path / "m.db"
    code = run_search("both_fail_scan", scan.__doc__, scan.PRESETS, analysis=None, argv=[
        "--preset", "smoke", "--tracking-uri", f"sqlite:///{db}", "--storage", str(tmp_path / "ray"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not db.exists() and not (tmp_path / "ray").exists()


class Plant:
    """Unpickling this writes a marker file: proof that code from the storage folder ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("code from the storage folder ran",))


@pytest.mark.parametrize("search, words", [("both_fail_scan", None),
                                           ("optuna_scaffold", "belongs to another user")])
def test_a_planted_tune_state_file_is_not_unpickled_on_resume(ray_session, tmp_path, capsys, search, words):
    """A grid sweep never reads Tune's saved state (its trials resume from raycredit's checkpoints and MLflow
    runs): it resumes past a planted tuner.pkl. An Optuna search must restore its searcher from that state, so
    it refuses state files that someone else owns or could rewrite, with one line."""
    import os
    import pickle

    scan = load_search(search)
    new_store(tmp_path / "m.db")
    argv = ["--preset", "smoke", "--seeds", "0", "--epochs", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
            "--storage", str(tmp_path / "ray"), "--gpus-per-trial", "0", "--no-analysis"]
    optuna = search == "optuna_scaffold"
    argv += (["--num-samples", "1", "--set", "d=8", "--set", "L=2", "--set", "n_train=100"] if optuna
             else ["--set", "d=16", "--set", "L=2", "--set", "n_train=200", "--set", "credit_norm=true"])
    if optuna:  # in its own process: Tune pickles the search's space, which a module loaded by path is not
        import subprocess
        import sys

        from searches_loader import ROOT

        first = subprocess.run([sys.executable, str(ROOT / "searches" / f"{search}.py"), *argv], cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
    else:
        assert scan.main(argv) == 0
    [sweep] = [p for p in (tmp_path / "ray").iterdir() if p.is_dir()]
    marker = tmp_path / "pwned"
    state = sweep / "tuner.pkl"
    state.write_bytes(pickle.dumps(Plant(str(marker))))
    os.chown(state, 12345, 12345)
    capsys.readouterr()
    if words is None:
        client, runs = runs_of(f"sqlite:///{tmp_path / 'm.db'}", "both_fail_scan-smoke")
        client.set_terminated(runs[0].info.run_id, "FAILED")  # one run to train again: the sweep resumes in Tune
        assert scan.main(argv) == 0
        assert "configs already have a finished run" in capsys.readouterr().out
    else:
        assert scan.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and str(state) in err[0], err
    assert not marker.exists()


def test_tune_state_that_another_user_could_rewrite_is_not_trusted(tmp_path):
    (tmp_path / "sub").mkdir()
    engine.check_trusted(str(tmp_path))
    (tmp_path / "sub" / "searcher-state.pkl").write_bytes(b"")
    (tmp_path / "sub" / "searcher-state.pkl").chmod(0o666)
    with pytest.raises(UserError, match="searcher-state.pkl is writable by every user"):
        engine.check_trusted(str(tmp_path))
    (tmp_path / "sub" / "searcher-state.pkl").chmod(0o664)  # the group is trusted
    engine.check_trusted(str(tmp_path))


def test_a_sweep_whose_store_was_lost_is_refused_not_resumed_mid_way(ray_session, tmp_path, capsys):
    """Runs lost, then the whole store deleted, between an interruption and the re-run: one line each, exit 2,
    no run whose history starts mid-way. (A finished trial's checkpoint folder is gone, so the lost run of a
    trial is seen through a trial that still has its checkpoint: one is put back here as an interrupted trial
    leaves it.)"""
    import shutil
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from searches_loader import ROOT

    db = tmp_path / "m.db"
    new_store(db)
    scan = load_search("both_fail_scan")
    argv = ["--preset", "smoke", "--seeds", "0", "--set", "d=16", "--set", "L=2", "--epochs", "1",
            "--set", "n_train=200", "--set", "credit_norm=true", "--tracking-uri", f"sqlite:///{db}",
            "--storage", str(tmp_path / "ray"), "--gpus-per-trial", "0", "--no-analysis", "--experiment", "lost"]
    assert scan.main(argv) == 0
    [sweep] = [p for p in (tmp_path / "ray").iterdir() if p.is_dir()]

    def refused(words: str) -> None:
        # the re-run is a new process, as a user's is (this one's MLflow client keeps a deleted file open)
        p = subprocess.run([sys.executable, str(ROOT / "searches" / "both_fail_scan.py"), *argv], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        err = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(err) == 1 and words in err[0] and "--tracking-uri" in err[0], \
            p.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("lost").experiment_id])[0]
    (sweep / "checkpoints" / run.data.tags[tracking.RUN_KEY_TAG]).mkdir(parents=True)
    client.delete_run(run.info.run_id)
    refused("1 runs of the sweep")
    for f in tmp_path.glob("m.db*"):
        f.unlink()
    shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)
    refused("was started with another tracking store")


def test_a_truncated_trial_checkpoint_is_set_aside_and_the_trial_starts_over(ray_session, tmp_path):
    """A trial's checkpoint cut short (a full disk, a crash mid-copy): set aside, noted on the run, and the
    trial trains from scratch once, to a complete run equal to an uninterrupted one, instead of failing."""
    from raycredit.checkpoint import save_checkpoint
    from raycredit.train import train

    uri, cfg, settings, run, folder = interrupted_trial(tmp_path, "cut", 3)
    path = folder / CHECKPOINT_FILE
    expected = {}

    def log_and_save(epoch, metrics, fn):
        expected[epoch] = metrics
        if epoch == 1:  # the trial's first epoch reached the store and the disk, then it died
            run.log_epoch(epoch, metrics)
            save_checkpoint(fn(), path)

    train(cfg, on_epoch=log_and_save)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    status = engine.run_trials([cfg], settings, name="cut", storage=str(tmp_path / "ray"), max_failures=0)
    assert status == {cfg.key(): "FINISHED"}
    [done] = assert_one_complete_run_per_trial(uri, "cut", 1, 3)
    assert done.data.metrics["test_acc"] == expected[3]["test_acc"]
    aside = done.data.tags[engine.SET_ASIDE_TAG]
    assert ".corrupt-" in aside and Path(aside).exists() and not folder.exists()


def test_a_frozen_trial_is_killed_as_hung_and_retried_from_its_checkpoint(ray_session, tmp_path, capsys):
    """SIGSTOP a trial's worker mid-sweep (as a hung NFS read or a wedged GPU would freeze it): its heartbeat
    stops, the watch kills it after --hang-after, Tune retries it from its checkpoint, and the sweep finishes with
    one complete run."""
    import os
    import signal
    import threading
    import time

    from mlflow.tracking import MlflowClient

    uri = new_store(tmp_path / "m.db")
    stopped = []

    def freeze_once_epoch_2_is_logged():
        deadline = time.time() + 120
        while time.time() < deadline and not stopped:
            try:
                client = MlflowClient(uri)
                exp = client.get_experiment_by_name("hung")
                runs = client.search_runs([exp.experiment_id]) if exp else []
            except Exception:  # the store is being created
                runs = []
            for r in runs:
                if r.data.metrics.get("epoch", 0) >= 2 and "raycredit.pid" in r.data.tags:
                    os.kill(int(r.data.tags["raycredit.pid"]), signal.SIGSTOP)
                    stopped.append(r.info.run_id)
                    return
            time.sleep(0.2)

    # the store exists before the watcher opens it: two first openings of one SQLite store race in its migrations
    tracking.ensure_experiment(uri, "hung")
    watcher = threading.Thread(target=freeze_once_epoch_2_is_logged, daemon=True)
    watcher.start()
    scan = load_search("both_fail_scan")
    rc = scan.main(["--preset", "smoke", "--seeds", "0", "--set", "rule=dfa", "--set", "d=16", "--set", "L=2",
                    "--set", "credit_norm=true", "--set", "checkpoint_every=1", "--epochs", "6",
                    "--set", "n_train=2000", "--tracking-uri", uri, "--storage", str(tmp_path / "ray"),
                    "--gpus-per-trial", "0", "--hang-after", "10", "--experiment", "hung", "--no-analysis"])
    watcher.join(timeout=5)
    out = capsys.readouterr().out
    assert rc == 0 and stopped, out[-3000:]
    assert "is hung: its process has not run for" in out and "killed, it is retried from its checkpoint" in out
    [run] = assert_one_complete_run_per_trial(uri, "hung", 1, 6)
    assert run.info.run_id == stopped[0] and run.data.tags[tracking.ATTEMPT_TAG] == "2"
    # from a checkpoint, not from scratch: epoch 1's or 2's (epoch 2's metrics are logged just before its
    # checkpoint is written, and the freeze may land in between)
    assert int(run.data.tags[tracking.RESUMED_TAG]) >= 1


def test_a_tracking_server_holds_one_driver_lock_per_experiment(mlflow_server):
    """Drivers that share only a tracking server (different --storage, different hosts): the second is
    refused while the first is alive, a dead driver's claim goes stale and is taken over, and a driver that
    was frozen past the stale limit learns that it lost the lock."""
    import json
    import time

    first, second = {"host": "a", "pid": 1, "since": "t1"}, {"host": "b", "pid": 2, "since": "t2"}
    with tracking.server_lock(mlflow_server, "exp", first):
        with pytest.raises(UserError, match=r"another driver is training into experiment 'exp' \(pid 1 on a"):
            with tracking.server_lock(mlflow_server, "exp", second):
                pass
        with tracking.server_lock(mlflow_server, "other", second):  # another experiment is free
            pass
    with tracking.server_lock(mlflow_server, "exp", second):  # released
        pass
    with tracking.server_lock(mlflow_server, "exp", first, heartbeat_s=0.3, stale_s=1.0):
        time.sleep(1.5)  # renewed, so not stale
        with pytest.raises(UserError):
            with tracking.server_lock(mlflow_server, "exp", second, stale_s=1.0):
                pass
    # a killed driver renews nothing: its claim goes stale and the next driver takes over
    dead = tracking.server_lock(mlflow_server, "exp", first, heartbeat_s=3600, stale_s=1.0)
    dead.__enter__()
    time.sleep(1.2)
    with tracking.server_lock(mlflow_server, "exp", second, stale_s=1.0):
        pass
    dead.__exit__(None, None, None)
    # a driver frozen past the stale limit wakes up: its next renewal finds the newer claim and says so
    lost = []
    with tracking.server_lock(mlflow_server, "exp3", first, heartbeat_s=0.2, on_lost=lost.append):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(mlflow_server)
        prefix = tracking.lock_prefix("exp3")
        [held] = client.search_registered_models(filter_string=f"name LIKE '{prefix}%'")
        client.create_registered_model(f"{prefix}{int(held.name[len(prefix):]) + 1:06d}", tags={
            "state": "held", "heartbeat": str(time.time()), "holder": json.dumps(second)})
        deadline = time.time() + 10
        while not lost and time.time() < deadline:
            time.sleep(0.1)
    assert len(lost) == 1 and "lost its lock of experiment 'exp3'" in lost[0] and "(pid 2 on b" in lost[0], lost


def test_a_branch_whose_parent_checkpoint_is_bad_fails_alone_in_its_population(ray_session, tmp_path, capsys):
    """Two trunks (seeds 0 and 1) keep epoch 1; seed 0's kept checkpoint is then truncated in the artifact store.
    The branches train as one population of two: seed 1's branch finishes, seed 0's fails alone with one line
    naming its parent run (not a temporary path), and no traceback."""
    from raycredit.search import Branch, Preset

    fixed = {"dataset": "synthetic", "d": 16, "L": 2, "n_train": 256, "n_test": 128, "epochs": 3, "probe_size": 32,
             "rho_dirs": 2, "checkpoint_every": 3}
    trunks = {"rule": ["dfa"], "seed": [0, 1]}
    presets = {"trunks": Preset(grid=trunks, fixed={**fixed, "keep_epochs": "1"}, doc="the trunks"),
               "smoke": Preset(grid=trunks, fixed=fixed, doc="trunks and branches",
                               branches=(Branch(of={"parent_run": [""]}, at=(1,), grid={"rule": ["bp"]}),))}
    uri = new_store(tmp_path / "mlflow.db")
    argv = ["--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--gpus-per-trial", "0", "--experiment",
            "bad_parent", "--population", "2"]
    assert run_search("bad_parent", "", presets, default_preset="smoke", argv=["--preset", "trunks", *argv],
                      analysis=None) == 0
    client, runs = runs_of(uri, "bad_parent")
    [bad] = [r for r in runs if r.data.tags["seed"] == "0"]
    [kept] = list(tmp_path.glob(f"**/{bad.info.run_id}/artifacts/checkpoint/epoch-1/checkpoint.pt"))
    kept.write_bytes(kept.read_bytes()[:100])
    capsys.readouterr()
    code = run_search("bad_parent", "", presets, default_preset="smoke", argv=["--preset", "smoke", *argv],
                      analysis=None)
    out, err = capsys.readouterr()
    client, runs = runs_of(uri, "bad_parent")
    branches = {r.data.tags["seed"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert branches["1"].info.status == "FINISHED", out[-2000:]
    assert branches["0"].info.status == "FAILED" and code == 1
    reason = branches["0"].data.tags[engine.FAILURE_TAG]
    assert f"parent run {bad.info.run_id}" in reason and "/tmp" not in reason.split("parent run")[0]
    assert "Traceback" not in out + err
