"""`raycredit diagnose`: a logged run's diagnostics recomputed from its MLflow checkpoint, and the null
calibration of feedback-matrix rules. No Ray: the run is logged the way a trial logs it."""

import subprocess
import sys

import pytest

from raycredit import posthoc, tracking
from raycredit.cli import main
from raycredit.config import Config
from raycredit.rules import make_config
from raycredit.train import train

from mlflow_checks import logged_run as logged_trial_run
from mlflow_checks import new_store
from quiet import assert_quiet


def logged_run(tmp_path, cfg: Config) -> tuple[str, str]:
    """(tracking uri, run id) of a finished run of cfg with per-epoch metrics and its final checkpoint."""
    uri = new_store(tmp_path / "mlflow.db")
    return uri, logged_trial_run(uri, "posthoc", cfg, tmp_path)


@pytest.mark.parametrize("rule, null", [("dfa", True), ("fa", True), ("state_bridge", False)])
def test_diagnose_reproduces_every_logged_diagnostic(tmp_path, tiny, capsys, rule, null):
    cfg = make_config({**tiny, "rule": rule, "warmup_ratio": 0.0})
    uri, run_id = logged_run(tmp_path, cfg)
    argv = ["diagnose", "--run-id", run_id, "--tracking-uri", uri, "--null-draws", "3"]
    if rule == "dfa":  # once as a user runs it: a process, whose every line is the user's to read
        p = subprocess.run([sys.executable, "-m", "raycredit.cli", *argv], capture_output=True, text=True,
                           timeout=120)
        code, out = p.returncode, p.stdout
        assert_quiet(p.stdout, p.stderr)
    else:
        code, out = main(argv), capsys.readouterr().out
    assert code == 0, out
    assert "MISMATCH" not in out and "logged diagnostics reproduced" in out
    n = int(out.split("all ")[1].split(" logged")[0])
    assert n >= 4 * (cfg.model.L + 1), out  # cos, rho, nudge, norms per layer at least
    assert ("null calibration: deep_cos" in out) == null


def test_null_calibration_swaps_only_the_feedback_matrices(tmp_path, tiny, monkeypatch):
    """A 'fresh' draw with the training seed is the training B: it must give the training deep_cos exactly;
    other draws give other values."""
    from raycredit.checkpoint import load_checkpoint

    cfg = make_config({**tiny, "rule": "dfa", "seed": 3})
    uri, run_id = logged_run(tmp_path, cfg)
    _, path = tracking.run_checkpoint(uri, run_id, tmp_path / "dl")
    ckpt = load_checkpoint(path)
    monkeypatch.setattr(posthoc, "NULL_SEED_BASE", 3)
    metrics, null = posthoc.rediagnose(ckpt, null_draws=3)
    assert null[0] == metrics["deep_cos"]
    assert null[1] != metrics["deep_cos"] and null[2] != null[1]


def test_null_calibration_of_a_rule_whose_credit_ignores_its_feedback_matrices(tmp_path, tiny):
    """credit_bridge keeps DFA's B for its warm-up; without a warm-up its credit never reads B, so fresh
    draws must leave deep_cos exactly as it was."""
    from raycredit.checkpoint import load_checkpoint

    uri, run_id = logged_run(tmp_path, make_config({**tiny, "rule": "credit_bridge", "warmup_ratio": 0.0}))
    metrics, null = posthoc.rediagnose(load_checkpoint(tracking.run_checkpoint(uri, run_id, tmp_path / "dl")[1]),
                                       null_draws=2)
    assert null == [metrics["deep_cos"]] * 2


def test_diagnose_flags_a_logged_value_it_cannot_reproduce(tmp_path, tiny, capsys):
    from mlflow.tracking import MlflowClient

    cfg = make_config({**tiny, "rule": "dfa"})
    uri, run_id = logged_run(tmp_path, cfg)
    MlflowClient(uri).log_metric(run_id, "deep_rho", 0.5, step=cfg.train.epochs)  # tampered with
    assert main(["diagnose", "--run-id", run_id, "--tracking-uri", uri, "--null-draws", "0"]) == 1
    out = capsys.readouterr().out
    assert "| deep_rho | 0.5 |" in out and "MISMATCH" in out and "differ from the logged values: deep_rho" in out


def test_diagnose_an_unknown_run_exits_2(tmp_path, capsys):
    uri = new_store(tmp_path / "mlflow.db")
    tracking.ensure_experiment(uri, "e")
    capsys.readouterr()
    assert main(["diagnose", "--run-id", "0123456789abcdef", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow run '0123456789abcdef'" in err[0], err


def test_a_checkpoint_naming_a_download_folder_creates_nothing(tiny, tmp_path):
    """A checkpoint whose config says cifar10 into some folder with download on: diagnosing it must neither
    create that folder nor download into it; the missing data is one clear error."""
    from raycredit.errors import DataError
    from raycredit.posthoc import rediagnose

    state = {}
    train(make_config({**tiny, "rule": "dfa", "epochs": 1}), on_epoch=lambda e, m, fn: state.update(fn()))
    target = tmp_path / "elsewhere" / "cifar"
    state["config"]["data"].update(dataset="cifar10", data_dir=str(target), download=True)
    with pytest.raises(DataError, match="not found or corrupted"):
        rediagnose(state)
    assert not (tmp_path / "elsewhere").exists()
