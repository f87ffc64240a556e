"""The sweep driver: runs (or resumes) a grid or an Optuna search of Tune trials, watches for hung trials,
and reports each config's outcome.

Re-running a grid sweep starts a new Tune run, in the same folder, over the configs without a FINISHED run:
they resume from their checkpoint files. Tune's saved state is not read (a disk that filled mid-sweep leaves
it truncated, and it is a pickle anyone who can write --storage could plant); an Optuna search needs its
searcher back and resumes with `Tuner.restore` (`check_trusted` first).

Tune's own checkpoints are not used: with `num_to_keep` Tune deletes old checkpoints that its last
experiment snapshot may still name, and a driver killed in that window leaves trials that can never be
restored (seen in testing); keeping them all would cost one checkpoint per epoch per trial.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from raycredit.config import Config
from raycredit.engine.bookkeeper import FAILED_MEMBERS, TRIAL_DONE
from raycredit.engine.hang import HANG_LIMITS, HangWatch
from raycredit.engine.heartbeats import heartbeat_actor
from raycredit.engine.trainable import (
    SEARCHED,
    SweepSettings,
    item_members,
    run_label,
    trainable,
    trial_dirname,
    trial_item,
    trial_name,
)
from raycredit.errors import UserError
from raycredit.rules import validate
from raycredit.storage import Place, display, join


def progress_reporter():
    """Ray's progress table: each trial's name (its label), how many runs it trains, and its metrics."""
    metrics = {"epoch": "epoch", "train_loss": "train_loss", "test_acc": "test_acc", "deep_cos": "deep_cos",
               "diverged": "diverged"}
    return tune.CLIReporter(parameter_columns={"cfg/runs": "runs"}, metric_columns=metrics,
                            max_report_frequency=10)


def check_trusted(path: str) -> None:
    """UserError unless every file and folder of the Tune experiment at `path` belongs to this user and is not
    world-writable: resuming unpickles Tune's state files (tuner.pkl, the searcher, the trials' state), so a
    file that someone else wrote or could rewrite in a shared --storage would run their code as this user.
    (Group-writable files are accepted: the storage's group is trusted.)"""
    uid = os.getuid()
    for p in [Path(path), *Path(path).rglob("*")]:
        st = p.lstat()
        if st.st_uid != uid or st.st_mode & 0o002:
            why = "belongs to another user" if st.st_uid != uid else "is writable by every user"
            raise UserError(f"{p} {why}: resuming would unpickle Tune's state from that folder, which could run "
                            f"code written by someone else; check it, then `chown -R` / `chmod -R o-w` it, or "
                            f"use a new --storage")


# What this driver prints while trials run: Tune's trial tables (verbose, `-v`), or one progress line every
# PROGRESS_S seconds (`Progress`). Set by the search's command line.
OUTPUT = {"verbose": False}
PROGRESS_S = 10.0


class Progress(tune.Callback):
    """In place of Tune's tables: a line at most every PROGRESS_S seconds with the trials done, running and
    failed (the driver's own line follows the last trial)."""

    def __init__(self):
        self.start: float | None = None
        self.last = 0.0

    def report(self, trials) -> None:
        now = time.monotonic()
        if self.start is None:  # the first line after PROGRESS_S
            self.start = self.last = now
        if now - self.last < PROGRESS_S:
            return
        self.last = now
        count = Counter(t.status for t in trials)
        print(f"  {count['TERMINATED']}/{len(trials)} trials done, {count['RUNNING']} running, {count['ERROR']} "
              f"failed ({now - self.start:.0f} s)", flush=True)

    def on_step_end(self, iteration, trials, **info):
        self.report(trials)


class NotForRaycredit(logging.Filter):
    """Drops Tune's log lines that are wrong for raycredit's sweeps: after an interruption, the advice to resume
    with `Tuner.restore(...)` (the same command resumes, `Tuner.restore` included where it applies) and one
    FileNotFoundError per trial the interruption left unstarted ("Failed to fetch metrics": those runs are
    KILLED and train when the command is re-run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Tuner.restore(" not in message and "Failed to fetch metrics" not in message


def tune_logging(verbose: bool) -> None:
    """This driver's Tune output: `NotForRaycredit` always; not verbose, warnings (such as "Stop signal
    received") left out too, raycredit's own lines saying what happened."""
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        log = logging.getLogger(name)
        if not any(isinstance(f, NotForRaycredit) for f in log.filters):
            log.addFilter(NotForRaycredit())
    logging.getLogger("ray.tune").setLevel(logging.NOTSET if verbose else logging.ERROR)


def keep_credentials_out_of_runtime_env() -> None:
    """Tune copies the driver's AWS keys into every trial actor's runtime_env (ray/tune/execution/class_cache.py,
    ENV_VARS_TO_PROPAGATE), and Ray's runtime_env agent writes each runtime_env it sets up, values included, to
    the world-readable session log runtime_env_agent.log (ray 2.60; seen in testing). Trials of a local instance
    inherit them from the driver's environment anyway, and a cluster's trials use what its nodes have."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE -= {k for k in class_cache.ENV_VARS_TO_PROPAGATE if k.startswith("AWS_")}


def _fit(settings: SweepSettings, *, name: str, storage: str, max_failures: int, kind: str,
         fresh: Callable[[], dict], base: dict | None = None, restore: bool = True):
    """Resume the Tune experiment storage/name (when `restore`), or start it with the Tuner arguments fresh()
    returns (progress_reporter among them goes to the RunConfig); returns (ResultGrid, the trials' settings)."""
    path = join(storage, name)
    beats = f"raycredit-heartbeats-{name}" if HANG_LIMITS["silent_s"] > 0 else ""
    actor = heartbeat_actor(beats) if beats else None  # held to the end of the sweep: unheld, Ray would end it
    settings = replace(settings, checkpoint_root=join(path, "checkpoints"), heartbeat=beats)
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    fn = tune.with_resources(tune.with_parameters(trainable, settings=asdict(settings), base=base), resources)
    keep_credentials_out_of_runtime_env()
    verbose = OUTPUT["verbose"]
    if restore and tune.Tuner.can_restore(path):
        check_trusted(path)
        print(f"resuming {kind} from {display(path)}")
        tuner = tune.Tuner.restore(path, fn, resume_errored=True)
    else:
        if Place.of(settings.checkpoint_root).children():
            print(f"resuming {kind} in {display(path)}: unfinished trials continue from their checkpoints")
        kw = fresh()
        reporter = kw.pop("progress_reporter", None)
        tuner = tune.Tuner(fn, run_config=tune.RunConfig(
            name=name, storage_path=storage, failure_config=tune.FailureConfig(max_failures=max_failures),
            progress_reporter=reporter if verbose else None,
            callbacks=[HangWatch(beats)] + ([] if verbose else [Progress()]), verbose=1 if verbose else 0), **kw)
    try:
        return tuner.fit(), settings
    finally:
        if actor is not None:
            ray.kill(actor)


def run_trials(configs: list[Config], settings: SweepSettings, *, name: str, storage: str,
               max_failures: int, population: int = 1) -> dict[str, str]:
    """Run (or resume) the sweep; returns {run key: 'FINISHED' | 'FAILED' | 'KILLED' (interrupted, resumable)}.

    With population > 1, configs that differ only in the population keys train as populations of up to
    that many members, one trial each (raycredit.population.group_members).
    """
    from raycredit.population import group_members
    from raycredit.tracking import finished_keys

    done = finished_keys(settings.tracking_uri, settings.experiment_id)
    groups = group_members(configs, population)
    if len(groups) < len(configs):
        print(f"{len(configs)} runs in {len(groups)} trials (populations of up to {population})", flush=True)
    groups = [g for g in groups if not all(c.key() in done for c in g)]
    status = {c.key(): "FINISHED" for c in configs if c.key() in done}
    if not groups:
        return status
    items = [trial_item(g) for g in groups]

    def fresh() -> dict:
        return dict(param_space={"cfg": tune.grid_search(items)},
                    tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
                                                reuse_actors=True),
                    progress_reporter=progress_reporter())

    grid, _ = _fit(settings, name=name, storage=storage, max_failures=max_failures, kind="sweep", fresh=fresh,
                   restore=False)
    status.update({c.key(): "KILLED" for g in groups for c in g})  # trials an interruption left unstarted
    for r in grid:
        if not r.config:
            continue
        members, last = item_members(r.config["cfg"]), r.metrics or {}
        if last.get("failure"):
            print(f"trial {r.path.rsplit('/', 1)[-1]} ({', '.join(run_label(c) for c in members[:3])}"
                  f"{', ...' if len(members) > 3 else ''}) failed: {last['failure']}", flush=True)
            outcome = "FAILED"
        elif r.error:
            outcome = "FAILED"
        else:
            outcome = "FINISHED" if last.get(TRIAL_DONE) else "KILLED"
        status.update({c.key(): outcome for c in members})
        status.update({k: "FAILED" for k in (last.get(FAILED_MEMBERS) or "").split(",") if k in status})
    return status


@dataclass(frozen=True)
class OptunaSettings:
    """A model-based search: Optuna's TPE proposes, ASHA stops the laggards early."""

    space: object  # define-by-run function(optuna.Trial) -> dict of constants or None
    num_samples: int
    metric: str = "test_acc"
    mode: str = "max"
    grace_period: int = 2  # epochs every trial runs before ASHA may stop it
    max_concurrent: int = 4
    seed: int = 0


@dataclass(frozen=True)
class BoundSpace:
    """space(trial, base) as the define-by-run function(trial) OptunaSearch wants. Tune pickles the
    searcher into its experiment checkpoint, so this is a module-level class around a module-level
    function, never a closure."""

    space: Callable
    base: dict

    def __call__(self, trial):
        constants = self.space(trial, Config.from_dict(self.base)) or {}
        return {**constants, SEARCHED: list(trial.params)}  # the run's name and tags show the drawn knobs


def space_check(space: Callable, base: Config) -> Config:
    """Draw once from the space with a throwaway Optuna study and validate the result (bad spaces fail early)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    constants = space(trial, base) or {}
    drawn = base.replace(**trial.params, **constants)
    validate(drawn)
    return drawn


class FinalValueSearch(OptunaSearch):
    """Tune's OptunaSearch, telling Optuna each trial's final value only. OptunaSearch also reports every
    result to its Optuna trial, with Tune's training_iteration as the step, for Optuna's pruners; this search
    has none (ASHA stops trials, counting epochs), TPE ranks trials by the value they are told at the end,
    and a trial ASHA stops is told its last result. Tune's iteration count restarts at 1 when a restored
    search resumes a trial from raycredit's checkpoint file (Tune holds no checkpoint of it), and Optuna
    then warns, on every resume, that the step was already reported."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass


@dataclass
class SearchOutcome:
    status: dict[str, str]  # run key -> FINISHED / FAILED / KILLED
    early: set[str]  # run keys of trials the scheduler stopped before their last epoch
    complete: bool  # every trial of num_samples has ended


def run_optuna(base: Config, opt: OptunaSettings, settings: SweepSettings, *, name: str, storage: str,
               max_failures: int) -> SearchOutcome:
    """Run (or resume) an Optuna search over knobs on top of `base`.

    Optuna keeps its study in memory and Tune checkpoints the searcher with the experiment:
    Optuna's RDB storage breaks Tuner.restore. Trials that ASHA stopped early count
    as finished. The best trial is read from the exported study (`raycredit.study`).
    """
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    def fresh() -> dict:
        searcher = FinalValueSearch(opt.space, metric=opt.metric, mode=opt.mode,
                                    sampler=optuna.samplers.TPESampler(seed=opt.seed))
        scheduler = ASHAScheduler(metric=opt.metric, mode=opt.mode, time_attr="epoch", max_t=base.train.epochs,
                                  grace_period=min(opt.grace_period, base.train.epochs))
        return dict(tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=opt.max_concurrent), scheduler=scheduler,
            num_samples=opt.num_samples, trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
            reuse_actors=True))

    grid, settings = _fit(settings, name=name, storage=storage, max_failures=max_failures, kind="search",
                          fresh=fresh, base=base.to_dict())
    out = SearchOutcome({}, set(), grid.num_terminated + grid.num_errors == opt.num_samples)
    for r in grid:
        last = r.metrics or {}
        if "run_key" not in last:
            continue
        full = bool(last.get(TRIAL_DONE))
        out.status[last["run_key"]] = "FAILED" if r.error else "FINISHED" if full or out.complete else "KILLED"
        if out.complete and not full and not r.error:
            out.early.add(last["run_key"])
            (Place.of(settings.checkpoint_root) / last["run_key"]).remove()
    return out
