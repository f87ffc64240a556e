"""An Optuna search's trials as an Optuna study on disk, which optuna-dashboard and notebooks open.

The search keeps its own study inside Tune's searcher state (an in-memory study pickled with the experiment:
Optuna's RDB storage breaks Tuner.restore), and `export_study` never reads or writes that state. It
rebuilds the study from the sweep's MLflow runs, so it can run after the search or at any time on demand:

- each trial's drawn knobs, replayed through the search's space to recover their distributions (knobs a trial
  did not draw, e.g. the auxiliary's learning rate of a trial without a trainable auxiliary, are absent);
- its value: the last value of the metric its run logged, which is what TPE was told. A trial ASHA stopped
  early reached TPE as COMPLETE with its last value, so it is COMPLETE here too, with the user attribute
  stopped_early=True. A FAILED run, or one without a finite value, is FAIL (TPE itself was told COMPLETE by
  Tune's OptunaSearch.on_trial_complete for a trial that failed after reporting a value);
- the metric per epoch as intermediate values (the dashboard's ASHA cuts), and the run's id, name, key and
  epochs as user attributes.

Runs of trials that have not ended (an interrupted search) are left out and counted.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from raycredit.config import Config, param_value
from raycredit.rules import applied

STUDY_FILE = "study.db"
SPARSE_REGIME = "Some regimes for parameter"  # PED-ANOVA's warning (optuna 5, importance/_ped_anova/evaluator.py)
PLOTS = ("param_importances.csv", "param_importances.png", "history.png", "parallel_coordinate.png")


@dataclass
class StudyExport:
    storage: str  # the study's Optuna storage URL (SQLite)
    study_name: str
    folder: Path  # study.db, trials.csv, param_importances.csv and the plots
    n_trials: int
    n_failed: int
    n_stopped: int  # trials ASHA stopped early (COMPLETE with their last value)
    n_unfinished: int  # runs of trials that have not ended, left out
    best: object | None  # optuna FrozenTrial
    best_params: dict = field(default_factory=dict)  # the best trial's MLflow params that apply to its rule
    values: list[float] = field(default_factory=list)  # every COMPLETE trial's value
    n_test: int = 0  # test examples the best run is evaluated on (0: unknown)
    n_classes: int = 0


def export_study(uri: str, experiment_id: str, sweep: str, space, base: Config, metric: str, mode: str,
                 folder: str | Path) -> StudyExport:
    """Write the sweep's trials as the Optuna study `sweep` to folder/study.db (replaced atomically), with
    trials.csv, parameter importances and Optuna's history, parallel-coordinate and importance plots.
    space: the search's define-by-run function(trial, base)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from raycredit import tracking

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trials, unfinished, runs = [], 0, {}
    for run in tracking.sweep_runs(uri, experiment_id, sweep):
        if run.info.status not in ("FINISHED", "FAILED"):
            unfinished += 1
            continue
        params = {k: param_value(k, v) for k, v in run.data.params.items()}
        fixed = optuna.trial.FixedTrial(params)
        space(fixed, base)
        value = run.data.metrics.get(metric)
        ok = run.info.status == "FINISHED" and value is not None and math.isfinite(value)
        history = {step: v for step, v in tracking.metric_history(uri, run.info.run_id, metric) if math.isfinite(v)}
        trials.append(create_trial(
            state=TrialState.COMPLETE if ok else TrialState.FAIL, value=value if ok else None,
            params=fixed.params, distributions=fixed.distributions, intermediate_values=history,
            user_attrs={"run_id": run.info.run_id, "run_name": run.info.run_name,
                        "run_key": run.data.tags.get(tracking.RUN_KEY_TAG, ""),
                        "stopped_early": run.data.tags.get(tracking.STOPPED_EARLY_TAG) == "1",
                        "epochs": int(run.data.metrics.get("epoch", 0))}))
        trials[-1].datetime_start = datetime.fromtimestamp(run.info.start_time / 1000)
        if run.info.end_time:
            trials[-1].datetime_complete = datetime.fromtimestamp(run.info.end_time / 1000)
        runs[run.info.run_id] = run
    # a name of its own: two exports at once each build their own file, and the last one replaces the other's
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{STUDY_FILE}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp.resolve()}")
    try:
        study = optuna.create_study(storage=storage, study_name=sweep,
                                    direction="maximize" if mode == "max" else "minimize")
        study.set_user_attr("metric", metric)
        study.set_user_attr("mlflow_experiment_id", experiment_id)
        study.set_user_attr("mlflow_tracking_uri", tracking.redact(uri))
        study.add_trials(trials)
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "datetime_start",
                                      "datetime_complete", "duration")).to_csv(folder / "trials.csv", index=False)
        _importances_and_plots(study, done, folder)
        best = study.best_trial if done else None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        storage.engine.dispose()
    os.replace(tmp, folder / STUDY_FILE)
    out = StudyExport(f"sqlite:///{(folder / STUDY_FILE).resolve()}", sweep, folder, len(trials),
                      n_failed=len(trials) - len(done), n_stopped=sum(t.user_attrs["stopped_early"] for t in done),
                      n_unfinished=unfinished, best=best,
                      values=[t.value for t in done])
    if out.best is not None:
        best_run = runs[out.best.user_attrs["run_id"]]
        out.best_params = applied(dict(best_run.data.params))
        out.n_classes = int(best_run.data.tags.get("n_classes", 0))
        out.n_test = _test_examples(best_run)
    return out


def _importances_and_plots(study, complete: list, folder: Path) -> None:
    """param_importances.csv/.png, history.png and parallel_coordinate.png beside the study, when there are
    two COMPLETE trials or more (fewer: nothing to compare; stale files of an earlier export are removed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import pandas as pd
    from optuna.visualization import matplotlib as vis

    for name in PLOTS:
        (folder / name).unlink(missing_ok=True)
    if len(complete) < 2 or not any(t.params for t in complete):
        return
    # PED-ANOVA is Optuna's own (numpy); the default fANOVA needs scikit-learn, which raycredit does not install
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", SPARSE_REGIME, UserWarning)
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    sparse = set()
    for w in caught:
        if m := re.match(SPARSE_REGIME + r" `(\w+)`", str(w.message)):
            sparse.add(m[1])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if sparse:  # a conditional knob (e.g. aux_lr) drawn in one trial or none under some of its conditions
        print(f"notice: {', '.join(sorted(sparse))}: fewer than 2 of the {len(complete)} trials under some of their "
              "conditions, so their importances in param_importances.csv are rough; more trials refine them")
    pd.DataFrame({"param": list(importances), "importance": list(importances.values()),
                  "evaluator": "PED-ANOVA"}).to_csv(folder / "param_importances.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", SPARSE_REGIME, UserWarning)  # said once above; the plot recomputes
        width = max(8, 2 * len(importances))  # Optuna's default size overlaps the axes' labels
        for name, draw in (("param_importances.png", lambda: vis.plot_param_importances(study, evaluator=evaluator)),
                           ("history.png", lambda: vis.plot_optimization_history(study)),
                           ("parallel_coordinate.png", lambda: vis.plot_parallel_coordinate(study))):
            ax = draw()
            ax.figure.set_size_inches(width if name == "parallel_coordinate.png" else 8, 5)
            ax.figure.savefig(folder / name, dpi=120, bbox_inches="tight")
            plt.close(ax.figure)


def _test_examples(run) -> int:
    """The number of test examples of a run, from its dataset input's profile (0 when it has none)."""
    import json

    for item in (run.inputs.dataset_inputs if run.inputs is not None else []):
        shape = json.loads(item.dataset.profile or "{}").get("test")
        if shape:
            return int(shape[0])
    return 0


def files(out: StudyExport) -> list[str]:
    """The names of the export's files, study first."""
    return [STUDY_FILE] + [n for n in ("trials.csv", *PLOTS) if (out.folder / n).exists()]


def noise_notes(out: StudyExport, metric: str) -> list[str]:
    """What separates the best accuracy from chance and from the other trials, in binomial standard errors of an
    accuracy on out.n_test examples: a best within 2 standard errors of chance (1 / n_classes) is noise level,
    and trials within one standard error of the best tie with it."""
    if out.best is None or not metric.endswith("_acc") or not out.n_test or not out.n_classes:
        return []
    best, n = out.best.value, out.n_test
    chance = 1 / out.n_classes
    se_chance = math.sqrt(chance * (1 - chance) / n)
    se_best = math.sqrt(max(best * (1 - best), 0.0) / n)
    notes = []
    if best - chance < 2 * se_chance:
        notes.append(f"the best {metric} {best:.4f} is within 2 standard errors (2 x {se_chance:.4f} on {n} test "
                     f"examples) of chance ({chance:.4f}): no trial is distinguishable from guessing, the ranking "
                     "is noise")
    ties = sum(abs(v - best) <= se_best for v in out.values) - 1
    if ties > 0:
        notes.append(f"{ties} other trial{'s' if ties > 1 else ''} within one standard error ({se_best:.4f}) of the "
                     "best: they tie with it")
    return notes


def summary_lines(out: StudyExport, metric: str, best_link: str) -> list[str]:
    """What an exported study holds, in lines: its trials, where it is and how to open it, the best trial's run
    (`best_link`: its address) and drawn knobs, and whether the best stands out from chance and from the
    other trials (`noise_notes`)."""
    unfinished = f"; {out.n_unfinished} unfinished trials left out" if out.n_unfinished else ""
    lines = [f"{out.n_trials} trials, {out.n_stopped} stopped early by ASHA (their value: the last epoch they ran), "
             f"{out.n_failed} failed{unfinished}",
             f"Optuna study {out.study_name!r} in {out.folder}: {', '.join(files(out))}; open it with "
             f"optuna.load_study(study_name={out.study_name!r}, storage={out.storage!r}) or optuna-dashboard"]
    if out.best is not None:
        best = out.best
        drawn = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        early = " (stopped early)" if best.user_attrs["stopped_early"] else ""
        lines.append(f"best {metric} {best.value:.4f}{early} from {drawn or 'no drawn knob'}, every other knob at "
                     f"the preset's value; run {best.user_attrs['run_name']} ({best.user_attrs['run_id']}): "
                     f"{best_link}")
        lines += [f"note: {note}" for note in noise_notes(out, metric)]
    return lines
