"""The Tune trainable: one trial trains one config, or several as a population, each with its own MLflow run.

Around `raycredit.population.train_members` (one config: exactly `train(cfg)`), it logs
every epoch to each member's run (`raycredit.tracking`), reports to Tune, and every `checkpoint_every`
epochs replaces the trial's checkpoint file `<storage>/<sweep>/checkpoints/<trial key>/checkpoint.pt`
atomically. A restored, retried or moved trial resumes from that file. A trial of one config keeps that
config's checkpoint there; a population's file holds every unfinished member's, and a member that finishes
gets its own file beside it, logged to its run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray import tune

from raycredit.config import Config
from raycredit.disk import DiskFull, is_full
from raycredit.engine.hang import heartbeat
from raycredit.errors import UserError
from raycredit.rules import RULES
from raycredit.rules.base import LocalRule
from raycredit.tracking import full_store_error

CHECKPOINT_FILE = "checkpoint.pt"
FAILURE_TAG = "raycredit.failure"  # why the latest attempt failed, when it failed cleanly (a full disk)
SET_ASIDE_TAG = "raycredit.checkpoint_set_aside"  # where an unreadable trial checkpoint was moved
# reported with every result: 1 once every run of the trial is finished (Tune's own "done" is also 1 for a
# trial a scheduler stopped early)
TRIAL_DONE = "runs_done"
FAILED_MEMBERS = "failed_members"  # reported: run keys of a population's members that failed alone


def trainable(config: dict, settings: dict, base: dict | None = None) -> None:
    """One trial. A grid passes its members as config["cfg"] (`trial_item`); a searcher passes the knobs it
    drew, applied on top of `base`, and the run key then includes the trial id (two draws may coincide)."""
    import torch

    from raycredit.checkpoint import checkpoint_due
    from raycredit.lineage import kept_epochs
    from raycredit.population import member_data, train_members
    from raycredit.tracking import POPULATION_TAG, SEARCHED_TAG

    s = SweepSettings(**settings)
    torch.set_num_threads(max(1, int(s.cpus_per_trial)))
    cfgs, keys, names, trial_key = trial_members(config, base)
    E = cfgs[0].train.epochs
    data = member_data(cfgs)
    tags = {POPULATION_TAG: trial_key} if len(cfgs) > 1 else {}
    if SEARCHED in config:
        tags[SEARCHED_TAG] = ",".join(config[SEARCHED])
    try:
        runs = [open_run(s, c, k, n, d, {**tags, **lineage_tags(s, c)})
                for c, k, n, d in zip(cfgs, keys, names, data, strict=True)]
    except Exception as e:
        if not is_full(e):
            raise
        tune.report({"failure": str(full_store_error(s.tracking_uri, e)), "run_key": trial_key})
        return
    folder = Path(s.checkpoint_root) / trial_key
    path = folder / CHECKPOINT_FILE
    todo = [i for i, r in enumerate(runs) if not r.finished]
    kept = [set(kept_epochs(c)) - {E} for c in cfgs]

    def close(i: int, metrics: dict, ckpt: dict | None) -> None:
        """Everything a finished run owes MLflow: its last finite checkpoint, the divergence tag, FINISHED.
        Done before the trial's last report: a scheduler may stop the trial inside that report (SystemExit)."""
        from raycredit.checkpoint import save_checkpoint

        if ckpt is not None:
            member_path = folder / keys[i] / CHECKPOINT_FILE
            member_path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(ckpt, member_path)
            runs[i].log_checkpoint(member_path)
        runs[i].set_tags({"diverged": int(metrics.get("diverged", 0))})
        runs[i].finish("FINISHED")

    alone: list[str] = []  # keys of members that failed on their own (a bad parent checkpoint)

    def report(epoch: int, results: list[dict]) -> None:
        done = all(runs[i].finished for i in todo)
        if done:
            shutil.rmtree(folder, ignore_errors=True)
        tune.report(trial_summary(trial_key, epoch, results, done, tuple(alone)))

    def on_epoch(epoch: int, results: list[dict | None], checkpoint_fn) -> None:
        members = [(todo[j], m) for j, m in enumerate(results) if m is not None]
        for i, m in members:
            runs[i].log_epoch(epoch, m)
        diverged = [(i, m) for i, m in members if m["diverged"]]
        if diverged:
            old = read_checkpoint(path, keys[0], [])  # their last finite state
            for i, m in diverged:
                close(i, m, old.get(keys[i]))
        new = {}
        keep = [i for i, m in members if epoch in kept[i] and not m["diverged"]]
        if checkpoint_fn is not None and (checkpoint_due(cfgs[0], epoch) or keep):
            new = {keys[todo[j]]: c for j, c in enumerate(checkpoint_fn()) if c is not None}
            for i in keep:
                keep_checkpoint(folder / keys[i], epoch, new[keys[i]], runs[i])
            if checkpoint_due(cfgs[0], epoch):
                write_checkpoint(path, new, population=len(cfgs) > 1)
        if epoch == E:
            for i, m in members:
                if not m["diverged"]:
                    close(i, m, new[keys[i]])
        report(epoch, [m for _, m in members])

    # from here on, the hang watch can tell a frozen process from a busy one
    beating = heartbeat(s.heartbeat, tune.get_context().get_trial_id())
    try:
        if not todo:  # finished before the driver died, though Tune's state may not know it yet
            tune.report(trial_summary(trial_key, E, [r.final_metrics() for r in runs], True))
            return
        own_folder(folder)
        saved = read_checkpoint(path, keys[0], [runs[i] for i in todo])
        entries = [saved.get(keys[i]) for i in todo] if saved else None
        if entries is not None and None in entries:
            if not cfgs[0].lineage.parent_run:
                raise RuntimeError(f"{path} lacks unfinished members of its trial; delete it to restart them")
            # branches that failed alone at the start (a bad parent checkpoint): their siblings train on, and
            # re-running the sweep retries them in a trial of their own
            for i in [i for i, e in zip(todo, entries, strict=True) if e is None]:
                runs[i].set_tags({FAILURE_TAG: "its parent checkpoint was unusable when its trial started"})
                runs[i].finish("FAILED")
                alone.append(keys[i])
            todo, entries = [i for i in todo if keys[i] in saved], [e for e in entries if e is not None]
        if entries is None and cfgs[0].lineage.parent_run:  # a branch's first attempt (members share the epoch)
            starts = {}
            for i in todo:
                try:
                    starts[i] = branch_entry(s, cfgs[i], runs[i], data[i], folder)
                except UserError as e:  # its parent's checkpoint is bad: this member fails alone, its siblings train
                    print(f"error: {names[i]}: {e}", flush=True)
                    runs[i].set_tags({FAILURE_TAG: str(e)})
                    runs[i].finish("FAILED")
                    alone.append(keys[i])
            if not starts:
                tune.report({"failure": "every member's parent checkpoint is unusable", "run_key": trial_key,
                             FAILED_MEMBERS: ",".join(alone)})
                return
            todo = list(starts)
            entries = list(starts.values())
        device = trial_device()
        for i in todo:
            start_attempt(runs[i], entries[0]["epoch"] if entries else 0, device)
        if s.system_metrics_s > 0:  # the members share this process and machine: their first run records it
            runs[todo[0]].monitor_system(s.system_metrics_s)
        if cfgs[0].exploit.exploitability:
            from raycredit.snapshot import exploitability

            [i], [start] = todo, entries
            metrics = {**exploitability(start, data[i], device), "epoch": start["epoch"]}
            runs[i].log_epoch(start["epoch"], metrics)
            runs[i].finish("FINISHED")
            report(start["epoch"], [metrics])
            return
        if entries and entries[0]["epoch"] == E:
            # killed after saving the last epoch (whose metrics were logged first): nothing left to train
            for i, e in zip(todo, entries, strict=True):
                close(i, e["history"][-1], e)
            report(E, [e["history"][-1] for e in entries])
            return
        train_members([cfgs[i].replace(device=device) for i in todo], checkpoints=entries, on_epoch=on_epoch,
                      data=[data[i] for i in todo])
    except SystemExit:
        # Tune stopped the trial (a scheduler's early stop, or the sweep shutting down): the driver knows
        # which, and sets the runs' status when the sweep ends (tracking.close_stale_runs); the process may go
        # on to another trial, so nothing samples this one's machine into its run any more
        for r in runs:
            r.stop_monitor()
        raise
    except DiskFull as e:
        fail_cleanly([runs[i] for i in todo], trial_key, e)
    except BaseException as e:
        if isinstance(e, Exception) and is_full(e):  # the tracking store's disk, under one of MLflow's writes
            fail_cleanly([runs[i] for i in todo], trial_key, full_store_error(s.tracking_uri, e))
            return
        for r in runs:
            if not r.finished:
                r.finish("FAILED")
        raise
    finally:
        if beating is not None:
            beating.set()


@dataclass(frozen=True)
class SweepSettings:
    """What every trial of one sweep shares."""

    search: str
    experiment_id: str
    tracking_uri: str
    code_version: str
    cpus_per_trial: float
    gpus_per_trial: float
    checkpoint_root: str = ""  # set by run_trials / run_optuna: <storage>/<sweep>/checkpoints
    source_tags: dict = field(default_factory=dict)  # MLflow's mlflow.source.* / mlflow.user tags of the driver
    sweep: str = ""  # the sweep's Tune experiment name, tagged on every run (raycredit.sweep)
    system_metrics_s: float = 0.0  # seconds between samples of a trial's machine into its run's system/* metrics
    heartbeat: str = ""  # the sweep's heartbeat actor (`engine.hang.Heartbeats`), by name; "" for none


def run_label(cfg: Config) -> str:
    """Readable name of a trial and its MLflow run; `-norm` marks a local rule trained with credit_norm."""
    norm = "-norm" if cfg.rule.credit_norm and issubclass(RULES[cfg.rule.rule], LocalRule) else ""
    branch = f"-from{cfg.lineage.parent_epoch}" if cfg.lineage.parent_run else ""
    what = "-exploit" if cfg.exploit.exploitability else "-frozen-model" if cfg.train.freeze_model else ""
    return f"{cfg.rule.rule}{norm}{what}-d{cfg.model.d}-L{cfg.model.L}-seed{cfg.train.seed}{branch}"


def trial_item(members: list[Config]) -> dict:
    """A grid trial's Tune config: its members, a label for the trial's name and how many runs it trains (the
    progress table's one parameter column)."""
    label = run_label(members[0])
    if len(members) > 1:  # members differ in seed and the other population keys
        label = f"{label.rsplit('-seed', 1)[0]}-pop{len(members)}"
    return {"members": [m.to_dict() for m in members], "label": label, "runs": len(members)}


def item_members(item: dict) -> list[Config]:
    return [Config.from_dict(m) for m in item["members"]]


# a searcher's trial config: the names of the knobs the space drew (`raycredit.search.BoundSpace`)
SEARCHED = "_searched"


def searched_label(cfg: Config, searched: list[str]) -> str:
    """A searcher's trial: its rule and the values it drew (3 significant digits), e.g.
    scaffold-aux_kind=linear-blend_alpha=0.423."""
    flat = cfg.flat()
    return "-".join([cfg.rule.rule] + [f"{k}={flat[k]:.3g}" if isinstance(flat[k], float) else f"{k}={flat[k]}"
                                       for k in searched])


def trial_members(config: dict, base: dict | None) -> tuple[list[Config], list[str], list[str], str]:
    """(configs, run keys, run names, the trial's key: its checkpoint folder) of a trial's Tune config."""
    from raycredit.population import population_key

    if base is not None:
        cfg = Config.from_dict(base).replace(**{k: v for k, v in config.items() if k != SEARCHED})
        trial_id = tune.get_context().get_trial_id()
        name = f"{searched_label(cfg, config.get(SEARCHED, []))}-{trial_id}"
        return [cfg], [f"{cfg.key()}-{trial_id}"], [name], f"{cfg.key()}-{trial_id}"
    cfgs = item_members(config["cfg"])
    keys = [c.key() for c in cfgs]
    return cfgs, keys, [run_label(c) for c in cfgs], keys[0] if len(cfgs) == 1 else population_key(cfgs)


def lineage_tags(s: SweepSettings, cfg: Config) -> dict:
    """A branch's tags: its parent (run id, or the checkpoint on disk) and epoch, and MLflow's parentRunId, which
    nests the branch under its parent in the UI."""
    from raycredit.lineage import kind_of_parent
    from raycredit.tracking import PARENT_EPOCH_TAG, PARENT_RUN_TAG, parent_run_id

    ref = cfg.lineage.parent_run
    if not ref:
        return {}
    kind = kind_of_parent(ref)
    if kind == "path":
        return {PARENT_RUN_TAG: ref, PARENT_EPOCH_TAG: cfg.lineage.parent_epoch}
    run_id = parent_run_id(s.tracking_uri, ref, s.experiment_id if kind == "run_key" else None)
    return {PARENT_RUN_TAG: run_id, PARENT_EPOCH_TAG: cfg.lineage.parent_epoch, "mlflow.parentRunId": run_id}


def branch_entry(s: SweepSettings, cfg: Config, run, data, folder: Path) -> dict:
    """The start of a branch (`lineage.branch_start`) from its parent's kept checkpoint; the parent's epochs are
    logged to the branch's run (once: a retry skips the epochs logged before)."""
    import tempfile

    from raycredit import lineage

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        _, parent = lineage.fetch_parent(cfg, tmp, s.tracking_uri, s.experiment_id)
    start = lineage.branch_start(cfg, parent, data.in_shape, data.n_classes)
    if not cfg.exploit.exploitability:
        for m in start["history"]:
            run.log_epoch(m["epoch"], m)
    return start


def keep_checkpoint(folder: Path, epoch: int, ckpt: dict, run) -> None:
    """A kept epoch (train.keep_epochs): its checkpoint, logged to the run as checkpoint/epoch-<e>/."""
    from raycredit.checkpoint import save_checkpoint
    from raycredit.tracking import KEPT_ARTIFACT

    path = folder / f"epoch-{epoch}" / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, path)
    run.log_checkpoint(path, KEPT_ARTIFACT.format(epoch=epoch))
    path.unlink()


def trial_name(trial) -> str:
    if "cfg" not in trial.config:
        return f"trial-{trial.trial_id}"  # a searcher's trial: its config is drawn when it starts
    return f"{trial.config['cfg']['label']}-{trial.trial_id}"


def trial_dirname(trial) -> str:
    return trial.trial_id


def trial_summary(key: str, epoch: int, results: list[dict], done: bool, failed: tuple[str, ...] = ()) -> dict:
    """What a trial reports to Tune: a single member's metrics, or a population's means over the members that
    have not diverged (each member's run holds its own), whether every member is done, and the run keys of the
    members that failed alone (`FAILED_MEMBERS`, comma-separated)."""
    ok = [m for m in results if not m.get("diverged")]
    if len(results) == 1:
        means = dict(results[0])
    else:
        means = {k: sum(m[k] for m in ok) / len(ok) for k in ("train_loss", "test_acc", "deep_cos")
                 if ok and all(k in m for m in ok)}
    return {**means, "epoch": epoch, "members": len(results), "diverged": float(len(results) - len(ok)),
            TRIAL_DONE: float(done), "run_key": key, FAILED_MEMBERS: ",".join(failed)}


def trial_device() -> str:
    import ray
    import torch

    on_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    if ray.get_gpu_ids() and not on_gpu:
        print(f"notice: Ray assigned GPU {ray.get_gpu_ids()} but torch sees no CUDA device; training on CPU")
    return "cuda" if on_gpu else "cpu"


def open_run(s: SweepSettings, cfg: Config, key: str, name: str, data, tags: dict | None = None):
    """The trial's MLflow run for cfg (found by its key, or created) with its params, tags and its dataset as
    an MLflow input (name, digest of the data config and shapes, shapes as its profile)."""
    from raycredit.knobs import stable_hash
    from raycredit.tracking import SWEEP_TAG, TrialRun

    run = TrialRun(s.tracking_uri, s.experiment_id, key, run_name=name, params=cfg.flat(),
                   tags={"rule": cfg.rule.rule, "search": s.search, "dataset": cfg.data.dataset,
                         "seed": cfg.train.seed, "code_version": s.code_version, "n_classes": data.n_classes,
                         **({SWEEP_TAG: s.sweep} if s.sweep else {}), **s.source_tags, **(tags or {})})
    profile = {"train": list(data.x_train.shape), "test": list(data.x_test.shape), "input_shape": list(data.in_shape),
               "targets": list(data.y_train.shape[1:]) or "class labels", "n_classes": data.n_classes}
    source = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "random_targets"}
    run.log_dataset(cfg.data.dataset, stable_hash([source, profile])[:10], source, profile)
    return run


def start_attempt(run, resumed_from: int, device: str) -> None:
    """Tag the attempt: its node, process and the device it trains on (the config's `device` param keeps the
    request, e.g. auto), and, for any attempt that starts from a checkpoint (or any restart), the epoch it
    resumed from."""
    import ray

    from raycredit.tracking import DEVICE_TAG, NODE_TAG, PID_TAG, RESUMED_TAG

    tags = {NODE_TAG: ray.get_runtime_context().get_node_id(), PID_TAG: os.getpid(), DEVICE_TAG: device}
    run.set_tags({**tags, RESUMED_TAG: resumed_from} if run.attempt > 1 or resumed_from else tags)


def write_checkpoint(path: Path, members: dict[str, dict], population: bool) -> None:
    """The trial's checkpoint file: a one-config trial's checkpoint itself, or a population's
    {"population": {member key: checkpoint}} of its members still training."""
    from raycredit.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    save_checkpoint({"format": CHECKPOINT_FORMAT, "population": members} if population
                    else next(iter(members.values())), path)


def set_aside(path: Path, root: Path, name: str) -> Path:
    """Move `path` (the entry itself, never a symlink's target) to <root>/set_aside/<name>-<time>, kept to
    inspect; returns where it went."""
    aside = root / "set_aside" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.parent.mkdir(exist_ok=True)
    os.replace(path, aside)
    return aside


def own_folder(folder: Path) -> None:
    """Make the trial's folder, as a directory of its own: a symlink planted in its place in shared storage is
    moved to <checkpoints>/set_aside/ (the link, never its target) with a warning, not written through."""
    if folder.is_symlink():
        aside = set_aside(folder, folder.parent, f"{folder.name}.symlink")
        print(f"warning: {folder} was a symbolic link (to {os.readlink(aside)}), which raycredit never makes; set "
              f"aside as {aside}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)


def read_checkpoint(path: Path, key: str, runs: list) -> dict[str, dict]:
    """{member key: checkpoint} of the trial's file at `path` ({} when there is none); `key` names the member of
    a one-config trial. An unreadable file (truncated by a full disk or a crash, corrupt), or one that is not
    this user's own regular file (a symlink, another user's file in shared storage), is moved to
    <checkpoints>/set_aside/ (a symlink itself, never its target), noted on `runs` and in the trial's log, and
    the trial starts over from scratch: its epochs are recomputed (the runs keep the ones they logged)."""
    from raycredit.checkpoint import check_own_file, load_checkpoint

    if not os.path.lexists(path):
        return {}
    try:
        check_own_file(path)
        ckpt = load_checkpoint(path)
    except UserError as e:
        # beside the trials' folders, not in its own (which goes once the trial finishes)
        aside = set_aside(path, path.parent.parent, f"{path.parent.name}-{path.name}.corrupt")
        print(f"warning: {e}; set aside as {aside}, the trial starts over from scratch", flush=True)
        for run in runs:
            run.set_tags({SET_ASIDE_TAG: str(aside)})
        return {}
    return ckpt["population"] if "population" in ckpt else {key: ckpt}


def fail_cleanly(runs: list, key: str, e: Exception) -> None:
    """End the trial as failed without a traceback or a retry (retrying cannot help: a full disk stays full
    until someone frees it): its unfinished runs are FAILED with the reason, and Tune is told the reason. When
    the tracking store's own disk is full too, the runs stay RUNNING (the next run of the sweep takes them up);
    when the failure cannot be written for another reason, `e` propagates and Tune retries the trial as after
    any crash."""
    try:
        for run in runs:
            if not run.finished:
                run.set_tags({FAILURE_TAG: str(e)})
                run.finish("FAILED")
    except Exception as unwritten:
        if not is_full(unwritten):
            raise e from None
    tune.report({"failure": str(e), "run_key": key})
