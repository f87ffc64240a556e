"""What every search script shares: its flags, presets, validation and the sweep itself.

A search file declares PRESETS = {"smoke": Preset(...), "paper": Preset(...)};
`run_search` parses the common flags, expands the preset's grid into
configs, validates all of them and the data before anything starts, connects
to Ray, runs the trials, then the search's analysis. Bad input exits 2 with one
line and touches neither MLflow nor the Tune storage.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from raycredit.config import Config
from raycredit.errors import UserError
from raycredit.flags import overrides_from, search_parser
from raycredit.interrupts import INTERRUPTED, sweep_interrupts
from raycredit.knobs import stable_hash
from raycredit.lineage import Branch, check_lineage, lineage_levels, with_branches
from raycredit.rules import make_config
from raycredit.storage import Place, check_restorable, storage_root

# the reference study's design choices, off by default (the published algorithms): replicating presets set them
REFERENCE = {"credit_norm": True, "fa_mode": "reference"}
# the study's CIFAR-10 setting (d=256 L=4) scaled to MNIST-1D (the package's default set) on 2 CPU cores
MNIST1D = dict(dataset="mnist1d", data_seed=42, d=128, L=4, batch_size=100, probe_size=256, rho_dirs=8)


@dataclass(frozen=True)
class Preset:
    """A search's parameter space: the product of `grid`, plus the products of the `also` grids
    (controls and baselines that do not cross every axis), each on top of `fixed`; then the `branches`."""

    grid: dict[str, list]
    fixed: dict = field(default_factory=dict)
    doc: str = ""
    also: tuple[dict[str, list], ...] = ()
    samples: int = 0  # Optuna searches: trials to draw (the grid is then empty)
    branches: tuple[Branch, ...] = ()

    def configs(self, overrides: dict) -> list[dict]:
        """Flat config dicts; overrides replace fixed values and collapse grid axes."""
        out = []
        for space in (self.grid, *self.also):
            grid = {k: ([overrides[k]] if k in overrides else v) for k, v in space.items()}
            base = {**self.fixed, **{k: v for k, v in overrides.items() if k not in grid}}
            out += [{**base, **dict(zip(grid, combo, strict=True))} for combo in itertools.product(*grid.values())]
        return out


def expand(preset: Preset, ov: dict) -> list[Config]:
    seeds = ov.pop("seed", None)
    spaces = [dict(space) for space in (preset.grid, *preset.also)]
    if seeds is not None:
        for space in spaces:
            space["seed"] = seeds
    dicts = Preset(spaces[0], preset.fixed, also=tuple(spaces[1:])).configs(ov)
    # one config per key, in first-seen order (two grids, or a grid and a rule's unused knobs, may coincide)
    return list({cfg.key(): cfg for cfg in with_branches([make_config(d).flat() for d in dicts],
                                                           preset.branches)}.values())


# a function of (tracking uri, experiment, output folder), or its "module:function" name, imported when it runs
Analysis = Callable[[str, str, str], object] | str


def run_search(name: str, doc: str, presets: dict[str, Preset], *, default_preset: str = "paper",
               analysis: Analysis | tuple[Analysis, ...] | None = None, argv: list[str] | None = None,
               space: Callable | None = None) -> int:
    """Entry point of a search script; returns the exit code.

    With `space` (an Optuna define-by-run function of the trial and the base Config) the search is
    an Optuna search of `--num-samples` trials on top of the preset's fixed config; otherwise a grid.
    `analysis` (one or several functions of tracking uri, experiment, output folder) runs after the sweep.
    """
    args = search_parser(name, doc, presets, default_preset, optuna=space is not None).parse_args(argv)
    # MLflow's INFO lines (store creation, migrations) only with -v; the driver's own lines say what happens.
    # The variable reaches an MLflow imported later (it sets its level on import) and the trials' workers.
    if not args.verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        with contextlib.ExitStack() as held:  # the experiment's lock, from _prepare to the end of the analysis
            if space is not None:
                return _run_optuna(name, presets[args.preset], args, analysis, space, held)
            return _run(name, presets[args.preset], args, analysis, held)
    except UserError as e:
        hint = ""
        if "--data-dir" in str(e) and args.preset != "smoke" and "smoke" in presets:
            hint = f" (preset {args.preset!r}; `--preset smoke` needs no data: synthetic, on this machine)"
        print(f"{name}: error: {e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the sweep or after it (the sweep itself: interruptible below)
        print(f"{name}: interrupted; re-run the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        from raycredit import disk

        if not disk.is_full(e):
            raise
        # the driver's own writes (the tracking store, Tune's state) after the pre-flight check passed
        print(f"{name}: error: a disk filled up during the sweep ({disk.full_reason(e)[:300]}); free some "
              "space and re-run the same command to finish it", file=sys.stderr)
        return 1
    finally:
        # not imported, nothing was started; a Ctrl-C may have cut Ray's import short, and a second import fails
        engine = sys.modules.get("raycredit.engine")
        if engine is not None:
            engine.disconnect()


def run_analyses(analysis: Analysis | tuple[Analysis, ...] | None, uri: str, experiment: str, out: str) -> None:
    for fn in analysis if isinstance(analysis, tuple) else (analysis,) if analysis is not None else ():
        module, _, name = fn.partition(":") if isinstance(fn, str) else ("", "", "")
        (getattr(importlib.import_module(module), name) if module else fn)(uri, experiment, out)


def _prepare(name: str, args, configs: list[Config], held: contextlib.ExitStack, sweep_id: str,
             keys: list[str], uri: str, experiment: str):
    """Checks shared by every search beyond `_experiment`'s (which gave `uri` and `experiment`), then take the
    experiment's lock (held until `held` closes), check the store against the sweep's record (`keys`: its run
    keys) and connect: (storage, SweepSettings, the sweep's Tune name)."""
    from raycredit import checks, disk, engine, locks, start, tracking
    from raycredit.data import check_data
    from raycredit.tracking import provenance

    checks.sweep_flags(args, engine.MIN_HANG_AFTER_S)
    disk.check_writable(Path(args.out or Path("reports") / experiment), "--out")
    wants_cuda = checks.devices(configs, args)
    classes = {data_cfg: check_data(data_cfg) for data_cfg in {c.data for c in configs}}
    for c in configs:  # an npz file's labels say how many outputs the model has
        c.check_model_size(classes[c.data])
    start.check_outside_parents(configs, uri, experiment)
    storage = storage_root(args.storage)
    address = engine.resolve_address(args.address)
    # one driver per experiment: a second launch refuses in one line, by a SQLite store's file lock (before Ray
    # starts) and a claim in the store's database, which a driver reaching the file through a server also sees
    # (a file not there yet is served by no server: its claim follows its creation)
    if uri.startswith("sqlite:///"):
        held.enter_context(locks.experiment_lock(locks.lock_path(Path(uri[len("sqlite:///"):]), experiment),
                                                 experiment))
    with locks.store_mutex(uri):  # trials open their runs under it: a file planted in its place stops them here
        pass
    claimed = not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()
    if claimed:
        held.enter_context(tracking.server_lock(uri, experiment, locks.owner(), on_lost=_lock_lost))
    sweep = f"{experiment}-{sweep_id}"
    checks.store(Place.of(storage) / sweep, uri, experiment, keys)
    engine.OUTPUT.update(verbose=args.verbose)
    engine.tune_logging(args.verbose)
    engine.connect(address, verbose=args.verbose)
    engine.HANG_LIMITS.update(timeout_s=args.trial_timeout, silent_s=args.hang_after)
    engine.check_shared_storage(storage)
    gpus = args.gpus_per_trial
    if gpus > 0 and engine.cluster_gpus() == 0:
        if wants_cuda:
            raise UserError(f"device {wants_cuda[0]}: the Ray cluster has no GPUs")
        print(f"notice: the Ray cluster has no GPUs; trials run on CPU (--gpus-per-trial {gpus} ignored)")
        gpus = 0.0
    engine.check_trial_resources(args.cpus_per_trial, gpus)
    experiment_id = tracking.ensure_experiment(uri, experiment)
    tracking.set_view(uri, experiment_id, tracking.searched_knobs(configs))
    if not claimed:
        held.enter_context(tracking.server_lock(uri, experiment, locks.owner(), on_lost=_lock_lost))
    settings = engine.SweepSettings(
        search=name, experiment_id=experiment_id, tracking_uri=uri,
        code_version=provenance.code_version(), cpus_per_trial=args.cpus_per_trial, gpus_per_trial=gpus,
        source_tags=provenance.source_tags(name), sweep=sweep, system_metrics_s=args.system_metrics)
    checks.record_store(Place.of(storage) / sweep, uri, settings.experiment_id)
    return storage, settings, sweep


def _experiment(name: str, args) -> tuple[str, str]:
    """(tracking uri, experiment) of the search's flags, checked: a usable name, a supported store that can be
    written, and an experiment that holds no other search's trials."""
    from raycredit import checks, tracking

    experiment = args.experiment or f"{name}-{args.preset}"
    checks.experiment_name(experiment)
    uri = tracking.normalize_uri(args.tracking_uri)
    tracking.check_tracking_uri(uri)
    checks.store_writable(uri, experiment)
    checks.experiment_owner(uri, experiment, name)
    return uri, experiment


def _lock_lost(message: str) -> None:
    """Another driver took over this one's experiment: stop the sweep as a Ctrl-C would (runs KILLED, exit 130)."""
    print(f"error: {message}; stopping", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGINT)


def _run(name: str, preset: Preset, args, analysis, held: contextlib.ExitStack) -> int:
    from raycredit import checks, tracking
    from raycredit.population import supports_population

    if args.population < 1:
        raise UserError(f"--population {args.population}: must be >= 1")
    configs = expand(preset, overrides_from(args))
    check_lineage(configs)
    uri, experiment = _experiment(name, args)
    if _finished_already(uri, experiment, name, args, configs, analysis):
        return 0
    # the Tune experiment is named after the exact trial set, so re-running the same command resumes it
    sweep_id = stable_hash([c.key() for c in configs] + ([args.population] if args.population > 1 else []))[:8]
    storage, settings, sweep = _prepare(name, args, configs, held, sweep_id, [c.key() for c in configs], uri,
                                        experiment)
    print(f"{name}: {len(configs)} runs, MLflow experiment {experiment!r} at {tracking.redact(uri)}")
    alone = sum(not supports_population(c) for c in configs)
    if args.population > 1 and alone:
        print(f"notice: {alone} configs train one per trial (population mode trains configs without compile "
              "and without exploitability)")
    done = len({c.key() for c in configs} & tracking.finished_keys(uri, settings.experiment_id))
    if done:
        print(f"notice: {done} of these configs already have a finished run in {experiment!r} and are not "
              "retrained; pass a new --experiment to run them again (e.g. after changing the code)")
    with sweep_interrupts(uri, settings.experiment_id, [c.key() for c in configs]), \
            checks.recording_runs(Place.of(storage) / sweep, uri, settings.experiment_id):
        status = run_stages(configs, settings, sweep, storage, args)
        tracking.close_stale_runs(uri, settings.experiment_id, status)
    unfinished = sum(s == "KILLED" for s in status.values())
    if unfinished:
        print(f"{name}: interrupted with {unfinished} runs unfinished; re-run the same command to resume")
        return INTERRUPTED
    failed = sum(s == "FAILED" for s in status.values())
    print(f"{name}: {len(status) - failed} runs finished, {failed} failed; in the MLflow UI: "
          f"{tracking.ui_link(uri, settings.experiment_id)}")
    if not args.no_analysis:
        run_analyses(analysis, uri, experiment, args.out or str(Path("reports") / experiment))
    return 1 if failed else 0


def _finished_already(uri: str, experiment: str, name: str, args, configs: list[Config], analysis) -> bool:
    """Whether every run of the sweep has finished in its experiment already; then nothing starts (no Ray, no
    lock) and only the analysis runs again, over the store (so an analysis that a kill cut short is redone)."""
    from raycredit import tracking

    found = tracking.existing_experiment(uri, experiment)
    if found is None or not {c.key() for c in configs} <= tracking.finished_keys(uri, found[0]):
        return False
    print(f"{name}: all {len(configs)} runs already finished in {experiment!r} at {tracking.redact(uri)}; nothing "
          "to train (pass a new --experiment to train them again); in the MLflow UI: "
          f"{tracking.ui_link(uri, found[0])}", flush=True)
    if not args.no_analysis:
        run_analyses(analysis, uri, experiment, args.out or str(Path("reports") / experiment))
    return True


def run_stages(configs: list[Config], settings, sweep: str, storage: str, args) -> dict[str, str]:
    """Run the sweep's lineage stages in order (`lineage_levels`); a branch whose parent failed is not started
    (FAILED), and an interrupted stage leaves the later ones unstarted (KILLED)."""
    from raycredit import engine

    stages = lineage_levels(configs)
    status: dict[str, str] = {}
    for n, stage in enumerate(stages):
        if "KILLED" in status.values():
            status.update({c.key(): "KILLED" for s in stages[n:] for c in s})
            break
        if len(stages) > 1:
            print(f"lineage stage {n + 1} of {len(stages)}: {len(stage)} {'branches' if n else 'trunks'}", flush=True)
        blocked = [c for c in stage if status.get(c.lineage.parent_run, "FINISHED") != "FINISHED"]
        if blocked:
            print(f"{len(blocked)} branches not started: their parent failed", flush=True)
            status.update({c.key(): "FAILED" for c in blocked})
        todo = [c for c in stage if c not in blocked]
        if todo:
            status.update(engine.run_trials(todo, settings, name=sweep, storage=storage,
                                            max_failures=args.max_failures, population=args.population))
    return status


def _run_optuna(name: str, preset: Preset, args, analysis, space: Callable, held: contextlib.ExitStack) -> int:
    from raycredit import checks, engine, tracking

    ov = overrides_from(args)
    seeds = ov.pop("seed", [preset.fixed.get("seed", 0)])
    if len(seeds) != 1:
        raise UserError("--seeds: an Optuna search tunes for one seed; pass a single seed")
    base = make_config({**preset.fixed, **ov, "seed": seeds[0]})
    samples = args.num_samples if args.num_samples is not None else preset.samples
    if samples < 1:
        raise UserError("--num-samples must be >= 1")
    probe = engine.space_check(space, base)
    # named after the base config and the sample count: the same command resumes the same search
    sweep_id = stable_hash([base.key(), samples])[:8]
    opt = engine.OptunaSettings(space=engine.BoundSpace(space, base.to_dict()), num_samples=samples,
                                seed=base.train.seed)
    if args.export_study:
        return _export_only(name, args, base, space, opt, sweep_id)
    check_restorable(args.storage)
    uri, experiment = _experiment(name, args)
    storage, settings, sweep = _prepare(name, args, [base, probe], held, sweep_id, [], uri, experiment)
    print(f"{name}: Optuna (TPE) + ASHA, {samples} trials on top of {experiment!r} at {tracking.redact(uri)}")
    with sweep_interrupts(uri, settings.experiment_id, None), \
            checks.recording_runs(Place.of(storage) / sweep, uri, settings.experiment_id):
        out = engine.run_optuna(base, opt, settings, name=sweep, storage=storage,
                                max_failures=args.max_failures)
        tracking.close_stale_runs(uri, settings.experiment_id, out.status, out.early)
    if not out.complete:
        print(f"{name}: interrupted; re-run the same command to resume")
        return INTERRUPTED
    report = Path(args.out or Path("reports") / experiment)
    study = _export(name, uri, settings.experiment_id, sweep, space, base, opt, report)
    if study.best is not None:
        tracking.record_summary(uri, settings.experiment_id, key=f"best-{sweep_id}", name=f"{name}-best",
                                params=study.best_params, metrics={f"best_{opt.metric}": study.best.value},
                                tags={"search": name, "best_run_id": study.best.user_attrs["run_id"],
                                      "best_run_key": study.best.user_attrs["run_key"]})
    if not args.no_analysis:
        run_analyses(analysis, uri, experiment, str(report))
    return 1 if study.n_failed else 0


def _export_only(name: str, args, base: Config, space: Callable, opt, sweep_id: str) -> int:
    """--export-study: the search's trials so far as an Optuna study; reads the store, starts nothing."""
    from raycredit import disk, tracking

    uri, experiment = _experiment(name, args)
    disk.check_writable(Path(args.out or Path("reports") / experiment), "--out")
    found = tracking.existing_experiment(uri, experiment)
    sweep = f"{experiment}-{sweep_id}"
    if found is None or not tracking.sweep_runs(uri, found[0], sweep):
        raise UserError(f"--export-study: no trials of this search ({opt.num_samples} samples on this preset and "
                        f"flags) in experiment {experiment!r} at {tracking.redact(uri)}; run it first")
    _export(name, uri, found[0], sweep, space, base, opt, Path(args.out or Path("reports") / experiment))
    return 0


def _export(name: str, uri: str, experiment_id: str, sweep: str, space: Callable, base: Config, opt,
            report: Path):
    """Export the search's study (`raycredit.study`) under report/optuna and print what it holds."""
    from raycredit import tracking
    from raycredit.study import export_study, summary_lines

    study = export_study(uri, experiment_id, sweep, space, base, opt.metric, opt.mode, report / "optuna")
    link = tracking.ui_link(uri, experiment_id, study.best.user_attrs["run_id"]) if study.best else ""
    for line in summary_lines(study, opt.metric, link):
        print(f"{name}: {line}")
    return study
