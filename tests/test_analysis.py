"""analysis/both_fail.py on hand-made run tables (no MLflow, no training)."""

import pandas as pd

from analysis.both_fail import both_fail, report


def runs(rows):
    base = dict(dataset="cifar10", epochs=100, lr=0.001, n_classes=10, diverged=0.0)
    return pd.DataFrame([{**base, **r} for r in rows])


def setting(d, L, frozen, pairs, bp=0.9):
    """Frozen runs with the given accuracies, a BP run (None: none), and (seed, fa_acc, fa_cos, dfa_acc, dfa_cos)
    pairs."""
    rows = [dict(rule="frozen", d=d, L=L, seed=s, test_acc=a, deep_cos=float("nan")) for s, a in enumerate(frozen)]
    if bp is not None:
        rows.append(dict(rule="bp", d=d, L=L, seed=0, test_acc=bp, deep_cos=1.0))
    for seed, fa, fa_cos, dfa, dfa_cos in pairs:
        rows += [dict(rule="fa", d=d, L=L, seed=seed, test_acc=fa, deep_cos=fa_cos),
                 dict(rule="dfa", d=d, L=L, seed=seed, test_acc=dfa, deep_cos=dfa_cos)]
    return rows


def test_qualification_rules(tmp_path):
    df = runs(setting(512, 2, [0.34, 0.36], [
        (0, 0.34, 0.48, 0.30, 0.20),   # both below 0.35, positive cos, above 0.15: qualifies
        (1, 0.37, 0.47, 0.29, 0.18),   # FA above frozen
        (2, 0.34, -0.01, 0.30, 0.20),  # FA cosine not positive
        (3, 0.34, 0.40, 0.14, 0.20),   # DFA below 1.5 x chance
    ]) + setting(256, 4, [0.35], [(0, 0.40, 0.33, 0.30, 0.0)]))
    rows, counts = both_fail(df)
    q = rows[rows["qualifies"]]
    assert list(q["seed"]) == [0] and list(q["d"]) == [512]
    c = counts.set_index(["d", "L"])
    assert c.loc[(512, 2), "qualifying"] == 1 and c.loc[(512, 2), "seeds"] == 4
    assert c.loc[(512, 2), "fa_below"] == 3 and c.loc[(512, 2), "dfa_below"] == 4
    assert abs(c.loc[(512, 2), "frozen_acc"] - 0.35) < 1e-12
    text = report(df, tmp_path)
    assert "- d=256 L=4: 0/1 seeds" in text and "- d=512 L=2: 1/4 seeds" in text
    written = pd.read_csv(tmp_path / "both_fail.csv")
    assert len(written) == 5 and written["qualifies"].sum() == 1
    assert (tmp_path / "both_fail.md").read_text() == text


def test_settings_split_on_any_varying_knob(tmp_path):
    df = pd.concat([runs(setting(64, 2, [0.5], [(0, 0.4, 0.1, 0.4, 0.1)])).assign(alpha=0.0),
                    runs(setting(64, 2, [0.3], [(0, 0.4, 0.1, 0.4, 0.1)])).assign(alpha=1.0)])
    rows, counts = both_fail(df)
    assert len(counts) == 2 and sorted(rows["qualifies"]) == [False, True]
    assert "alpha=0.0" in report(df, tmp_path)


def test_settings_where_bp_does_not_beat_frozen_are_invalid(tmp_path):
    pairs = [(0, 0.30, 0.2, 0.30, 0.2)]  # both below frozen with positive cos: would qualify
    df = runs(setting(64, 2, [0.35], pairs, bp=0.36)       # BP above frozen by 1 pp: below the 2 pp margin
              + setting(128, 2, [0.35], pairs, bp=None)     # no BP control at all
              + setting(256, 2, [0.35], pairs, bp=0.38))    # 3 pp: valid
    rows, counts = both_fail(df)
    c = counts.set_index("d")
    assert list(c["valid"]) == [False, False, True]
    assert list(rows.set_index("d")["qualifies"]) == [False, False, True]
    assert abs(c.loc[256, "bp_acc"] - c.loc[256, "frozen_acc"] - 0.03) < 1e-12
    text = report(df, tmp_path)
    assert "- d=64 L=2: BP 0.360, frozen 0.350" in text and "- d=128 L=2: no bp runs, frozen 0.350" in text
    assert both_fail(df, bp_margin=0.005)[1].set_index("d").loc[64, "valid"]


def test_credit_norm_splits_fa_and_dfa_against_one_baseline(tmp_path):
    df = pd.concat([runs(setting(64, 2, [0.5], [(0, 0.4, 0.1, 0.4, 0.1)])).assign(credit_norm=True),
                    runs(setting(64, 2, [0.5], [(0, 0.6, 0.1, 0.6, 0.1)])).assign(credit_norm=False)])
    rows, counts = both_fail(df)
    assert list(counts.sort_values("credit_norm")["qualifying"]) == [0, 1]
    assert set(counts["frozen_acc"]) == {0.5}
    text = report(df, tmp_path)
    assert "- d=64 L=2 credit_norm=True: 1/1 seeds" in text and "- d=64 L=2 credit_norm=False: 0/1 seeds" in text


def test_missing_frozen_or_pairs_is_reported_not_crashed(tmp_path):
    df = runs([dict(rule="frozen", d=64, L=2, seed=0, test_acc=0.3, deep_cos=float("nan"))])
    assert "nothing to compare" in report(df, tmp_path)
    df = runs(setting(64, 2, [], [(0, 0.2, 0.1, 0.2, 0.1)]))
    assert "no frozen runs" in report(df, tmp_path)  # and so the setting is invalid


def test_summary_groups_by_varying_knobs_with_sample_std(tmp_path):
    from analysis.summary import report, summarize

    df = pd.DataFrame([
        dict(rule="dfa", penalty_lam=0.0, seed=0, test_acc=0.30, deep_cos=0.01, deep_rho=0.02, diverged=0.0),
        dict(rule="dfa", penalty_lam=0.0, seed=1, test_acc=0.34, deep_cos=0.03, deep_rho=0.00, diverged=0.0),
        dict(rule="dfa", penalty_lam=0.01, seed=0, test_acc=0.40, deep_cos=0.10, deep_rho=0.20, diverged=0.0),
        dict(rule="fa", penalty_lam=0.0, seed=0, test_acc=0.41, deep_cos=0.30, deep_rho=0.40, diverged=1.0),
    ]).assign(d=64, device="cpu")
    s = summarize(df).set_index(["rule", "penalty_lam"])
    assert list(s.index) == [("dfa", 0.0), ("dfa", 0.01), ("fa", 0.0)]  # d and device do not vary: not grouped
    assert s.loc[("dfa", 0.0), "seeds"] == 2
    # ddof=1 by hand: |0.30 - 0.34| / sqrt(2)
    assert abs(s.loc[("dfa", 0.0), "test_acc_std"] - 0.04 / 2**0.5) < 1e-12
    assert pd.isna(s.loc[("dfa", 0.01), "test_acc_std"])
    text = report(df, tmp_path, "t")
    assert "| dfa | 0 | 2 | 0.320 ± 0.028 | 0.020 ± 0.014 | 0.010 ± 0.014 | – | – | 0.000 ± 0.000 |" in text
    assert "| fa | 0 | 1 | 0.410 |" in text
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == 3


def test_audit_table_rows_std_and_frozen_margin(tmp_path):
    from analysis.audit_table import audit
    from analysis.audit_table import report as audit_report

    rows = []
    for d, frozen in ((64, (0.30, 0.34)), (128, (0.40, 0.40))):
        rows += [dict(rule="frozen", d=d, seed=s, test_acc=a, deep_cos=float("nan")) for s, a in enumerate(frozen)]
        rows += [dict(rule="dfa", d=d, seed=s, test_acc=a, deep_cos=0.1, h_norm_L=h, g_norm_L=1e-3, mode1a=m,
                      mode1b=0.0) for s, (a, h, m) in enumerate(((0.25, 10.0, 0.0), (0.29, 2000.0, 1.0),
                                                                 (0.36, 30.0, 0.0)))]
    df = pd.DataFrame(rows).assign(L=2, dataset="synthetic", epochs=3, diverged=0.0)
    t = audit(df).set_index(["d", "rule"])
    assert len(t) == 4 and t.loc[(64, "dfa"), "seeds"] == 3
    accs = [0.25, 0.29, 0.36]
    mean = sum(accs) / 3
    assert abs(t.loc[(64, "dfa"), "test_acc_std"] - (sum((a - mean) ** 2 for a in accs) / 2) ** 0.5) < 1e-12
    assert abs(t.loc[(64, "dfa"), "frozen_margin"] - (mean - 0.32)) < 1e-12
    assert abs(t.loc[(128, "dfa"), "frozen_margin"] - (mean - 0.40)) < 1e-12
    assert abs(t.loc[(64, "dfa"), "mode1a_mean"] - 1 / 3) < 1e-12
    text = audit_report(df, tmp_path, "t")
    row = "| 64 | 2 | dfa | 3 | 0.300 ± 0.056 | 0.100 ± 0.000 | 680 ± 1.1e+03 | 0.001 ± 0 | 1/3 | 0/3 | 0/3 | -0.020 |"
    assert row in text, text
    assert pd.read_csv(tmp_path / "audit_table.csv").shape[0] == 4


def test_credit_norm_is_a_column_of_every_table_even_when_constant(tmp_path):
    from analysis.audit_table import report as audit_report
    from analysis.summary import report as summary_report

    df = runs(setting(64, 2, [0.5], [(0, 0.4, 0.1, 0.4, 0.1), (1, 0.41, 0.1, 0.42, 0.1)])).assign(credit_norm=True)
    for text in (summary_report(df, tmp_path, "t"), audit_report(df, tmp_path, "t"), report(df, tmp_path)):
        header = next(line for line in text.splitlines() if line.startswith("| ") or "credit_norm=" in line)
        assert "credit_norm" in header, text


def test_seeds_whose_diagnostics_ran_in_different_dtypes_are_not_averaged():
    """A configuration whose seeds' diagnostics ran in float64 and float32 is refused with one line naming them;
    the same dtypes in different configurations are fine."""
    import pytest

    from raycredit.errors import UserError
    from raycredit.tracking.results import finished_trials

    def run(rule, seed, f64, dtype="float32"):
        return {"status": "FINISHED", "params.rule": rule, "params.seed": str(seed), "params.d": "64",
                "params.diag_dtype": dtype, "metrics.diag_float64": f64}

    mixed = pd.DataFrame([run("ep", 0, 1.0), run("ep", 1, 0.0), run("fa", 0, 0.0), run("fa", 1, 0.0)])
    with pytest.raises(UserError, match=r"rule=ep d=64: .*float64: seeds 0; float32: seeds 1"):
        finished_trials(mixed)
    fine = pd.DataFrame([run("ep", 0, 1.0, "float64"), run("ep", 1, 0.0), run("fa", 0, 0.0), run("fa", 1, 0.0)])
    assert len(finished_trials(fine)) == 4


def test_a_knob_a_rule_does_not_read_is_blank_in_every_table_even_from_an_older_store():
    """Runs logged before raycredit left unused knobs out (bp and frozen with credit_norm=True, dfa with fa_mode)
    read as if they had not been: blank (NA) in the typed table, "–" in a markdown table, and not a column that
    "varies" because of them; integers and booleans keep their type around the blanks."""
    import pandas as pd

    from analysis.tables import applied_params, markdown_table, numeric_or_text
    from raycredit.verdicts import row_columns, varies

    logged = pd.DataFrame({"rule": ["bp", "frozen", "fa", "dfa", "vector_field"],
                           "credit_norm": ["True"] * 5, "fa_mode": ["lillicrap"] * 5, "vf_dirs": ["4"] * 5,
                           "fit_l2": ["0.0001"] * 5, "d": ["64"] * 5})
    df = applied_params(logged).apply(numeric_or_text)
    assert df["credit_norm"].isna().tolist() == [True, True, False, False, False]
    assert df["fa_mode"].isna().tolist() == [True, True, False, True, True]
    assert df["vf_dirs"].isna().tolist() == [True, True, True, True, False]
    assert str(df["credit_norm"].dtype) == "boolean" and str(df["vf_dirs"].dtype) == "Int64"
    assert df["d"].dtype.kind == "i" and df["fit_l2"].notna().tolist() == [False, True, False, False, False]
    assert not any(varies(df, k) for k in ("credit_norm", "fa_mode", "vf_dirs", "fit_l2"))
    assert row_columns(df)[-2:] == ["rule", "credit_norm"]  # credit_norm always, the other knobs not
    rows = markdown_table(df[["rule", "credit_norm", "vf_dirs"]]).splitlines()[2:]
    assert rows == ["| bp | – | – |", "| frozen | – | – |", "| fa | True | – |", "| dfa | True | – |",
                    "| vector_field | True | 4 |"]
    ex = applied_params(pd.DataFrame({"rule": ["bp"], "credit_norm": ["False"], "exploitability": ["True"]}))
    assert ex["credit_norm"].tolist() == ["False"]  # a measurement on bp's credit reads credit_norm
