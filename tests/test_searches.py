"""Every search script: its presets match SPEC §7, and its smoke preset runs into a scratch MLflow store."""

from pathlib import Path

import pandas as pd
import pytest

from raycredit.config import RULE_KNOBS
from raycredit.flags import overrides_from, search_parser
from raycredit.rules import make_config, unused_knobs
from raycredit.search import expand
from raycredit.tracking import RUN_KEY_TAG, SUMMARY_TAG

from mlflow_checks import assert_one_complete_run_per_trial, new_store, runs_of
from quiet import assert_quiet
from searches_loader import ROOT, load_search

GRID_SEARCHES = ["penalty_rescue", "warmup_tgw_ablation", "scaffold_blend", "synthetic_ladder"]  # and audit, below
PAPER_TRIALS = {"both_fail_scan": 480, "penalty_rescue": 51, "warmup_tgw_ablation": 192, "scaffold_blend": 99,
                "synthetic_ladder": 432, "audit": 21, "anchors": 70, "synthetic_depth": 6,
                # the lineage searches: trunks and their branches (docstrings)
                "handoff": 66, "snapshot_recovery": 54, "exploitability": 165, "schedules": 7, "toy_lq": 12}
# searches that replicate the reference study: their presets set its choices explicitly
REPLICATIONS = ["both_fail_scan", "penalty_rescue", "warmup_tgw_ablation", "scaffold_blend", "synthetic_ladder",
                "audit", "optuna_scaffold", "handoff", "schedules"]


def configs(mod, *argv):
    args = search_parser("x", "", mod.PRESETS, "paper").parse_args(list(argv))
    return expand(mod.PRESETS[args.preset], overrides_from(args))


@pytest.mark.parametrize("path", sorted((ROOT / "searches").glob("*.py")), ids=lambda p: p.stem)
def test_every_search_documents_question_command_cost_and_has_both_presets(path):
    mod = load_search(path.stem)
    doc = mod.__doc__
    assert "Question:" in doc and "Cost:" in doc and f"python searches/{path.stem}.py" in doc
    assert {"smoke", "paper"} <= set(mod.PRESETS)
    assert all(p.doc for p in mod.PRESETS.values())
    assert callable(mod.main)


@pytest.mark.parametrize("name, n", PAPER_TRIALS.items())
def test_paper_presets_are_the_spec_sweeps(name, n):
    mod = load_search(name)
    cs = configs(mod, "--data-dir", "/data")
    assert len(cs) == n and len({c.key() for c in cs}) == n


def test_paper_grids_cover_the_spec_axes():
    ladder = configs(load_search("synthetic_ladder"))
    assert {c.data.alpha for c in ladder} == {0.0, 0.25, 0.5, 1.0} and {c.model.L for c in ladder} == {2, 4, 8, 12}
    assert {c.rule.rule for c in ladder} == {"dfa", "state_bridge", "credit_bridge", "vector_field"}
    assert sum(c.rule.shuffle_control for c in ladder) == 4 * 4 * 3
    ablation = configs(load_search("warmup_tgw_ablation"))
    assert {(c.rule.warmup_ratio, c.rule.tgw, c.rule.s_type) for c in ablation} >= {(0.05, 4.0, "deltaL_hL")}
    blend = configs(load_search("scaffold_blend"), "--data-dir", "/data")
    assert len({c.rule.aux_kind for c in blend if c.rule.rule == "scaffold"}) == 8
    assert [c.train.seed for c in blend if c.rule.rule == "dfa"] == [0, 1, 2]
    assert {c.rule.rule for c in configs(load_search("audit"), "--data-dir", "/data")} == {
        "bp", "fa", "ep", "dfa", "credit_bridge", "state_bridge", "frozen"}
    assert {c.rule.penalty_lam for c in configs(load_search("penalty_rescue"), "--data-dir", "/data")} == {
        0.0, 1e-4, 1e-3, 1e-2}


@pytest.mark.parametrize("name", REPLICATIONS)
def test_replication_presets_set_the_reference_choices_explicitly(name):
    from raycredit.config import Config
    from raycredit.search import REFERENCE

    assert REFERENCE == {"credit_norm": True, "fa_mode": "reference"}
    defaults = Config().flat()
    assert all(defaults[k] != v for k, v in REFERENCE.items())  # the defaults are the published algorithms
    for preset in load_search(name).PRESETS.values():
        assert {k: preset.fixed[k] for k in REFERENCE} == REFERENCE


def test_both_fail_scan_crosses_fa_and_dfa_with_credit_norm_and_keeps_its_controls():
    cs = configs(load_search("both_fail_scan"), "--data-dir", "/data")
    local = [c for c in cs if c.rule.rule in ("fa", "dfa")]
    assert {c.rule.credit_norm for c in local} == {True, False} and len(local) == 320
    assert {c.rule.fa_mode for c in cs if c.rule.rule == "fa"} == {"reference"}
    assert {c.rule.fa_mode for c in cs if c.rule.rule != "fa"} == {"lillicrap"}  # not theirs: the default
    assert {c.rule.rule for c in cs if c not in local} == {"bp", "frozen"}
    assert len([c for c in cs if c.rule.rule == "bp"]) == 80  # one per (d, L, seed): no duplicate controls


def test_anchors_covers_canonical_and_reference_variants():
    cs = configs(load_search("anchors"), "--preset", "smoke")
    got = {(c.model.arch, c.rule.rule, c.rule.fa_mode if c.rule.rule == "fa" else "", c.rule.credit_norm)
           for c in cs if c.rule.rule in ("fa", "dfa")}
    assert ("mlp", "fa", "lillicrap", False) in got and ("mlp", "dfa", "", False) in got
    assert ("resmlp", "fa", "reference", True) in got and ("resmlp", "fa", "lillicrap", True) in got
    assert {c.model.activation for c in cs if c.model.arch == "mlp"} == {"tanh"}
    assert {c.data.dataset for c in cs} == {"digits"}


def test_seeds_override_reaches_the_also_grids():
    cs = configs(load_search("scaffold_blend"), "--preset", "smoke", "--seeds", "3,4")
    assert {c.train.seed for c in cs if c.rule.rule == "dfa"} == {3, 4}
    assert {c.train.seed for c in cs if c.rule.rule == "scaffold"} == {3, 4}


# the grid searches' smoke presets, trained shorter and on less data (their tables and typed results are the
# point here, not their numbers)
GRID_SHRUNK = ["--preset", "smoke", "--epochs", "2", "--set", "n_train=500", "--set", "n_test=200"]


@pytest.mark.parametrize("name", GRID_SEARCHES)
def test_smoke_preset_runs_into_a_scratch_store(ray_session, tmp_path, capfd, name):
    mod = load_search(name)
    uri = new_store(tmp_path / "mlflow.db")
    rc = mod.main([*GRID_SHRUNK, "--tracking-uri", uri, "--storage", str(tmp_path / "ray"),
                   "--out", str(tmp_path / "report"), "--gpus-per-trial", "0"])
    assert rc == 0
    assert_quiet(*capfd.readouterr())  # the search, its analyses and plots, as the driver prints them
    smoke = configs(mod, *GRID_SHRUNK)
    assert_one_complete_run_per_trial(uri, f"{name}-smoke", len(smoke), smoke[0].train.epochs)
    table = (tmp_path / "report" / "summary.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| rule ")]
    assert len(rows) == len(smoke), table  # one seed: one row per configuration
    # the notebook entry point: one row per trial, params typed, the last value of every metric
    import raycredit

    df = raycredit.results(f"{name}-smoke", tracking_uri=uri)
    assert sorted(df["run_key"]) == sorted(c.key() for c in smoke)
    assert df["d"].dtype.kind == "i" and df["test_acc"].between(0, 1).all()
    assert set(df["epoch"]) == {smoke[0].train.epochs}
    # a knob that a run's rule does not read is neither in its MLflow params nor a value in the table
    from raycredit.tracking import load_runs

    runs = load_runs(uri, f"{name}-smoke").set_index("run_id")
    for _, row in df.iterrows():
        unused = unused_knobs(row["rule"])
        assert {k for k in df.columns if k in RULE_KNOBS and pd.isna(row[k])} == unused & set(df.columns)
        assert not [k for k in unused if pd.notna(runs.loc[row["run_id"]].get(f"params.{k}"))]
    assert str(df["credit_norm"].dtype) == ("boolean" if df["credit_norm"].isna().any() else "bool")


# the searches whose smoke presets no other test runs and whose analyses no smoke test draws (synthetic_depth's is
# the summary), shrunk by flags (what they print is the point here, not their numbers): one seed, fewer epochs
# or examples; the report each one's analysis writes
SHRUNK = {"anchors": (["--epochs", "1", "--set", "d=32"], "anchors.md"),
          "snapshot_recovery": (["--epochs", "2", "--set", "d=16", "--set", "L=2", "--set", "n_train=500",
                                 "--set", "n_test=200"], "recovery.md"),
          "exploitability": (["--set", "d=16", "--set", "L=2", "--set", "n_train=500", "--set", "n_test=200",
                              "--set", "exploit_batches=2", "--set", "exploit_held_out=100",
                              "--set", "exploit_etas=0.1,1"], "exploitability.md"),
          "schedules": (["--set", "d=16", "--set", "n_train=500", "--set", "n_test=200"], "schedules.md")}


@pytest.mark.parametrize("name", SHRUNK)
def test_every_other_smoke_preset_runs_quietly_into_a_scratch_store(ray_session, tmp_path, capfd, name):
    mod = load_search(name)
    uri = new_store(tmp_path / "mlflow.db")
    flags, report = SHRUNK[name]
    argv = ["--preset", "smoke", "--seeds", "0", *flags]
    rc = mod.main([*argv, "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--out",
                   str(tmp_path / "report"), "--gpus-per-trial", "0"])
    assert rc == 0
    assert_quiet(*capfd.readouterr())  # the search, each of its stages, its analysis and plots
    _, runs = runs_of(uri, f"{name}-smoke")
    trials = [r for r in runs if SUMMARY_TAG not in r.data.tags]  # trunks, branches, measurements
    assert sorted(r.data.tags[RUN_KEY_TAG] for r in trials) == sorted(c.key() for c in configs(mod, *argv))
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert (tmp_path / "report" / report).read_text().strip()


def test_audit_smoke_with_two_seeds_ends_with_one_audit_row_per_rule(ray_session, tmp_path, capfd):
    import statistics

    import pandas as pd

    from raycredit.tracking import load_runs

    mod = load_search("audit")
    uri = new_store(tmp_path / "mlflow.db")
    rc = mod.main(["--preset", "smoke", "--seeds", "0,1", "--tracking-uri", uri, "--storage", str(tmp_path / "ray"),
                   "--out", str(tmp_path / "report"), "--gpus-per-trial", "0"])
    assert rc == 0
    assert_quiet(*capfd.readouterr())
    smoke = configs(mod, "--preset", "smoke", "--seeds", "0,1")
    assert_one_complete_run_per_trial(uri, "audit-smoke", len(smoke), smoke[0].train.epochs)
    text = (tmp_path / "report" / "audit_table.md").read_text()
    rows = [line.split(" | ")[2] for line in text.splitlines() if line.startswith("| 64 | 4 | ")]
    assert sorted(rows) == sorted(mod.RULES), text
    runs = load_runs(uri, "audit-smoke")
    fa = runs[runs["params.rule"] == "fa"]["metrics.test_acc"].tolist()
    table = pd.read_csv(tmp_path / "report" / "audit_table.csv").set_index("rule")
    assert len(fa) == 2 and table.loc["fa", "test_acc_std"] == pytest.approx(statistics.stdev(fa), rel=1e-9)
    frozen_runs = runs[runs["params.rule"] == "frozen"]
    trained, fitted = frozen_runs["metrics.test_acc"].mean(), frozen_runs["metrics.fit_test_acc"].mean()
    frozen = max(trained, fitted)  # the baseline: the better of the trained and the fitted readout
    assert table.loc["fa", "frozen_margin"] == pytest.approx(statistics.mean(fa) - frozen, rel=1e-9)
    assert table.loc["fa", "frozen_fit_acc"] == pytest.approx(fitted, rel=1e-9)


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "0,1"], "one seed"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--set", "blend_alpha=2"], "blend_alpha: 2.0 must be <= 1"),
    (["--set", "aux_kind=oracle"], "aux_kind: 'oracle' is not one of"),
    (["--set", "warmup_ratio=1"], "warmup_ratio: 1.0 must be < 1"),
    (["--export-study"], "--export-study: no trials of this search"),
])
def test_bad_optuna_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, words):
    db, storage, out = tmp_path / "m.db", tmp_path / "ray", tmp_path / "reports"
    rc = load_search("optuna_scaffold").main(["--preset", "smoke", "--tracking-uri", f"sqlite:///{db}",
                                              "--storage", str(storage), "--out", str(out), *argv])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not db.exists() and not storage.exists() and not out.exists()


def test_noise_notes_call_a_best_near_chance_noise_and_count_ties():
    from types import SimpleNamespace

    from raycredit.study import StudyExport, noise_notes

    def export(best, values, n_test=300, n_classes=10):
        return StudyExport("", "", Path("."), len(values), 0, 0, 0, best=SimpleNamespace(value=best),
                           values=values, n_test=n_test, n_classes=n_classes)

    # chance 0.1 with a standard error of sqrt(0.1 * 0.9 / 300) = 0.0173: 0.13 is within 2 of them
    (near, tie) = noise_notes(export(0.13, [0.13, 0.13, 0.11]), "test_acc")
    assert "within 2 standard errors" in near and "chance (0.1000)" in near
    # one standard error at 0.13 is sqrt(0.13 * 0.87 / 300) = 0.0194: 0.13 ties, 0.11 (0.02 away) does not
    assert tie.startswith("1 other trial within one standard error (0.0194)")
    assert noise_notes(export(0.30, [0.30, 0.25]), "test_acc") == []
    assert noise_notes(export(0.30, [0.30]), "test_loss") == []  # only accuracies have a chance level
    assert noise_notes(export(0.30, [0.30], n_test=0), "test_acc") == []


def test_optuna_space_draws_valid_conditional_configs():
    import optuna


    mod = load_search("optuna_scaffold")
    base = make_config({**mod.PRESETS["paper"].fixed, "data_dir": "/data"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(200):
        trial = study.ask()
        constants = mod.space(trial, base)
        cfg = base.replace(**trial.params, **constants)  # raises ConfigError on an invalid draw
        p = trial.params
        assert ("decay_to" in p) == (p.get("freeze_after", -1) >= 0)
        assert "prefit_epochs" not in p or p["aux_kind"] not in ("random_trainable", "gaussian_noise")
        seen.add(cfg.rule.aux_kind)
        study.tell(trial, 0.0)
    assert len(seen) == 8


def test_the_readmes_own_sweep_runs_as_written(ray_session, tmp_path, monkeypatch):
    """README's "Your own sweep" block, written to a file and run as a script (shrunk by flags: one seed, one
    epoch, fewer examples): one finished run per config of its grid, and the summary row of each."""
    import runpy
    import sys

    readme = (ROOT / "README.md").read_text()
    block = readme.split("**Your own sweep.**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "my_sweep.py"
    script.write_text(block)
    uri = new_store(tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "--seeds", "0", "--epochs", "1", "--set", "n_train=256",
                                      "--tracking-uri", uri, "--gpus-per-trial", "0"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0
    assert_one_complete_run_per_trial(uri, "my_sweep-small", 6, 1)
    rows = [line for line in (tmp_path / "reports" / "my_sweep-small" / "summary.md").read_text().splitlines()
            if line.startswith(("| bp ", "| fa ", "| dfa "))]
    assert len(rows) == 6, rows
