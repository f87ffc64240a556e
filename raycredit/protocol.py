"""The reference study's 4-diagnostic evaluation protocol (seeds 001 §6, 004), as verdicts on finished runs.

A run's verdicts, from its final epoch:

- (a) residual-stream growth: FIRE when `mode1a` is set (||h_L|| grew >= 100x over its init value);
- (b) gradient-floor collapse: FIRE when `mode1b` is set (||g_L|| < 1e-7);
- (c) functional agreement: within a (setting, seed), rank the credit rules under audit (every rule with a
  deep_cos except bp) by each functional metric: test_acc (higher is better), deep_nudge and loss_decrease
  (lower is better: the loss falls more), and by deep_cos. Kendall's tau between deep_cos's order and each
  functional metric's; FIRE when the median of the three is below `agreement` (deep_cos ranks the rules
  differently from what they do, the seeds' §4.2 finding), PASS otherwise. Needs two rules or more;
- (d) depth utilization: margin = test_acc - the frozen-blocks baseline (mean frozen test_acc over the
  seeds of the same setting); FIRE when the margin is below `threshold_pp` percentage points (default 2).
  Frozen runs themselves have no (d).

Per setting and row (a rule and its varying knobs, as in the audit table), a verdict over seeds is PASS when
no seed fires, FIRE when every seed does, MIXED when they disagree (seeds' 004: "reports MIXED if seeds
disagree"), and – without any seed to judge. `analysis/protocol.py` prints these tables; `audit_table.py`
shows them as columns; `raycredit diagnose` prints a run's own.

A setting is (dataset, d, L, epochs) plus every other data, model or training knob that varies in the
experiment; rows split a setting's runs by rule, credit_norm and any other rule knob that varies.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

from raycredit.config import SECTIONS

BASE_SETTING = ["dataset", "d", "L", "epochs"]
NOT_SETTING = {"rule", "seed", "device", "checkpoint_every"} | set(SECTIONS["rule"].__dataclass_fields__) | set(
    SECTIONS["diag"].__dataclass_fields__)
VARIANTS = ["credit_norm"]  # rule knobs that split a setting's runs of one rule, always reported
RULE_KNOBS = set(SECTIONS["rule"].__dataclass_fields__) - {"rule"}
THRESHOLD_PP = 2.0
AGREEMENT = 0.6
# functional metrics and their sign: sign * value is higher for a better rule
FUNCTIONAL = {"test_acc": 1.0, "deep_nudge": -1.0, "loss_decrease": -1.0}
UNAUDITED = ("bp", "frozen")  # bp's deep_cos is 1 by construction; frozen has no credit
PASS, FIRE, MIXED, NONE = "PASS", "FIRE", "MIXED", "–"
VERDICTS = ("(a)", "(b)", "(c)", "(d)")  # their column names


def setting_columns(df) -> list[str]:
    fields = set().union(*(SECTIONS[s].__dataclass_fields__ for s in ("model", "data", "train")))
    varying = [c for c in df.columns if c not in NOT_SETTING and c not in BASE_SETTING and c in fields
               and df[c].nunique(dropna=False) > 1]
    return BASE_SETTING + sorted(varying)


def row_columns(df) -> list[str]:
    """Setting, rule, credit_norm (always: the reference study's normalization is a confound to see) and any
    other rule knob that varies."""
    knobs = sorted(c for c in df.columns if c in RULE_KNOBS and (c in VARIANTS or df[c].nunique(dropna=False) > 1))
    return setting_columns(df) + ["rule"] + knobs


def combine(fired: Iterable) -> str:
    """PASS / FIRE / MIXED over seeds' verdicts (True = fired; None = not judged), – when none was judged."""
    judged = [f for f in fired if f is not None and f == f]
    if not judged:
        return NONE
    return FIRE if all(judged) else PASS if not any(judged) else MIXED


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-a of two equally long lists: (concordant - discordant pairs) / pairs, over the pairs whose
    four values are all known; ties count 0; NaN without such a pair."""
    known = [i for i in range(len(x)) if x[i] == x[i] and y[i] == y[i]]
    pairs = list(combinations(known, 2))
    if not pairs:
        return float("nan")
    sign = [(x[i] - x[j]) * (y[i] - y[j]) for i, j in pairs]
    return (sum(s > 0 for s in sign) - sum(s < 0 for s in sign)) / len(pairs)


def _verdict(value: float, fires) -> bool | None:
    return None if value != value else bool(fires(value))


def run_verdicts(df, threshold_pp: float = THRESHOLD_PP, agreement: float = AGREEMENT):
    """The finished-runs table (`raycredit.results`) with frozen_acc, margin_pp, the run verdicts (a)-(d)
    (True = fires, False = passes, None = not judged) and the (setting, seed)'s tau_<metric> columns."""
    import pandas as pd

    df = df.reset_index(drop=True)
    for m in ("mode1a", "mode1b", "test_acc", "deep_cos", *FUNCTIONAL):
        if m not in df:
            df[m] = float("nan")
    setting = setting_columns(df)
    frozen = df[df["rule"] == "frozen"].groupby(setting, dropna=False)["test_acc"].mean().rename("frozen_acc")
    df = df.merge(frozen.reset_index(), on=setting, how="left") if len(frozen) else df.assign(frozen_acc=float("nan"))
    df["margin_pp"] = 100 * (df["test_acc"] - df["frozen_acc"])
    df["(a)"] = [_verdict(v, lambda v: v >= 0.5) for v in df["mode1a"]]
    df["(b)"] = [_verdict(v, lambda v: v >= 0.5) for v in df["mode1b"]]
    df["(d)"] = [None if r == "frozen" else _verdict(v, lambda v: v < threshold_pp)
               for r, v in zip(df["rule"], df["margin_pp"], strict=True)]
    df["(c)"] = None
    for m in FUNCTIONAL:
        df[f"tau_{m}"] = float("nan")
    audited = df["deep_cos"].notna() & ~df["rule"].isin(UNAUDITED)
    label = [c for c in row_columns(df) if c not in setting]
    for _, group in df[audited].groupby(setting + ["seed"], dropna=False):
        if group[label].drop_duplicates().shape[0] < 2:
            continue
        taus = {m: kendall_tau(list(group["deep_cos"]), list(sign * group[m])) for m, sign in FUNCTIONAL.items()}
        known = sorted(t for t in taus.values() if t == t)
        fired = None if not known else bool(pd.Series(known).median() < agreement)
        for i in group.index:
            df.at[i, "(c)"] = fired
            for m, t in taus.items():
                df.at[i, f"tau_{m}"] = t
    return df


def protocol_table(df, threshold_pp: float = THRESHOLD_PP, agreement: float = AGREEMENT):
    """One row per (setting, rule, varying rule knobs): seeds, margin_pp mean and std (ddof=1), and the
    verdicts (a)-(d) over seeds (PASS / FIRE / MIXED / –)."""
    runs = run_verdicts(df, threshold_pp, agreement)
    keys = row_columns(runs)
    g = runs.groupby(keys, dropna=False, sort=True)
    out = g.size().rename("seeds").to_frame()
    out["margin_pp_mean"] = g["margin_pp"].mean()
    out["margin_pp_std"] = g["margin_pp"].std(ddof=1)
    for v in VERDICTS:
        out[v] = g[v].agg(lambda s: combine(s.tolist()))
    return out.reset_index()


def functional_table(df, agreement: float = AGREEMENT):
    """Per setting and audited row: the seed means of the functional metrics and deep_cos, each with its rank
    among the setting's rows (1 = best), the setting's tau_<metric> (mean over seeds) and its (c) over seeds;
    the seeds' §4.2 table."""
    runs = run_verdicts(df, agreement=agreement)
    setting, keys = setting_columns(runs), row_columns(runs)  # the experiment's, before leaving rows out
    runs = runs[runs["(c)"].notna()]
    if runs.empty:
        return runs
    means = runs.groupby(keys, dropna=False)[["deep_cos", *FUNCTIONAL]].mean().reset_index()
    for m, sign in {**FUNCTIONAL, "deep_cos": 1.0}.items():
        means[f"{m}_rank"] = (sign * means[m]).groupby([means[k] for k in setting], dropna=False).rank(
            ascending=False, method="min")
    per_setting = runs.groupby(setting, dropna=False)
    taus = per_setting[[f"tau_{m}" for m in FUNCTIONAL]].mean()
    verdict = per_setting["(c)"].agg(lambda s: combine(s.tolist())).rename("(c)")
    return means.merge(taus.join(verdict).reset_index(), on=setting, how="left")
