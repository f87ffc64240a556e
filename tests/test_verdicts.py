"""The evaluation protocol's verdicts (raycredit.verdicts, analysis/protocol.py, the audit table's columns and
`raycredit diagnose`): on hand-made run tables, and on a scratch MLflow store filled by tiny runs."""

import pandas as pd
import pytest

from analysis import audit_table
from analysis import protocol as protocol_report
from raycredit.cli import main
from raycredit.config import Config
from raycredit.rules import make_config
from raycredit.tracking.results import results
from raycredit.verdicts import (
    FIRE,
    MIXED,
    NONE,
    PASS,
    VERDICTS,
    combine,
    functional_table,
    kendall_tau,
    protocol_table,
    run_verdicts,
)

from mlflow_checks import logged_run, new_store

BASE = dict(dataset="synthetic", d=64, L=4, epochs=30, credit_norm=False, mode1a=0.0, mode1b=0.0)


def runs(rows):
    return pd.DataFrame([{**BASE, **r} for r in rows])


def test_combine_and_kendall_tau():
    assert combine([False, False]) == PASS and combine([True, True]) == FIRE and combine([True, False]) == MIXED
    assert combine([None, float("nan")]) == NONE and combine([None, True]) == FIRE
    assert combine([None, None], ["invalid setting", "x"]) == f"{NONE} (invalid setting)"
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1
    assert kendall_tau([1, 2, 3], [2, 1, 3]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2, float("nan")], [1, 2, 0]) == 1  # pairs with an unknown value are left out


def test_growth_and_floor_are_judged_against_the_settings_bp():
    """(a) fires at 100x BP's ||h_L||, whatever mode1a says (a plain net's BP grows 100x over its tiny init);
    (b) needs mode1b and a gradient 1000x below BP's: BP at the floor itself (a converged fit) fires neither."""
    h, g = "h_norm/last", "g_norm/last"
    df = runs([dict(rule="bp", seed=0, test_acc=0.9, mode1a=1.0, mode1b=1.0, **{h: 10.0, g: 5e-8}),
               dict(rule="bp", seed=1, test_acc=0.9, mode1a=1.0, mode1b=1.0, **{h: 12.0, g: 6e-8}),
               dict(rule="dfa", seed=0, test_acc=0.3, mode1a=1.0, mode1b=1.0, **{h: 1.1e4, g: 1e-12}),
               dict(rule="dfa", seed=1, test_acc=0.3, mode1a=1.0, mode1b=1.0, **{h: 5e2, g: 5e-8}),
               dict(rule="fa", seed=0, test_acc=0.4, mode1a=1.0, **{h: 30.0, g: 1e-3}),
               dict(rule="fa", seed=1, test_acc=0.4, mode1a=1.0, **{h: 30.0, g: 1e-3})])
    v = run_verdicts(df)
    assert list(v["(a)"]) == [False, False, True, False, False, False]
    assert list(v["(b)"]) == [False, False, True, False, False, False]
    t = protocol_table(df).set_index("rule")
    assert (t.loc["bp", "(a)"], t.loc["bp", "(b)"]) == (PASS, PASS)
    assert t.loc["dfa", "(a)"] == MIXED and t.loc["dfa", "(b)"] == MIXED and t.loc["fa", "(a)"] == PASS
    assert t.loc["fa", "(d)"] == f"{NONE} (no frozen run in the setting)"
    alone = protocol_table(df[df["rule"] != "bp"]).set_index("rule")
    assert alone.loc["dfa", "(a)"] == f"{NONE} (no BP run in the setting)"


def test_depth_utilization_against_the_fitted_baseline_where_bp_uses_depth():
    """The baseline is the better of the frozen runs' trained and fitted readouts; (d) is judged only where BP
    beats it by the threshold: a rule 0.2 pp below BP in a setting where BP itself is +1.9 pp is never FIRE."""
    frozen = [dict(rule="frozen", seed=0, test_acc=0.349, fit_test_acc=0.36),
              dict(rule="frozen", seed=1, test_acc=0.351, fit_test_acc=0.36)]
    df = runs(frozen + [dict(rule="fa", seed=0, test_acc=0.30), dict(rule="fa", seed=1, test_acc=0.31),
                        dict(rule="dfa", seed=0, test_acc=0.39), dict(rule="dfa", seed=1, test_acc=0.375),
                        dict(rule="bp", seed=0, test_acc=0.60), dict(rule="bp", seed=1, test_acc=0.61)])
    v = run_verdicts(df).set_index(["rule", "seed"])
    assert v.loc[("fa", 0), "baseline_acc"] == pytest.approx(0.36) and v.loc[("fa", 0), "frozen_acc"] == 0.35
    assert v.loc[("fa", 0), "margin_pp"] == pytest.approx(100 * (0.30 - 0.36))
    assert v.loc[("fa", 0), "(d)"] and not v.loc[("dfa", 0), "(d)"] and v.loc[("dfa", 1), "(d)"]
    assert v.loc[("frozen", 0), "(d)"] is None
    t = protocol_table(df).set_index("rule")
    assert t.loc["fa", "(d)"] == FIRE and t.loc["dfa", "(d)"] == MIXED and t.loc["bp", "(d)"] == PASS
    assert t.loc["frozen", "(d)"] == f"{NONE} (the baseline itself)"
    assert t.loc["dfa", "margin_pp_mean"] == pytest.approx(100 * ((0.39 + 0.375) / 2 - 0.36))
    assert protocol_table(df, threshold_pp=1.0).set_index("rule").loc["dfa", "(d)"] == PASS

    weak = runs(frozen + [dict(rule="bp", seed=0, test_acc=0.379), dict(rule="bp", seed=1, test_acc=0.379),
                          dict(rule="fa", seed=0, test_acc=0.377), dict(rule="fa", seed=1, test_acc=0.377)])
    t = protocol_table(weak).set_index("rule")
    assert t.loc["fa", "(d)"] == t.loc["bp", "(d)"] == f"{NONE} (invalid setting: BP +1.9 pp over the baseline, < 2)"


SEEDS_TRIANGULATION = [  # seeds 001 §4.2; train_loss = an initial 2.303 plus the seeds' decrease
    dict(rule="state_bridge", test_acc=0.453, deep_nudge=-1.93e-3, train_loss=2.303 - 0.447, deep_cos=0.322),
    dict(rule="credit_bridge", test_acc=0.360, deep_nudge=-4.26e-4, train_loss=2.303 - 0.121, deep_cos=0.679),
    dict(rule="dfa", test_acc=0.360, deep_nudge=-4.98e-5, train_loss=2.303 - 0.095, deep_cos=0.151),
    dict(rule="bp", test_acc=0.6, deep_nudge=-1e-2, train_loss=1.0, deep_cos=1.0)]


def test_functional_agreement_fires_on_the_seeds_triangulation_table():
    """The seeds' §4.2: the three functional metrics put SB first, deep cos puts CB first, so (c) fires, once for
    the setting and seed; deep cos ranking SB first passes even where it swaps the other two (positive but
    imperfect agreement), and a rule that converged early (lowest final loss) is not ranked last for it."""
    df = runs([{**r, "seed": 0} for r in SEEDS_TRIANGULATION])
    v = run_verdicts(df).set_index("rule")
    assert v.loc["dfa", "tau_test_acc"] == pytest.approx(0.0) and v.loc["dfa", "tau_deep_nudge"] == pytest.approx(1 / 3)
    assert v.loc["dfa", "(c)"] is True and v.loc["state_bridge", "(c)"] is True
    assert v.loc["bp", "(c)"] is None and v.loc["bp", "why_(c)"] == "bp is the reference"
    imperfect = df.assign(deep_cos=[0.6, 0.1, 0.3, 1.0])
    assert run_verdicts(imperfect).set_index("rule").loc["dfa", "(c)"] is False
    two_seeds = pd.concat([df, imperfect.assign(seed=1)])
    func = functional_table(two_seeds)
    assert set(func["(c)"]) == {MIXED} and len(func) == 3  # one verdict per setting, shown on its audited rows
    assert "(c)" not in protocol_table(two_seeds).columns


SETTINGS = {"synthetic resmlp": dict(dataset="synthetic"), "digits resmlp": dict(dataset="digits", n_train=0),
            "digits mlp": dict(dataset="digits", arch="mlp", n_train=0)}


@pytest.fixture(scope="module")
def trained_settings():
    """bp, frozen, fa and dfa, two seeds, on a synthetic ResMLP, a digits ResMLP and a digits plain MLP."""
    from conftest import TINY

    from raycredit.train import train

    rows = []
    for name, over in SETTINGS.items():
        for rule in ("bp", "frozen", "fa", "dfa"):
            for seed in (0, 1):
                knobs = {**TINY, "epochs": 4, **over, "rule": rule, "seed": seed}
                if over.get("dataset") == "digits":
                    knobs.pop("input_dim"), knobs.pop("n_test"), knobs.pop("n_train")
                result = train(Config.from_dict(knobs))
                rows.append({**Config.from_dict(knobs).flat(), **result["final"], "setting": name})
    return pd.DataFrame(rows)


@pytest.mark.science
def test_bp_fires_nothing_on_synthetic_digits_and_plain_nets(trained_settings):
    for name, df in trained_settings.groupby("setting"):
        v = run_verdicts(df.drop(columns="setting"))
        bp = v[v["rule"] == "bp"]
        for col in VERDICTS:
            assert not any(f is True for f in bp[col]), (name, col)
        t = protocol_table(df.drop(columns="setting")).set_index("rule")
        assert t.loc["bp", "(a)"] == PASS and t.loc["bp", "(b)"] == PASS, name
        assert t.loc["bp", "(d)"] == PASS or t.loc["bp", "(d)"].startswith(f"{NONE} (invalid setting"), name
        frozen = v[v["rule"] == "frozen"]
        assert (frozen["fit_test_acc"] >= frozen["test_acc"] - 0.02).all(), name


@pytest.mark.science
def test_verdicts_of_a_scratch_store(tmp_path, tiny, capsys):
    """Tiny runs over two seeds: bp, frozen, fa and dfa at the default lr, and bp, frozen and dfa at lr 0.1.
    analysis/protocol.py, the audit table's columns and `raycredit diagnose` agree with verdicts recomputed by
    hand from the store's metrics: ||h_L|| against BP's, margins against the better frozen readout where BP
    beats it by 2 pp, PASS/FIRE/MIXED."""
    uri = new_store(tmp_path / "mlflow.db")
    ids = {}
    for lr, rules in ((1e-3, ("bp", "frozen", "fa", "dfa")), (0.1, ("bp", "frozen", "dfa"))):
        for rule in rules:
            for seed in (0, 1):
                cfg = make_config({**tiny, "rule": rule, "seed": seed, "lr": lr})
                ids[lr, rule, seed] = logged_run(uri, "proto", cfg, tmp_path)
    df = results("proto", uri)
    by_hand = {}
    for (lr, rule), runs_ in df.groupby(["lr", "rule"]):
        same = df[df["lr"] == lr]
        frozen = same[same["rule"] == "frozen"]
        baseline = max(frozen["test_acc"].mean(), frozen["fit_test_acc"].mean())
        bp = same[same["rule"] == "bp"]
        margins = 100 * (runs_["test_acc"] - baseline)
        valid = 100 * (bp["test_acc"].mean() - baseline) >= 2.0
        by_hand[lr, rule] = {"(a)": combine(list(runs_["h_norm/last"] >= 100 * bp["h_norm/last"].mean())),
                             "(d)": "frozen" if rule == "frozen" else combine(list(margins < 2.0)) if valid
                             else "invalid", "margin": margins.mean()}
    assert by_hand[1e-3, "bp"]["(a)"] == PASS

    assert protocol_report.main(["--experiment", "proto", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    written = pd.read_csv(tmp_path / "r" / "protocol.csv", keep_default_na=False).set_index(["lr", "rule"])

    def same(got: str, want: str) -> bool:
        return got.startswith(f"{NONE} (invalid setting") if want == "invalid" else got == (
            f"{NONE} (the baseline itself)" if want == "frozen" else want)

    for (lr, rule), want in by_hand.items():
        row = written.loc[(lr, rule)]
        assert row["(a)"] == want["(a)"] and same(row["(d)"], want["(d)"]), (lr, rule, row["(d)"], want)
        if rule != "frozen":
            assert row["margin_pp_mean"] == pytest.approx(want["margin"], abs=1e-9)
    functional = pd.read_csv(tmp_path / "r" / "protocol_functional.csv", keep_default_na=False)
    assert set(functional["rule"]) == {"fa", "dfa"} and set(functional["lr"]) == {1e-3}  # lr 0.1: one audited rule

    assert audit_table.main(["--experiment", "proto", "--tracking-uri", uri, "--out", str(tmp_path / "a")]) == 0
    audit = pd.read_csv(tmp_path / "a" / "audit_table.csv", keep_default_na=False).set_index(["lr", "rule"])
    for key, want in by_hand.items():
        assert audit.loc[key, "(a)"] == want["(a)"] and same(audit.loc[key, "(d)"], want["(d)"])

    capsys.readouterr()
    assert main(["diagnose", "--run-id", ids[0.1, "dfa", 0], "--tracking-uri", uri, "--null-draws", "0"]) == 0
    out = capsys.readouterr().out
    acc = df[df["run_id"] == ids[0.1, "dfa", 0]]["test_acc"].item()
    assert f"(a) residual-stream growth: {'FIRE' if by_hand[0.1, 'dfa']['(a)'] == FIRE else ''}" in out
    assert f"(d) depth utilization: FIRE (test_acc {acc:.4f}" in out or "(d) depth utilization: – (" in out
    assert "(c) functional agreement of this setting and seed: – (no other audited rule" in out
