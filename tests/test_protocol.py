"""The evaluation protocol's verdicts (raycredit.protocol, analysis/protocol.py, the audit table's columns and
`raycredit diagnose`): on hand-made run tables, and on a scratch MLflow store filled by tiny runs."""

import pandas as pd
import pytest

from analysis import audit_table
from analysis import protocol as protocol_report
from raycredit.cli import main
from raycredit.config import Config
from raycredit.protocol import FIRE, MIXED, NONE, PASS, combine, kendall_tau, protocol_table, run_verdicts
from raycredit.tracking.results import results

from mlflow_checks import logged_run

BASE = dict(dataset="synthetic", d=64, L=4, epochs=30, credit_norm=False, mode1a=0.0, mode1b=0.0)


def runs(rows):
    return pd.DataFrame([{**BASE, **r} for r in rows])


def test_combine_and_kendall_tau():
    assert combine([False, False]) == PASS and combine([True, True]) == FIRE and combine([True, False]) == MIXED
    assert combine([None, float("nan")]) == NONE and combine([None, True]) == FIRE
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1
    assert kendall_tau([1, 2, 3], [2, 1, 3]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2, float("nan")], [1, 2, 0]) == 1  # pairs with an unknown value are left out


def test_mode_flags_fire_a_and_b_per_run_and_mix_over_seeds():
    df = runs([dict(rule="dfa", seed=0, test_acc=0.3, mode1a=1.0, mode1b=1.0),
               dict(rule="dfa", seed=1, test_acc=0.3, mode1a=1.0, mode1b=0.0),
               dict(rule="fa", seed=0, test_acc=0.4),
               dict(rule="fa", seed=1, test_acc=0.4)])
    v = run_verdicts(df)
    assert list(v["(a)"]) == [True, True, False, False] and list(v["(b)"]) == [True, False, False, False]
    t = protocol_table(df).set_index("rule")
    assert t.loc["dfa", "(a)"] == FIRE and t.loc["dfa", "(b)"] == MIXED and t.loc["fa", "(a)"] == PASS
    assert t.loc["fa", "(d)"] == NONE  # no frozen runs: no baseline


def test_depth_utilization_margin_by_hand_and_threshold():
    df = runs([dict(rule="frozen", seed=0, test_acc=0.349), dict(rule="frozen", seed=1, test_acc=0.351),
               dict(rule="fa", seed=0, test_acc=0.30), dict(rule="fa", seed=1, test_acc=0.31),      # below frozen
               dict(rule="dfa", seed=0, test_acc=0.38), dict(rule="dfa", seed=1, test_acc=0.365),   # +3, +1.5 pp
               dict(rule="bp", seed=0, test_acc=0.60), dict(rule="bp", seed=1, test_acc=0.61)])
    v = run_verdicts(df).set_index(["rule", "seed"])
    assert v.loc[("fa", 0), "margin_pp"] == pytest.approx(100 * (0.30 - (0.349 + 0.351) / 2))
    assert v.loc[("fa", 0), "(d)"] and not v.loc[("dfa", 0), "(d)"] and v.loc[("dfa", 1), "(d)"]
    assert v.loc[("frozen", 0), "(d)"] is None
    t = protocol_table(df).set_index("rule")
    assert t.loc["fa", "(d)"] == FIRE and t.loc["dfa", "(d)"] == MIXED and t.loc["bp", "(d)"] == PASS
    assert t.loc["frozen", "(d)"] == NONE
    assert t.loc["dfa", "margin_pp_mean"] == pytest.approx(100 * ((0.38 + 0.365) / 2 - 0.35))
    # a lower threshold passes dfa's second seed
    assert protocol_table(df, threshold_pp=1.0).set_index("rule").loc["dfa", "(d)"] == PASS


def test_functional_agreement_fires_on_the_seeds_triangulation_table():
    """The seeds' §4.2 numbers: accuracy, nudging and loss decrease rank SB > CB > DFA, deep cos CB > SB > DFA:
    tau 1/3 against each, below the 0.6 agreement, so (c) fires; with deep cos in the functional order it
    passes. bp is not audited."""
    rows = [dict(rule="state_bridge", test_acc=0.453, deep_nudge=-1.93e-3, loss_decrease=-0.447, deep_cos=0.322),
            dict(rule="credit_bridge", test_acc=0.3601, deep_nudge=-4.26e-4, loss_decrease=-0.121, deep_cos=0.679),
            dict(rule="dfa", test_acc=0.360, deep_nudge=-4.98e-5, loss_decrease=-0.095, deep_cos=0.151),
            dict(rule="bp", test_acc=0.6, deep_nudge=-1e-2, loss_decrease=-1.0, deep_cos=1.0)]
    df = runs([{**r, "seed": 0} for r in rows])
    v = run_verdicts(df).set_index("rule")
    assert v.loc["dfa", "tau_test_acc"] == pytest.approx(1 / 3) and v.loc["dfa", "(c)"] is True
    assert v.loc["bp", "(c)"] is None
    agreeing = df.assign(deep_cos=[0.6, 0.3, 0.1, 1.0])
    assert run_verdicts(agreeing).set_index("rule").loc["dfa", "(c)"] is False
    two_seeds = pd.concat([df, agreeing.assign(seed=1)])
    assert protocol_table(two_seeds).set_index("rule").loc["dfa", "(c)"] == MIXED


def test_verdicts_of_a_scratch_store(tmp_path, tiny, capsys):
    """Tiny runs over two seeds: frozen, fa and dfa at the default lr, and frozen and dfa at lr 0.1, where DFA's
    residual stream grows >= 100x within two epochs (mode1a) and its accuracy falls far below frozen.
    analysis/protocol.py, the audit table's columns and `raycredit diagnose` agree with verdicts recomputed by
    hand from the store's metrics: margins against the frozen mean, the 2 pp threshold, PASS/FIRE/MIXED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = {}
    for lr, rules in ((1e-3, ("frozen", "fa", "dfa")), (0.1, ("frozen", "dfa"))):
        for rule in rules:
            for seed in (0, 1):
                cfg = Config.from_dict({**tiny, "rule": rule, "seed": seed, "lr": lr})
                ids[lr, rule, seed] = logged_run(uri, "proto", cfg, tmp_path)
    df = results("proto", uri)
    by_hand = {}
    for (lr, rule), runs_ in df.groupby(["lr", "rule"]):
        frozen = df[(df["lr"] == lr) & (df["rule"] == "frozen")]["test_acc"].mean()
        margins = 100 * (runs_["test_acc"] - frozen)
        by_hand[lr, rule] = {"(a)": combine(list(runs_["mode1a"] >= 0.5)),
                             "(d)": NONE if rule == "frozen" else combine(list(margins < 2.0)),
                             "margin": margins.mean()}
    assert by_hand[0.1, "dfa"]["(a)"] == FIRE and by_hand[0.1, "dfa"]["(d)"] == FIRE
    assert by_hand[0.1, "frozen"]["(a)"] == PASS

    assert protocol_report.main(["--experiment", "proto", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    written = pd.read_csv(tmp_path / "r" / "protocol.csv", keep_default_na=False).set_index(["lr", "rule"])
    for (lr, rule), want in by_hand.items():
        row = written.loc[(lr, rule)]
        assert (row["(a)"], row["(d)"]) == (want["(a)"], want["(d)"]), (lr, rule)
        if rule != "frozen":
            assert row["margin_pp_mean"] == pytest.approx(want["margin"], abs=1e-9)
    assert written.loc[(1e-3, "fa"), "(c)"] in (PASS, FIRE, MIXED)  # fa and dfa ranked at each seed
    assert written.loc[(0.1, "dfa"), "(c)"] == NONE  # no second audited rule in that setting
    assert (tmp_path / "r" / "protocol_functional.csv").exists()

    assert audit_table.main(["--experiment", "proto", "--tracking-uri", uri, "--out", str(tmp_path / "a")]) == 0
    audit = pd.read_csv(tmp_path / "a" / "audit_table.csv", keep_default_na=False).set_index(["lr", "rule"])
    for key, want in by_hand.items():
        assert (audit.loc[key, "(a)"], audit.loc[key, "(d)"]) == (want["(a)"], want["(d)"])

    capsys.readouterr()
    assert main(["diagnose", "--run-id", ids[0.1, "dfa", 0], "--tracking-uri", uri, "--null-draws", "0"]) == 0
    out = capsys.readouterr().out
    acc = df[df["run_id"] == ids[0.1, "dfa", 0]]["test_acc"].item()
    assert "(a) residual-stream growth: FIRE (mode1a = 1)" in out
    assert f"(d) depth utilization: FIRE (test_acc {acc:.4f}" in out
    assert "(c) functional agreement: – (no other audited credit rule" in out
