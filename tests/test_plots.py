"""analysis/plots.py on scratch MLflow stores filled the way trials fill them (runs logged per epoch)."""

import matplotlib.image
import pytest

from analysis import plots
from raycredit import tracking
from raycredit.rules import make_config

from mlflow_checks import new_store

EPOCHS = 3


def log_runs(uri: str, experiment: str, grid: list[dict]) -> None:
    """One finished run per dict, with made-up but plausible per-epoch metrics."""
    exp = tracking.ensure_experiment(uri, experiment)
    for i, knobs in enumerate(grid):
        cfg = make_config({"dataset": "synthetic", "epochs": EPOCHS, **knobs})
        run = tracking.TrialRun(uri, exp, cfg.key(), run_name=f"r{i}", params=cfg.flat(),
                                tags={"rule": cfg.rule.rule, "n_classes": 10})
        L, acc = cfg.model.L, {"bp": 0.6, "fa": 0.3, "dfa": 0.25, "frozen": 0.35}[cfg.rule.rule]
        for e in range(1, EPOCHS + 1):
            # widths and depths differ in their values, so that a plot averaging over them would show it
            run.log_epoch(e, {"epoch": e, "deep_cos": 0.2, "diverged": 0.0,
                              "test_acc": acc + 0.01 * cfg.train.seed - 0.1 * cfg.rule.penalty_lam + cfg.model.d / 1000,
                              f"h_norm/l{L}": 10.0 ** e * cfg.model.d / 16 * L / 2, f"g_norm/l{L}": 10.0 ** -e})
        run.finish()


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.01  # not blank


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    uri = new_store(tmp / "mlflow.db")
    log_runs(uri, "scan", [dict(rule=r, d=d, L=L, seed=s) for r in ("bp", "fa", "dfa", "frozen")
                           for d in (16, 32) for L in (2, 4) for s in (0, 1)])
    log_runs(uri, "rescue", [dict(rule=r, d=16, L=2, penalty_lam=lam, seed=0) for r in ("fa", "dfa")
                             for lam in (0.0, 1e-3, 1e-2)])
    return uri, tmp


def test_every_plot_of_a_scan_with_its_series(store):
    uri, tmp = store
    figs = plots.figures(uri, tracking.load_runs(uri, "scan"))
    assert set(figs) == {"growth.png", "accuracy_vs_depth.png", "both_fail_map.png"}
    growth = figs["growth.png"].axes
    # rows: ‖h_L‖ and ‖g_L‖ of d=16, then of d=32; columns: L=2, L=4
    assert [ax.get_title() for ax in growth] == [f"{q}, d={d}, L={L}" for d in (16, 32) for q in ("‖h_L‖", "‖g_L‖")
                                                 for L in (2, 4)]
    for ax in growth:
        assert len(ax.get_lines()) == 4 and ax.get_yscale() == "log"
        assert {line.get_label() for line in ax.get_lines()} == {"bp", "fa", "dfa", "frozen"}
        assert all(float(t).is_integer() for t in ax.get_xticks())
    for ax, scale in ((growth[0], 1), (growth[1], 2), (growth[4], 2), (growth[5], 4)):  # h at (d, L)
        h = ax.get_lines()[0]
        assert list(h.get_xdata()) == [1, 2, 3] and list(h.get_ydata()) == [10.0 * scale, 100.0 * scale,
                                                                            1000.0 * scale]
    depth = figs["accuracy_vs_depth.png"].axes
    assert [ax.get_title() for ax in depth] == ["accuracy vs depth, d=16", "accuracy vs depth, d=32"]
    for ax, d in zip(depth, (16, 32), strict=True):
        assert len(ax.get_lines()) == 4 and "frozen, trained readout" in [line.get_label() for line in ax.get_lines()]
        assert list(ax.get_xticks()) == [2, 4]
        fa = next(line for line in ax.get_lines() if line.get_label() == "fa")
        assert list(fa.get_xdata()) == [2, 4] and fa.get_ydata()[0] == pytest.approx(0.305 + d / 1000)  # seeds 0, 1
        # the ± std band over seeds 0 and 1 (0.3 and 0.31 + d/1000): ddof=1 std 0.00707
        bands = dict(zip([line.get_label() for line in ax.get_lines()], ax.collections, strict=True))
        low = bands["fa"].get_paths()[0].vertices[:, 1].min()
        assert low == pytest.approx(0.305 + d / 1000 - 0.01 / 2 ** 0.5)
    grid = figs["both_fail_map.png"].axes[0]
    assert len(grid.images) == 1 and sorted(t.get_text() for t in grid.texts) == ["2/2"] * 4  # fa, dfa < frozen
    written = plots.run(uri, "scan", tmp / "scan")
    assert sorted(p.name for p in written) == sorted(figs)
    for path in written:
        assert_png(path)


def test_plots_are_written_and_logged_to_the_summary_run(store, capsys):
    uri, tmp = store
    assert plots.main(["--experiment", "rescue", "--tracking-uri", uri, "--out", str(tmp / "rescue")]) == 0
    files = sorted(p.name for p in (tmp / "rescue").glob("*.png"))
    assert files == ["growth.png", "penalty_rescue.png"]
    for name in files:
        assert_png(tmp / "rescue" / name)
    figs = plots.figures(uri, tracking.load_runs(uri, "rescue"))
    assert [line.get_label() for line in figs["penalty_rescue.png"].axes[0].get_lines()] == ["dfa", "fa"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    summary = [r for r in client.search_runs([tracking.experiment_id(uri, "rescue")])
               if r.data.tags.get(tracking.SUMMARY_TAG) == "1"]
    assert len(summary) == 1 and summary[0].info.run_name == "plots"
    assert sorted(a.path for a in client.list_artifacts(summary[0].info.run_id, "results")) == [
        "results/growth.png", "results/penalty_rescue.png"]
    # a second call replaces the files of the same summary run instead of adding a run
    assert plots.main(["--experiment", "rescue", "--tracking-uri", uri, "--out", str(tmp / "rescue")]) == 0
    assert len([r for r in client.search_runs([tracking.experiment_id(uri, "rescue")])
                if r.data.tags.get(tracking.SUMMARY_TAG) == "1"]) == 1
    # and the summary run does not count as a trial in the next plots
    figs = plots.figures(uri, tracking.load_runs(uri, "rescue"))
    assert len(figs["growth.png"].axes[0].get_lines()) == 2


def test_an_invalid_setting_is_grey_on_the_map_and_says_so():
    import math

    import pandas as pd

    counts = pd.DataFrame([dict(d=64, L=2, credit_norm=True, seeds=2, qualifying=2, valid=True),
                           dict(d=128, L=2, credit_norm=True, seeds=2, qualifying=0, valid=False)])
    ax = plots.both_fail_map(counts).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["2/2", "invalid\n(BP < frozen + margin)"]
    cells = ax.images[0].get_array()
    assert cells[0][0] == 1.0 and math.isnan(float(cells.filled(float("nan"))[1][0]))
