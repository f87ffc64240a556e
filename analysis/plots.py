"""Plots of a search, as PNG files and as artifacts of the search's summary run in MLflow.

- growth.png: ||h_L|| and ||g_L|| at each diagnostic epoch, a panel per (width d, depth L), one line per rule
  (mean over its runs, ± std band), log axes;
- accuracy_vs_depth.png: final test accuracy against L, a panel per width d, one line per rule (mean ± std
  band over runs), the frozen baseline's trained readout dashed and its fitted readout dotted, ticks at the
  depths run (when L varies);
  (in these and in penalty_rescue.png a rule whose runs differ in credit_norm gets a line per value)
- penalty_rescue.png: final test accuracy against the block-output penalty lambda, one line per rule
  (when penalty_lam varies);
- both_fail_map.png: the d x L grid coloured by the fraction of seeds where FA and DFA both fall below
  the frozen baseline (the better readout) in a valid setting (BP beats frozen), annotated k/n, a panel per
  credit_norm
  (when the experiment has fa, dfa and frozen runs).

A plot is drawn only when the experiment has what it needs. The files go to --out, and to the run named
`plots` (tag raycredit.summary) under results/. Reads MLflow only; never re-trains.

    python analysis/plots.py --experiment both_fail_scan-smoke [--tracking-uri URI] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.both_fail import both_fail  # noqa: E402
from analysis.tables import cli_main, finished_runs, finished_trials  # noqa: E402
from raycredit import tracking  # noqa: E402

FINAL = ("test_acc", "deep_cos", "diverged", "fit_test_acc")


def line_labels(df: pd.DataFrame) -> pd.Series:
    """One line per rule, and per credit_norm where the local rules' runs differ in it."""
    if "credit_norm" not in df:
        return df["rule"]
    normed = df["credit_norm"].astype(str) == "True"
    local = ~df["rule"].isin(["bp", "frozen"])
    if normed[local].nunique() < 2:
        return df["rule"]
    return df["rule"].where(~(normed & local), df["rule"] + " (credit_norm)")


def band(ax, x, mean, std, **style) -> None:
    """A line of means with a ± std band (std over runs, ddof=1; no band where a point has one run)."""
    (line,) = ax.plot(x, mean, **style)
    ok = std.notna()
    if ok.any():
        ax.fill_between(x[ok], (mean - std)[ok], (mean + std)[ok], color=line.get_color(), alpha=0.2, lw=0)


def growth(histories: pd.DataFrame):
    """histories: one row per (run, epoch) with rule, d, L, epoch, h_norm_L, g_norm_L (and credit_norm).

    A column of panels per depth L and two rows per width d (‖h_L‖, then ‖g_L‖): runs of different depths or
    widths are never averaged together. One line per rule: the mean over its runs (seeds and any other knob)
    at each diagnostic epoch, with a ± std band.
    """
    histories = histories.assign(line=line_labels(histories))
    ds = sorted(histories["d"].unique())
    Ls = sorted(histories["L"].unique())
    fig, axes = plt.subplots(2 * len(ds), len(Ls), figsize=(4 * len(Ls) + 1, 3 * 2 * len(ds)), squeeze=False)
    for i, d in enumerate(ds):
        for j, L in enumerate(Ls):
            part = histories[(histories["d"] == d) & (histories["L"] == L)]
            for k, (col, label) in enumerate((("h_norm_L", "‖h_L‖"), ("g_norm_L", "‖g_L‖"))):
                ax = axes[2 * i + k, j]
                for rule, g in part.groupby("line", sort=True):
                    stats = g.groupby("epoch")[col].agg(["mean", "std"]).dropna(subset=["mean"])
                    stats = stats[stats["mean"] > 0]  # log axis
                    if len(stats):
                        band(ax, stats.index.to_series(), stats["mean"], stats["std"], marker="o", ms=3, label=rule)
                ax.set(xlabel="epoch (diagnostic epochs)", ylabel=f"{label} (mean ± std)", yscale="log",
                       title=f"{label}, d={d}, L={L}")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if ax.get_lines():
                    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def accuracy_against(df: pd.DataFrame, x: str, xlabel: str, title: str, ax=None):
    """Mean test accuracy ± std over runs against knob x, one line per rule; the frozen baseline's trained readout
    dashed and its fitted readout dotted."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    stats = df.assign(line=line_labels(df)).groupby(["line", x])["test_acc"].agg(["mean", "std"]).reset_index()
    for rule, g in stats.groupby("line", sort=True):
        style = dict(linestyle="--", color="black") if rule == "frozen" else dict(marker="o")
        band(ax, g[x], g["mean"], g["std"], label="frozen, trained readout" if rule == "frozen" else rule, **style)
    fitted = df[df["rule"] == "frozen"].get("fit_test_acc")
    if fitted is not None and fitted.notna().any():  # the frozen features' fitted readout (raycredit.rules.frozen)
        g = df[df["rule"] == "frozen"].groupby(x)["fit_test_acc"].agg(["mean", "std"]).reset_index()
        band(ax, g[x], g["mean"], g["std"], label="frozen, fitted readout", linestyle=":", color="black")
    ax.set(xlabel=xlabel, ylabel="test accuracy (mean ± std over runs)", title=title)
    ax.legend(fontsize=8)
    return ax.figure, ax


def accuracy_vs_depth(df: pd.DataFrame):
    """df: finished runs with rule, d, L, test_acc; a panel per width d, ticks at the depths run."""
    ds = sorted(df["d"].unique()) if "d" in df else [None]
    fig, axes = plt.subplots(1, len(ds), figsize=(5 * len(ds) + 1, 4), squeeze=False)
    for ax, d in zip(axes[0], ds, strict=True):
        part = df if d is None else df[df["d"] == d]
        accuracy_against(part, "L", "depth L", "accuracy vs depth" + ("" if d is None else f", d={d}"), ax=ax)
        ax.set_xticks(sorted(part["L"].unique()))
    fig.tight_layout()
    return fig


def penalty_rescue(df: pd.DataFrame):
    """df: finished runs with rule, penalty_lam, test_acc."""
    fig, ax = accuracy_against(df, "penalty_lam", "penalty λ", "penalty rescue")
    positive = df.loc[df["penalty_lam"] > 0, "penalty_lam"]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0)
    fig.tight_layout()
    return fig


def both_fail_map(counts: pd.DataFrame):
    """counts: both_fail's per-setting table (d, L, seeds, qualifying, valid), summed over any other setting knob;
    one panel per credit_norm value; an invalid setting is grey and says so, not 0/n."""
    ds, Ls = sorted(counts["d"].unique()), sorted(counts["L"].unique())
    panels = sorted(counts["credit_norm"].astype(str).unique()) if "credit_norm" in counts else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (1.2 * len(Ls) + 1.5) + 1.5,
                                                      1.0 * len(ds) + 1.5), squeeze=False, constrained_layout=True)
    for k, (ax, panel) in enumerate(zip(axes[0], panels, strict=True)):
        part = counts if panel is None else counts[counts["credit_norm"].astype(str) == panel]
        grid = part.assign(valid=part["valid"].astype(bool)).groupby(["d", "L"]).agg(
            qualifying=("qualifying", "sum"), seeds=("seeds", "sum"), valid=("valid", "all"))
        frac = [[grid.loc[(d, L), "qualifying"] / grid.loc[(d, L), "seeds"]
                 if (d, L) in grid.index and grid.loc[(d, L), "valid"] else float("nan") for L in Ls] for d in ds]
        # grey: invalid settings (BP does not beat frozen) and settings not run
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        im = ax.imshow(frac, cmap=cmap, vmin=0, vmax=1, origin="lower", aspect="auto")
        for i, d in enumerate(ds):
            for j, L in enumerate(Ls):
                if (d, L) in grid.index:
                    q, n = grid.loc[(d, L), "qualifying"], grid.loc[(d, L), "seeds"]
                    valid = grid.loc[(d, L), "valid"]
                    ax.text(j, i, f"{int(q)}/{int(n)}" if valid else "invalid\n(BP < frozen + margin)",
                            ha="center", va="center", color="white" if valid and q / n < 0.5 else "k",
                            fontsize=None if valid else 8)
        ax.set_xticks(range(len(Ls)), [str(L) for L in Ls])
        ax.set_yticks(range(len(ds)), [str(d) for d in ds])
        title = "FA and DFA both below frozen" + ("" if panel is None else f"\ncredit_norm={panel}")
        ax.set(xlabel="depth L", ylabel="width d" if k == 0 else "", title=title)
    fig.colorbar(im, ax=list(axes[0]), label="fraction of seeds")
    return fig


def histories_of(uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch ||h_L|| and ||g_L|| of each finished run, at the run's own last layer."""
    rows = []
    for _, r in runs.iterrows():
        L = int(r["params.L"])
        series = {col: dict(tracking.metric_history(uri, r["run_id"], f"{name}/l{L}"))
                  for col, name in (("h_norm_L", "h_norm"), ("g_norm_L", "g_norm"))}
        for epoch in sorted(set(series["h_norm_L"]) | set(series["g_norm_L"])):
            rows.append(dict(rule=r["params.rule"], credit_norm=r.get("params.credit_norm"), d=int(r["params.d"]),
                             L=L, epoch=epoch, h_norm_L=series["h_norm_L"].get(epoch),
                             g_norm_L=series["g_norm_L"].get(epoch)))
    return pd.DataFrame(rows, columns=["rule", "credit_norm", "d", "L", "epoch", "h_norm_L", "g_norm_L"]).astype(
        {"h_norm_L": float, "g_norm_L": float})


def figures(uri: str, runs: pd.DataFrame) -> dict:
    """{file name: Figure} of every plot the runs support."""
    trials = finished_trials(runs)
    df = finished_runs(runs, FINAL)
    out = {}
    histories = histories_of(uri, trials) if len(trials) else pd.DataFrame()
    if len(histories):
        out["growth.png"] = growth(histories)
    if len(df) and df["L"].nunique() > 1:
        out["accuracy_vs_depth.png"] = accuracy_vs_depth(df)
    if len(df) and "penalty_lam" in df and df["penalty_lam"].nunique() > 1:
        out["penalty_rescue.png"] = penalty_rescue(df)
    if len(df) and {"fa", "dfa", "frozen"} <= set(df["rule"]):
        _, counts = both_fail(df)
        if len(counts):
            out["both_fail_map.png"] = both_fail_map(counts)
    return out


def run(tracking_uri: str | None, experiment: str, out_dir: str | Path) -> list[Path]:
    uri = tracking.normalize_uri(tracking_uri)
    runs = tracking.load_runs(uri, experiment)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, fig in figures(uri, runs).items():
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(out / name)
        print(f"wrote {out / name}")
    if files:
        tracking.record_summary(uri, tracking.experiment_id(uri, experiment), key=f"plots-{experiment}",
                                name="plots", params={}, metrics={}, tags={"search": experiment},
                                note=f"plots of {experiment} (analysis/plots.py)", files=tuple(files))
    else:
        print(f"no finished runs in {experiment!r}: nothing to plot")
    return files


def main(argv: list[str] | None = None) -> int:
    return cli_main("plots", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
