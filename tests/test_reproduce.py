"""searches/reproduce.py: its plan and bad input (no Ray), and a shrunk reproduction killed twice at random
points that finishes every run once, with the numbers of an uninterrupted run and one report."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_checks import assert_one_complete_run_per_trial, new_store, runs_of
from quiet import assert_quiet
from searches_loader import ONE_AT_A_TIME, ROOT, load_search


def test_list_prints_every_stage_with_its_trials_and_starts_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_search("reproduce").main(["--preset", "smoke", "--list"]) == 0
    out = capsys.readouterr().out
    for stage, trials in (("audit", 14), ("both_fail_scan", 48), ("toy_lq", 8), ("handoff", 26)):
        line = next(x for x in out.splitlines() if x.startswith(stage + " "))
        assert line.split()[1:3] == ["smoke", str(trials)], line
    assert not list(tmp_path.iterdir())  # no store, no storage, no report


@pytest.mark.parametrize("flag", ["--only", "--skip"])
def test_an_unknown_stage_exits_2_naming_the_stages(flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_search("reproduce").main(["--preset", "smoke", flag, "audit,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown stage nope; the stages: audit, both_fail_scan," in err[0], err
    assert not list(tmp_path.iterdir())


def test_the_stages_share_one_ray_instance_stopped_once_after_the_last(tmp_path, capsys, monkeypatch):
    """Each stage's search connects and disconnects as it would alone; inside the reproduction the instance the
    first stage started stays up for the next, and is stopped once, after the last stage (no Ray here: the
    stages are stand-ins that do what a search does with the connection)."""
    import ray

    from raycredit import reproduce
    from raycredit.engine import cluster

    monkeypatch.chdir(tmp_path)
    events = []
    monkeypatch.setattr(ray, "shutdown", lambda: events.append("shutdown"))
    monkeypatch.setattr(reproduce, "print_plan", lambda *a, **k: None)

    def stage(p):
        if not cluster.STARTED["local"]:  # what `connect` does when Ray is not yet running here
            cluster.STARTED["local"] = True
            events.append("start")
        events.append(p.name)
        cluster.disconnect()  # what every search does as it ends
        return 0

    monkeypatch.setattr(reproduce, "run_stage", stage)
    drv = load_search("reproduce")
    assert reproduce.run(drv.__doc__, drv.PRESETS, lambda *a, **k: {}, [
        "--preset", "smoke", "--only", "toy_lq,handoff", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    assert events == ["start", "toy_lq", "handoff", "shutdown"], events
    assert capsys.readouterr().out.count("stopping the local Ray instance") == 1
    assert cluster.KEPT == [0] and not cluster.STARTED["local"]


DRIVER = '''
import sys
from analysis import verify
from raycredit.reproduce import Plan, Stage, run
PRESETS = {"smoke": Plan("two stages", (Stage("toy_lq", "smoke", ("--seeds", "0,1", "--epochs", "4")),
                                        Stage("scaffold_blend", "smoke", ("--seeds", "0", "--epochs", "3",
                                                                          "--set", "n_train=500"))))}
sys.exit(run("a shrunk reproduction", PRESETS, verify.run))
'''


def finished(uri: str, experiment: str) -> int:
    try:
        _, runs = runs_of(uri, experiment)
    except Exception:  # the store or the experiment may not exist yet
        return 0
    return sum(r.info.status == "FINISHED" for r in runs)


@pytest.mark.system
def test_a_reproduction_killed_twice_at_random_points_finishes_every_run_once(tmp_path):
    """SIGKILL of the driver once k1 runs of the first stage have finished and once k2 of the second have (k1,
    k2 drawn at random); the same command then skips the finished stage, finishes the other, and writes the
    report. Every run exists once with every epoch once, their numbers are those of uninterrupted training,
    and the report's tables are what verify.py derives from the store again."""
    import torch

    from analysis import verify
    from raycredit.search import expand
    from raycredit.tracking import RUN_KEY_TAG
    from raycredit.train import train

    (tmp_path / "driver.py").write_text(DRIVER)
    uri = new_store(tmp_path / "mlflow_runs" / "mlflow.db")
    cmd = [sys.executable, str(tmp_path / "driver.py"), "--preset", "smoke", "--tracking-uri", uri,
           "--gpus-per-trial", "0", *ONE_AT_A_TIME]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seed = time.time_ns()
    rng = random.Random(seed)
    for experiment, k in (("reproduce-smoke-toy_lq", rng.randint(1, 6)), ("reproduce-smoke-scaffold_blend",
                                                                          rng.randint(1, 4))):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        deadline = time.time() + 300
        while finished(uri, experiment) < k:
            assert proc.poll() is None and time.time() < deadline, (seed, k, proc.communicate()[1][-3000:])
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (seed, done.stdout[-3000:], done.stderr[-3000:])
    assert_quiet(done.stdout, done.stderr)  # every stage's search and analyses, and the verdicts
    assert "toy_lq: all 8 runs already finished" in done.stdout, (seed, done.stdout[-3000:])
    assert_one_complete_run_per_trial(uri, "reproduce-smoke-toy_lq", 8, 4)
    assert_one_complete_run_per_trial(uri, "reproduce-smoke-scaffold_blend", 5, 3)

    _, runs = runs_of(uri, "reproduce-smoke-toy_lq")
    by_key = {r.data.tags[RUN_KEY_TAG]: r for r in runs}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as in the trials (ONE_AT_A_TIME)
    try:
        for cfg in expand(load_search("toy_lq").PRESETS["smoke"], {"seed": [0, 1], "epochs": 4})[:3]:
            expected = train(cfg)["final"]
            assert expected["train_loss"] == expected["train_loss"]  # toy_lq has a loss, no accuracy (NaN)
            for name in ("train_loss", "test_loss", "deep_cos", "deep_rho"):
                assert by_key[cfg.key()].data.metrics[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12,
                                                                                  nan_ok=True)
    finally:
        torch.set_num_threads(threads)

    report = (tmp_path / "reports" / "reproduce-smoke" / "reproduction_smoke.md").read_text()
    assert "claims reproduced" in report and "smoke scale — checks the machinery, not the science" in report
    assert "## 001-5: Toy LQ" in report and "| State Bridge | Costate Cosine | 0.945 ± 0.002 |" in report
    assert "Plots of the stage, beside this report in `scaffold_blend/`: growth.png" in report
    verify.run(uri, "reproduce-smoke", str(tmp_path / "reports" / "reproduce-smoke"), preset="smoke",
               stages=["toy_lq", "scaffold_blend"])
    again = (tmp_path / "reports" / "reproduce-smoke" / "reproduction_smoke.md").read_text()
    assert again.split("## Manifest")[0] == report.split("## Manifest")[0]
    client, parent = runs_of(uri, "reproduce-smoke")
    [summary] = parent
    assert [a.path for a in client.list_artifacts(summary.info.run_id, "results")] == [
        "results/reproduction_smoke.csv", "results/reproduction_smoke.md"]
    for stage in ("toy_lq", "scaffold_blend"):  # under the reproduction's run
        tags = client.get_experiment_by_name(f"reproduce-smoke-{stage}").tags
        assert tags["raycredit.reproduction"] == "reproduce-smoke"
        assert tags["raycredit.reproduction_run"] == summary.info.run_id
    assert not list(Path(tmp_path / "ray_results").glob("*/checkpoints/*/checkpoint.pt"))
