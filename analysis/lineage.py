"""Tables of the lineage searches (the reference study's phases 4-10), each mean ± sample std (ddof=1) over seeds:

- `handoff`: every branch of a trunk against the trunk continued unchanged ("diff vs continue_DFA", paired by
  seed: the branch's final test_acc minus its own trunk's), per branch epoch t0 (searches/handoff.py);
- `recovery`: credit estimators fitted on a frozen snapshot, their final deep_cos (the reference study's Gamma),
  deep_rho and nudge, per snapshot epoch (searches/snapshot_recovery.py);
- `exploitability`: the k-step loss changes per credit, normalization, blocks, k and eta, the line search's
  best eta, and PUR (searches/exploitability.py);
- `schedules`: test accuracy of each schedule at every epoch where one of them switches, and at the end
  (searches/schedules.py).

Reads MLflow only; never re-trains. Each writes <name>.csv and <name>.md into the output folder.

    python analysis/lineage.py handoff --experiment handoff-smoke [--tracking-uri URI] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.summary import mean_std
from analysis.tables import cli_main, markdown_table, write_report
from raycredit.tracking.results import results

SCAFFOLD_KNOBS = (("prefit_epochs", 0), ("freeze_after", -1), ("decay_to", -1.0))


def load(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One row per finished run: params (typed), the run's key and id, and its last value of every metric."""
    df = results(experiment, tracking_uri)
    if not df.empty:
        df["parent_run"] = df["parent_run"].fillna("") if "parent_run" in df else ""
    return df


def branch_name(row: pd.Series) -> str:
    """The reference study's names: handoff_to_Vec, blend_<alpha> (a prefit vector field), the auxiliary kind otherwise,
    with the schedule knobs that differ from their defaults; a rule change is old->new."""
    if row["rule"] != "scaffold":
        return str(row["rule"])
    kind, alpha = row["aux_kind"], row["blend_alpha"]
    if kind == "vector_field":
        name = "handoff_to_Vec" if alpha == 1 else f"blend_{alpha:g}"
    else:
        name = f"{kind} α={alpha:g}"
    extras = [f"{k}={row[k]:g}" for k, default in SCAFFOLD_KNOBS if k in row and row[k] != default]
    return " ".join([name, *extras])


def mean_pm(values: pd.Series) -> str:
    return mean_std(values.mean(), values.std(ddof=1))


def handoff_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (t0, branch): seeds, final test_acc, and its paired difference from the trunk of the same seed."""
    trunks = df[df["parent_run"] == ""].set_index("run_key")
    branches = df[df["parent_run"].isin(trunks.index)].copy()
    if branches.empty:
        return pd.DataFrame()
    branches["branch"] = branches.apply(branch_name, axis=1)
    branches["diff"] = branches["test_acc"].to_numpy() - trunks.loc[branches["parent_run"], "test_acc"].to_numpy()
    rows = []
    for (t0, name), g in branches.groupby(["parent_epoch", "branch"], sort=True):
        base = trunks.loc[g["parent_run"]]
        rows.append({"t0": int(t0), "branch": f"continue_{base['rule'].iloc[0].upper()}", "seeds": len(g),
                     "final acc": mean_pm(base["test_acc"]), "diff vs trunk": "–"})
        rows.append({"t0": int(t0), "branch": name, "seeds": len(g), "final acc": mean_pm(g["test_acc"]),
                     "diff vs trunk": mean_std(g["diff"].mean(), g["diff"].std(ddof=1)),
                     "diff_mean": g["diff"].mean()})
    table = pd.DataFrame(rows).drop_duplicates(subset=["t0", "branch"])
    return table


def report(table: pd.DataFrame, title: str, caption: str, out_dir: str | Path, name: str) -> str:
    """Write <name>.csv and <name>.md: the title, the caption and the table (or that there is nothing yet)."""
    lines = [f"# {title}", ""]
    lines += ["No finished runs of this kind."] if table.empty else [caption, "", markdown_table(table, "g")]
    return write_report(lines, table, out_dir, name)


def report_handoff(tracking_uri: str, experiment: str, out_dir: str | Path) -> str:
    table = handoff_table(load(tracking_uri, experiment))
    shown = table.drop(columns=["diff_mean"]).fillna("–") if not table.empty else table
    return report(shown, f"Hand-offs of {experiment}", "Final test_acc, mean ± sample std (ddof=1) over seeds; "
                  "'diff vs trunk' pairs each branch with its own seed's trunk continued unchanged.", out_dir,
                  "handoff")


RECOVERY_METRICS = ("deep_cos", "deep_rho", "deep_nudge")


def recovery_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (snapshot epoch, estimator): the fitted estimator's final credit diagnostics over seeds."""
    fits = df[df["freeze_model"]].copy() if "freeze_model" in df else pd.DataFrame()
    if fits.empty:
        return pd.DataFrame()
    rows = []
    for (t, rule, s_type), g in fits.groupby(["parent_epoch", "rule", "s_type"], sort=True, dropna=False):
        row = {"snapshot epoch": int(t), "estimator": rule if rule in ("dfa", "state_bridge") else f"{rule} "
               f"({s_type})", "seeds": len(g)}
        row.update({m: mean_pm(g[m]) for m in RECOVERY_METRICS})
        rows.append(row)
    return pd.DataFrame(rows).drop_duplicates()


def report_recovery(tracking_uri: str, experiment: str, out_dir: str | Path) -> str:
    title = f"Credit recovery on frozen snapshots: {experiment}"
    return report(recovery_table(load(tracking_uri, experiment)), title,
                  "After fitting on the frozen snapshot: deep_cos (the reference study's Gamma), deep_rho and "
                  "deep_nudge, each over the same deep layers (those whose credit the rule estimates), mean ± sample "
                  "std (ddof=1) over seeds.", out_dir, "recovery")


def exploit_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (snapshot epoch, credit, norm, blocks, k): the line search's best eta and the loss changes there."""
    if "exploitability" not in df:
        return pd.DataFrame()
    ex = df[df["exploitability"]].copy()
    if ex.empty:
        return pd.DataFrame()
    runs = df.set_index("run_key")
    # the snapshot's epoch: a credit fitted on a frozen snapshot counts from the trunk epoch it was fitted on
    ex["snapshot"] = [int(runs.loc[p, "parent_epoch"]) if p in runs.index and runs.loc[p, "parent_run"]
                      else int(t) for p, t in zip(ex["parent_run"], ex["parent_epoch"], strict=True)]
    ex["credit"] = ["oracle BP" if r == "bp" else r for r in ex["rule"]]
    ks = sorted({int(c.rsplit("/k", 1)[1]) for c in ex.columns if c.startswith("exploit/best_eta/k")})
    rows = []
    for (t, credit, norm, blocks), g in ex.groupby(["snapshot", "credit", "credit_norm", "exploit_blocks"],
                                                   sort=True, dropna=False):
        row = {"snapshot epoch": int(t), "credit": credit, "norm": "norm" if norm else "raw",
               "blocks": blocks, "seeds": len(g), "Gamma": mean_pm(g["deep_cos"]), "rho": mean_pm(g["deep_rho"])}
        for k in ks:
            row[f"best eta k={k}"] = best_etas(g, k)
            for name, col in (("dL_same", "dL_same"), ("dL_held", "dL_held"), ("PUR", "pur")):
                row[f"{name} k={k}"] = mean_pm(g.get(f"exploit/{col}/k{k}", pd.Series(dtype=float)))
            at_best = pd.Series([r.get(f"exploit/upd_var/k{k}/eta{r[f'exploit/best_eta/k{k}']:g}", float("nan"))
                                 for _, r in g.iterrows()], dtype=float)
            row[f"upd_var k={k}"] = mean_pm(at_best)
            row[f"diverged k={k}"] = diverged_count(g, k)
        rows.append(row)
    return pd.DataFrame(rows)


def best_etas(g: pd.DataFrame, k: int) -> str:
    """The best etas (as the reference study lists them), '!' after one on the grid's edge (the line search did not
    bracket it), 'none' for a seed whose every eta diverged."""
    edge = g.get(f"exploit/best_eta_edge/k{k}", pd.Series(0.0, index=g.index))
    names = {"none" if e != e else f"{e:g}{'!' if x == 1 else ''}" for e, x in
             zip(g[f"exploit/best_eta/k{k}"], edge, strict=True)}
    return "/".join(sorted(names))


def diverged_count(g: pd.DataFrame, k: int) -> str:
    """Measurements (seed x eta x batch) whose loss became non-finite by step k, of all made."""
    cols = [c for c in g.columns if c.startswith(f"exploit/diverged/k{k}/eta")]
    return f"{int(g[cols].fillna(0).to_numpy().sum())}/{int(g['exploit_batches'].sum()) * len(cols)}"


def report_exploitability(tracking_uri: str, experiment: str, out_dir: str | Path) -> str:
    from raycredit.tracking.store import load_runs

    runs = load_runs(tracking_uri, experiment)
    measuring = runs[runs.get("params.exploitability", pd.Series("", index=runs.index)) == "True"]
    unfinished = int((measuring["status"] != "FINISHED").sum())
    return report(exploit_table(load(tracking_uri, experiment)), f"Snapshot exploitability: {experiment}",
                  "Loss change after k local steps at the line search's best eta (lowest same-batch change among the "
                  "etas where no batch diverged; '!': the grid's smallest or largest eta, so the optimum may lie "
                  "beyond it), on the same batch and held out; PUR = dL_held / dL_same; upd_var: the relative "
                  "variance of the update over batches, at that eta; diverged: measurements (seed x eta x batch) "
                  "whose loss became non-finite by step k, left out of the means. Mean ± sample std (ddof=1) over "
                  f"seeds. Exploitability runs that did not finish: {unfinished} of {len(measuring)}.", out_dir,
                  "exploitability")


TRUNK_NAMES = {"dfa": "DFA_only", "vector_field": "Vec_only_from_0"}
SHORT = {"dfa": "DFA", "vector_field": "Vec"}


def schedule_name(row: pd.Series, parent: pd.Series | None) -> str:
    """The reference study's phase-8/9 names: DFA_only, Vec_T5_then_DFA, periodic refits and top-down blends."""
    rule = row["rule"]
    if parent is None:
        return TRUNK_NAMES.get(rule, rule)
    t = int(row["parent_epoch"])
    if rule == "scaffold":
        if row.get("refit_every", 0):
            refit = f"refit_{int(row['refit_epochs'])}_every_{int(row['refit_every'])}"
            return f"{refit}_from_{t} α={row['blend_alpha']:g}"
        if row.get("blend_layers", 0):
            return f"last{int(row['blend_layers'])}_vec_from_{t} α={row['blend_alpha']:g}"
        return f"{branch_name(row)}_from_{t}"
    return f"{SHORT.get(parent['rule'], parent['rule'])}_T{t}_then_{SHORT.get(rule, rule)}"


def schedules_table(df: pd.DataFrame, tracking_uri: str) -> pd.DataFrame:
    """Per schedule: test_acc at each switching epoch and at the end, mean ± std (ddof=1) over seeds."""
    from raycredit.tracking import metric_history

    if df.empty:
        return pd.DataFrame()
    by_key = df.set_index("run_key")
    df = df.copy()
    df["schedule"] = [schedule_name(r, by_key.loc[r["parent_run"]] if r["parent_run"] in by_key.index else None)
                      for _, r in df.iterrows()]
    marks = sorted({int(t) for t in df["parent_epoch"] if t})
    acc = {run_id: dict(metric_history(tracking_uri, run_id, "test_acc")) for run_id in df["run_id"]}
    rows = []
    for name, g in df.groupby("schedule", sort=False):
        row = {"schedule": name, "seeds": len(g)}
        for t in marks:
            row[f"acc@{t}"] = mean_pm(pd.Series([acc[r].get(t, float("nan")) for r in g["run_id"]]))
        row["final"] = mean_pm(g["test_acc"])
        rows.append(row)
    return pd.DataFrame(rows)


def report_schedules(tracking_uri: str, experiment: str, out_dir: str | Path) -> str:
    return report(schedules_table(load(tracking_uri, experiment), tracking_uri), f"Credit schedules: {experiment}",
                  "test_acc at the epochs where a schedule switches and at the end, mean ± sample std (ddof=1) over "
                  "seeds (a branch's epochs up to its switch are its trunk's).", out_dir, "schedules")


REPORTS = {"handoff": report_handoff, "recovery": report_recovery, "exploitability": report_exploitability,
           "schedules": report_schedules}
SEARCHES = {"handoff": "handoff", "recovery": "snapshot_recovery", "exploitability": "exploitability",
            "schedules": "schedules"}  # the search whose experiments each table reads
USAGE = f"usage: lineage.py {{{','.join(REPORTS)}}} --experiment NAME [--tracking-uri URI] [--out DIR]"


def check_search(tracking_uri: str | None, experiment: str, kind: str) -> None:
    """UserError when `experiment` holds trials of a search other than the one table `kind` reads: the table
    would read them as that search's (a hand-off experiment has no schedules). Reads only."""
    from raycredit.checks import foreign_run
    from raycredit.errors import UserError
    from raycredit.tracking.store import existing_store

    other = foreign_run(existing_store(tracking_uri), experiment, SEARCHES[kind])
    if other is not None:
        theirs = next((k for k, v in SEARCHES.items() if v == other.data.tags["search"]), None)
        hint = f"`lineage.py {theirs}` reads it" if theirs else "lineage.py reads no table of that search"
        raise UserError(f"experiment {experiment!r} holds the runs of search {other.data.tags['search']!r}; "
                        f"`lineage.py {kind}` reads those of searches/{SEARCHES[kind]}.py ({hint})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    if not argv or argv[0] not in REPORTS:
        print(USAGE, file=sys.stderr)
        print(f"lineage.py: error: the first argument is one of {', '.join(REPORTS)}"
              + (f" (not {argv[0]!r})" if argv else ""), file=sys.stderr)
        return 2
    kind = argv[0]

    def run(tracking_uri: str | None, experiment: str, out_dir: str) -> str:
        check_search(tracking_uri, experiment, kind)
        return REPORTS[kind](tracking_uri, experiment, out_dir)

    return cli_main(f"lineage {kind}", __doc__, run, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
