"""The reference study's 4-diagnostic evaluation protocol (seeds 001 §6, 004), as verdicts on finished runs.

The seeds name the four diagnostics but define them only in part; where raycredit's definition differs from
theirs, the difference and its knob are stated here. Every verdict is relative to the setting's own controls, so
none can fire on BP by construction. A run's verdicts, from its final epoch:

- (a) residual-stream growth. Seeds: ||h_L|| grows >= 100x over its value at init (`mode1a`), which on a plain
  network, whose ||h_L|| at init is small, fires on BP itself. Here: FIRE when the run's ||h_L|| is at least
  `growth` (100) times the mean ||h_L|| of the setting's BP runs at the same epoch (`h_norm/last`); `mode1a` is
  still logged and shown beside it.
- (b) gradient-floor collapse. Seeds: ||g_L|| < 1e-7 (`mode1b`). Here: `mode1b` and ||g_L|| at most `floor_ratio`
  (1e-3) times the mean ||g_L|| of the setting's BP runs: a floor that BP's own gradient also reaches is the
  task's (a converged fit), not a collapse.
- (c) functional agreement, once per (setting, seed). Seeds §4.2 ("functional triangulation"): accuracy, nudging
  and training-loss decrease rank the credit rules SB >> CB ~ DFA, and deep cos alone ranks them differently
  (CB first). Here: the audited rules (every rule with a deep_cos except bp) are ranked by each functional
  metric (test_acc, deep_nudge, and the final train_loss: every rule of a (setting, seed) starts from the same
  initial network and loss, so this is the decrease over the whole run, which does not punish a rule for having
  converged, as a window's decrease would); their consensus is the mean of the three ranks. FIRE when the rule
  that deep_cos ranks first is not among the consensus's first: deep_cos would crown a rule that does worse
  (the §4.2 finding). Kendall's tau of deep_cos's order against each metric and the consensus is reported
  beside it. Needs two audited rules or more.
- (d) depth utilization. Seeds: a margin of 2 pp over a shallow network trained with the same rule (004:
  "margin vs DFA-shallow baseline ... (d) verdict at 2pp threshold ... MIXED if seeds disagree"). Here: margin =
  test_acc - the frozen-blocks baseline of the setting, FIRE below `threshold_pp` (2). The baseline is the
  better of the frozen runs' trained readout and their fitted readout (its convex optimum on the same frozen
  features, `raycredit.rules.frozen`), each a mean over the setting's frozen seeds: nothing is called below the
  frozen features before their readout is fitted. A setting is judged only where its BP beats that baseline by
  `threshold_pp` (the both-fail analysis's guard): elsewhere exact gradients do not use depth either, and every
  rule's (d) reads "invalid setting".

Per setting and row (a rule and its varying knobs, as in the audit table), a verdict over seeds is PASS when no
seed fires, FIRE when every seed does, MIXED when they disagree (the reference study's 004: "reports MIXED if seeds
disagree"), and "– (why)" when no seed could be judged, with the reason. `analysis/protocol.py` prints these
tables; `audit_table.py` shows (a), (b) and (d) as columns; `raycredit diagnose` prints a run's own.

A setting is (dataset, d, L, epochs) plus every other data, model or training knob that varies in the
experiment except the optimizer's (`optimizer`, `weight_decay`: a rule such as Kolen-Pollack brings its own, and
stays in its setting); rows split a setting's runs by rule, credit_norm and any other rule or optimizer knob
that varies.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

from raycredit.config import RULE_KNOBS as RULE_SECTION_KNOBS
from raycredit.config import SECTIONS

BASE_SETTING = ["dataset", "d", "L", "epochs"]
OPTIMIZER_KNOBS = {"optimizer", "weight_decay"}  # a rule's own optimizer: a row knob, not a setting
NOT_SETTING = {"rule", "seed", "device", "checkpoint_every"} | OPTIMIZER_KNOBS | set(
    SECTIONS["rule"].__dataclass_fields__) | set(SECTIONS["diag"].__dataclass_fields__)
VARIANTS = ["credit_norm"]  # rule knobs that split a setting's runs of one rule, always reported
RULE_KNOBS = RULE_SECTION_KNOBS | OPTIMIZER_KNOBS
THRESHOLD_PP = 2.0
GROWTH = 100.0
FLOOR_RATIO = 1e-3
# functional metrics and their sign: sign * value is higher for a better rule
FUNCTIONAL = {"test_acc": 1.0, "deep_nudge": -1.0, "train_loss": -1.0}
# every metric the verdicts read
METRICS = ("mode1a", "mode1b", "test_acc", "deep_cos", "h_norm/last", "g_norm/last", "fit_test_acc", *FUNCTIONAL)
UNAUDITED = ("bp", "frozen")  # bp's deep_cos is 1 by construction; frozen has no credit
PASS, FIRE, MIXED, NONE = "PASS", "FIRE", "MIXED", "–"
VERDICTS = ("(a)", "(b)", "(c)", "(d)")
RULE_VERDICTS = ("(a)", "(b)", "(d)")  # per rule row; (c) is a setting's and seed's


def varies(df, column: str) -> bool:
    """Whether the rows differ in `column`. A blank in a rule knob's column says that the knob does not apply
    to the row's rule (`raycredit.rules.applied`), so only the rows with a value count there; elsewhere (an
    Optuna trial that did not draw the knob) a blank counts as a value of its own."""
    return df[column].nunique(dropna=column in RULE_KNOBS) > 1


def setting_columns(df) -> list[str]:
    fields = set().union(*(SECTIONS[s].__dataclass_fields__ for s in ("model", "data", "train")))
    varying = [c for c in df.columns if c not in NOT_SETTING and c not in BASE_SETTING and c in fields
               and varies(df, c)]
    return BASE_SETTING + sorted(varying)


def row_columns(df) -> list[str]:
    """Setting, rule, credit_norm (always: the reference study's normalization is a confound to see) and any
    other rule or optimizer knob that varies."""
    knobs = sorted(c for c in df.columns if c in RULE_KNOBS and (c in VARIANTS or varies(df, c)))
    return setting_columns(df) + ["rule"] + knobs


def combine(fired: Iterable, why: Iterable | None = None) -> str:
    """PASS / FIRE / MIXED over seeds' verdicts (True = fired; None = not judged); without any judged seed, "–"
    followed by the first reason given in `why` (one per seed)."""
    fired = list(fired)
    judged = [f for f in fired if f is not None and f == f]
    if not judged:
        reasons = [w for w in (why or []) if isinstance(w, str) and w]
        return f"{NONE} ({reasons[0]})" if reasons else NONE
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


def setting_controls(df, setting: list[str]):
    """Per setting: frozen_acc (the trained readout), frozen_fit_acc (the fitted one), baseline_acc (the better),
    bp_acc, bp_h (mean h_norm/last), bp_g (mean g_norm/last), each a mean over seeds."""
    import pandas as pd

    frozen = df[df["rule"] == "frozen"].groupby(setting, dropna=False)
    bp = df[df["rule"] == "bp"].groupby(setting, dropna=False)
    parts = [frozen["test_acc"].mean().rename("frozen_acc"), frozen["fit_test_acc"].mean().rename("frozen_fit_acc"),
             bp["test_acc"].mean().rename("bp_acc"), bp["h_norm/last"].mean().rename("bp_h"),
             bp["g_norm/last"].mean().rename("bp_g")]
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    out = pd.concat(parts, axis=1).reset_index()
    for c in ("frozen_acc", "frozen_fit_acc", "bp_acc", "bp_h", "bp_g"):
        if c not in out:
            out[c] = float("nan")
    out["baseline_acc"] = out[["frozen_acc", "frozen_fit_acc"]].max(axis=1)  # NaN only when both are
    return out


def run_verdicts(df, threshold_pp: float = THRESHOLD_PP, growth: float = GROWTH, floor_ratio: float = FLOOR_RATIO):
    """The finished-runs table (`raycredit.results`) with the setting's controls (frozen_acc, frozen_fit_acc,
    baseline_acc, bp_acc, bp_margin_pp), margin_pp, h_ratio and g_ratio (to BP's), the run verdicts (a)-(d)
    (True = fires, False = passes, None = not judged, with the reason in why_(a) ...), and the (setting,
    seed)'s tau_<metric> and tau_consensus columns."""
    import pandas as pd

    df = df.reset_index(drop=True).assign(**{m: float("nan") for m in METRICS if m not in df})
    setting = setting_columns(df)
    controls = setting_controls(df, setting)
    if controls is not None:
        df = df.merge(controls, on=setting, how="left")
    else:
        df = df.assign(**dict.fromkeys(("frozen_acc", "frozen_fit_acc", "baseline_acc", "bp_acc", "bp_h", "bp_g"),
                                       float("nan")))
    df = df.assign(margin_pp=100 * (df["test_acc"] - df["baseline_acc"]),
                   bp_margin_pp=100 * (df["bp_acc"] - df["baseline_acc"]),
                   h_ratio=df["h_norm/last"] / df["bp_h"], g_ratio=df["g_norm/last"] / df["bp_g"])
    judged = {v: [fn(r) for _, r in df.iterrows()] for v, fn in (
        ("(a)", lambda r: verdict_a(r, growth)), ("(b)", lambda r: verdict_b(r, floor_ratio)),
        ("(d)", lambda r: verdict_d(r, threshold_pp)))}
    extra = {**{v: [f for f, _ in js] for v, js in judged.items()},
             **{f"why_{v}": [why for _, why in js] for v, js in judged.items()},
             "(c)": [None] * len(df),
             "why_(c)": ["bp is the reference" if r == "bp" else "no credit" if r == "frozen" else
                         "no other audited rule at this setting and seed" for r in df["rule"]],
             **{f"tau_{m}": float("nan") for m in (*FUNCTIONAL, "consensus")}, "consensus_rank": float("nan")}
    df = pd.concat([df, pd.DataFrame(extra, index=df.index)], axis=1)
    return functional_agreement(df, setting)


def verdict_a(r, growth: float) -> tuple[bool | None, str]:
    """(a) residual-stream growth: ||h_L|| at least `growth` x the setting's BP's; (verdict, why not judged)."""
    if r["bp_h"] != r["bp_h"]:
        return None, "no BP run in the setting"
    if r["h_ratio"] != r["h_ratio"]:
        return None, "no ||h_L|| logged"
    return bool(r["h_ratio"] >= growth), ""


def verdict_b(r, floor_ratio: float) -> tuple[bool | None, str]:
    """(b) gradient-floor collapse: mode1b, and ||g_L|| at most `floor_ratio` x BP's."""
    if r["mode1b"] != r["mode1b"]:
        return None, "no ||g_L|| logged"
    if r["bp_g"] != r["bp_g"]:
        return None, "no BP run in the setting"
    return bool(r["mode1b"] >= 0.5 and r["g_ratio"] <= floor_ratio), ""


def verdict_d(r, threshold_pp: float) -> tuple[bool | None, str]:
    """(d) depth utilization: test_acc less than `threshold_pp` over the frozen baseline, judged only in a
    setting where BP clears it."""
    for missing, why in ((r["rule"] == "frozen", "the baseline itself"),
                         (r["baseline_acc"] != r["baseline_acc"], "no frozen run in the setting"),
                         (r["bp_acc"] != r["bp_acc"], "no BP run in the setting")):
        if missing:
            return None, why
    if r["bp_margin_pp"] < threshold_pp:
        return None, f"invalid setting: BP {r['bp_margin_pp']:+.1f} pp over the baseline, < {threshold_pp:g}"
    if r["margin_pp"] != r["margin_pp"]:
        return None, "no test_acc"
    return bool(r["margin_pp"] < threshold_pp), ""


def functional_agreement(df, setting: list[str]):
    """Verdict (c) per (setting, seed) with two or more audited rules: deep_cos crowns a rule that the consensus
    of the functional metrics does not rank best; with the Kendall tau of deep_cos's order against each."""
    import pandas as pd

    audited = df["deep_cos"].notna() & ~df["rule"].isin(UNAUDITED)
    label = [c for c in row_columns(df) if c not in setting]
    for _, group in df[audited].groupby(setting + ["seed"], dropna=False):
        if group[label].drop_duplicates().shape[0] < 2:
            continue
        ranks = pd.concat([(-sign * group[m]).rank(method="average") for m, sign in FUNCTIONAL.items()], axis=1)
        consensus = ranks.mean(axis=1, skipna=True)
        cos = list(group["deep_cos"])
        taus = {m: kendall_tau(cos, list(sign * group[m])) for m, sign in FUNCTIONAL.items()}
        taus["consensus"] = kendall_tau(cos, list(-consensus))
        if consensus.isna().all():
            continue
        best = set(consensus.index[consensus == consensus.min()])
        crowned = group["deep_cos"].idxmax()
        for i in group.index:
            df.at[i, "(c)"] = crowned not in best
            df.at[i, "why_(c)"] = ""
            df.at[i, "consensus_rank"] = consensus[i]
            for m, t in taus.items():
                df.at[i, f"tau_{m}"] = t
    return df


def protocol_table(df, threshold_pp: float = THRESHOLD_PP, growth: float = GROWTH, floor_ratio: float = FLOOR_RATIO):
    """One row per (setting, rule, varying rule knobs): seeds, margin_pp mean and std (ddof=1), the setting's
    baseline and BP margin, and the verdicts (a), (b), (d) over seeds (PASS / FIRE / MIXED / – (why))."""
    runs = run_verdicts(df, threshold_pp, growth, floor_ratio)
    keys = row_columns(runs)
    g = runs.groupby(keys, dropna=False, sort=True)
    out = g.size().rename("seeds").to_frame()
    out["margin_pp_mean"] = g["margin_pp"].mean()
    out["margin_pp_std"] = g["margin_pp"].std(ddof=1)
    for c in ("frozen_acc", "frozen_fit_acc", "baseline_acc", "bp_margin_pp"):
        out[c] = g[c].first()
    for v in RULE_VERDICTS:
        out[v] = [combine(s[v].tolist(), s[f"why_{v}"].tolist()) for _, s in g]
    return out.reset_index()


def functional_table(df, threshold_pp: float = THRESHOLD_PP):
    """Per setting and audited row: the seed means of the functional metrics and deep_cos, each with its rank
    among the setting's rows (1 = best), the consensus rank (mean over seeds), and per setting the mean taus and
    (c) over seeds: the reference study's §4.2 table, with the verdict once per setting."""
    runs = run_verdicts(df, threshold_pp)
    setting, keys = setting_columns(runs), row_columns(runs)  # the experiment's, before leaving rows out
    runs = runs[runs["(c)"].notna()]
    if runs.empty:
        return runs
    means = runs.groupby(keys, dropna=False)[["deep_cos", *FUNCTIONAL, "consensus_rank"]].mean().reset_index()
    for m, sign in {**FUNCTIONAL, "deep_cos": 1.0}.items():
        means[f"{m}_rank"] = (sign * means[m]).groupby([means[k] for k in setting], dropna=False).rank(
            ascending=False, method="min")
    per_seed = runs.drop_duplicates(setting + ["seed"])
    per_setting = per_seed.groupby(setting, dropna=False)
    taus = per_setting[[f"tau_{m}" for m in (*FUNCTIONAL, "consensus")]].mean()
    verdict = per_setting["(c)"].agg(lambda s: combine(s.tolist())).rename("(c)")
    return means.merge(taus.join(verdict).reset_index(), on=setting, how="left")
