"""What a trial owes MLflow, its checkpoint file and Tune: `Bookkeeper`.

A trial trains one config, or several as a population, each with its own MLflow run (`raycredit.tracking`).
Every epoch the bookkeeper logs each member's metrics to its run and reports to Tune; every
`checkpoint_every` epochs it replaces the trial's checkpoint file `<storage>/<sweep>/checkpoints/<trial key>/
checkpoint.pt` atomically (`engine.trialfile`, in a folder or object storage), from which a restored, retried
or moved trial resumes. A trial of one config keeps that config's checkpoint there; a population's file holds
every unfinished member's. A member that finishes gets its own file, logged to its run with its kept epochs
(`checkpoint.run_checkpoint_path`'s layout). A trial that cannot go on fails cleanly: its runs say why, and
Tune is told.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ray import tune

from raycredit.checkpoint import CHECKPOINT_FILE, checkpoint_due, run_checkpoint_path, save_checkpoint
from raycredit.config import Config
from raycredit.disk import DiskFull, is_full
from raycredit.engine.hang import heartbeat
from raycredit.engine.trialfile import keep_checkpoint, own_folder, read_checkpoint, write_checkpoint
from raycredit.errors import UserError
from raycredit.knobs import stable_hash
from raycredit.lineage import Parent, kept_epochs
from raycredit.population import member_data
from raycredit.rules import applied
from raycredit.start import Start, resolve_start
from raycredit.storage import Place
from raycredit.tracking import (
    DEVICE_TAG,
    NODE_TAG,
    PARENT_EPOCH_TAG,
    PARENT_RUN_TAG,
    PID_TAG,
    POPULATION_TAG,
    RESUMED_TAG,
    SEARCHED_TAG,
    SWEEP_TAG,
    TrialRun,
    full_store_error,
    parent_run_id,
)

FAILURE_TAG = "raycredit.failure"  # why the latest attempt failed, when it failed cleanly (a full disk)
# reported with every result: 1 once every run of the trial is finished (Tune's own "done" is also 1 for a
# trial a scheduler stopped early)
TRIAL_DONE = "runs_done"
FAILED_MEMBERS = "failed_members"  # reported: run keys of a population's members that failed alone


class Bookkeeper:
    """One trial's members (configs, run keys, run names, data), their runs and the trial's checkpoint file.
    `todo`: the indices of the members still training."""

    def __init__(self, s, cfgs: list[Config], keys: list[str], names: list[str], trial_key: str):
        self.s, self.cfgs, self.keys, self.names, self.key = s, cfgs, keys, names, trial_key
        self.epochs = cfgs[0].train.epochs
        self.data = member_data(cfgs)
        self.folder = Place.of(s.checkpoint_root) / trial_key  # in the sweep's storage
        self.path = self.folder / CHECKPOINT_FILE
        self._local: Path | None = None
        self.kept = [set(kept_epochs(c)) - {self.epochs} for c in cfgs]
        self.alone: list[str] = []  # keys of members that failed on their own (a bad parent checkpoint)
        self.runs: list[TrialRun] = []
        self.todo: list[int] = []

    @property
    def local(self) -> Path:
        """Where files on their way to MLflow and parents' checkpoints on their way in go: the trial's own folder,
        or, on object storage, a temporary one on this node (made when first needed)."""
        if self._local is None:
            self._local = self.folder.local or Path(tempfile.mkdtemp(prefix=f"raycredit-{self.key[:40]}-"))
        return self._local

    def open(self, searched: list[str] | None) -> bool:
        """Open (or find) every member's run; False, with the failure reported to Tune, when the tracking
        store's disk is full. `searched`: a searcher's drawn knobs."""
        tags = {POPULATION_TAG: self.key} if len(self.cfgs) > 1 else {}
        if searched is not None:
            tags[SEARCHED_TAG] = ",".join(searched)
        try:
            self.runs = [open_run(self.s, c, k, n, d, {**tags, **lineage_tags(self.s, c)})
                         for c, k, n, d in zip(self.cfgs, self.keys, self.names, self.data, strict=True)]
        except Exception as e:
            if not is_full(e):
                raise
            tune.report({"failure": str(full_store_error(self.s.tracking_uri, e)), "run_key": self.key})
            return False
        self.todo = [i for i, r in enumerate(self.runs) if not r.finished]
        return True

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """The trial's work, beating the hang watch's heartbeat, with what each way of ending it owes the runs."""
        beating = heartbeat(self.s.heartbeat, tune.get_context().get_trial_id())
        try:
            yield
        except SystemExit:
            # Tune stopped the trial (a scheduler's early stop, or the sweep shutting down): the driver knows
            # which, and sets the runs' status when the sweep ends (tracking.close_stale_runs); the process may
            # go on to another trial, so nothing samples this one's machine into its run any more
            for r in self.runs:
                r.stop_monitor()
            raise
        except DiskFull as e:
            fail_cleanly(self.unfinished(), self.key, e)
        except BaseException as e:
            if isinstance(e, Exception) and is_full(e):  # the tracking store's disk, under one of MLflow's writes
                fail_cleanly(self.unfinished(), self.key, full_store_error(self.s.tracking_uri, e))
                return
            for r in self.runs:
                if not r.finished:
                    r.finish("FAILED")
            raise
        finally:
            if beating is not None:
                beating.set()

    def unfinished(self) -> list[TrialRun]:
        return [self.runs[i] for i in self.todo]

    def finished_before(self) -> bool:
        """True, and the trial reported done, when every run finished before (the driver died before Tune's
        state knew it)."""
        if self.todo:
            return False
        tune.report(trial_summary(self.key, self.epochs, [r.final_metrics() for r in self.runs], True))
        return True

    def starts(self) -> list[Start]:
        """Where each unfinished member starts (`raycredit.start.resolve_start`): the trial's checkpoint file,
        else its parent's kept checkpoint, else scratch. A branch whose parent checkpoint is unusable fails
        alone and its siblings train (re-running the sweep retries it in a trial of its own); [] when no member
        is left, reported to Tune. A branch's run gets its parent's epochs (once: a retry skips the epochs
        logged before)."""
        own_folder(self.folder)
        saved = read_checkpoint(self.path, self.keys[0], self.unfinished())
        starts: dict[int, Start] = {}
        for i in self.todo:
            if saved and self.keys[i] not in saved:
                if not self.cfgs[0].lineage.parent_run:
                    raise RuntimeError(f"{self.path} lacks unfinished members of its trial; delete it to restart them")
                self.fail_alone(i, "its parent checkpoint was unusable when its trial started")
                continue
            try:
                starts[i] = resolve_start(self.cfgs[i], saved.get(self.keys[i]), self.data[i], self.local,
                                          self.s.tracking_uri, self.s.experiment_id)
            except UserError as e:  # its parent's checkpoint is bad: this member fails alone, its siblings train
                print(f"error: {self.names[i]}: {e}", flush=True)
                self.fail_alone(i, str(e))
        if not starts:
            tune.report({"failure": "every member's parent checkpoint is unusable", "run_key": self.key,
                         FAILED_MEMBERS: ",".join(self.alone)})
            return []
        self.todo = list(starts)
        for i, start in starts.items():
            if start.kind == "branch":
                for m in start.checkpoint["history"]:
                    self.runs[i].log_epoch(m["epoch"], m)
        return list(starts.values())

    def fail_alone(self, i: int, why: str) -> None:
        self.runs[i].set_tags({FAILURE_TAG: why})
        self.runs[i].finish("FAILED")
        self.alone.append(self.keys[i])

    def begin(self, starts: list[Start], device: str) -> None:
        """Tag the attempt on every member's run and sample the machine into the first one's (the members share
        this process and machine)."""
        import ray

        tags = {NODE_TAG: ray.get_runtime_context().get_node_id(), PID_TAG: os.getpid(), DEVICE_TAG: device}
        for i in self.todo:
            # the config's `device` param keeps the request (e.g. auto); a restart or resume names its epoch
            resumed = self.runs[i].attempt > 1 or starts[0].epoch
            self.runs[i].set_tags({**tags, RESUMED_TAG: starts[0].epoch} if resumed else tags)
        if self.s.system_metrics_s > 0:
            self.runs[self.todo[0]].monitor_system(self.s.system_metrics_s)

    def close(self, i: int, metrics: dict, ckpt: dict | None) -> None:
        """Everything a finished run owes MLflow: its last finite checkpoint, the divergence tag, FINISHED.
        Done before the trial's last report: a scheduler may stop the trial inside that report (SystemExit)."""
        if ckpt is not None:
            member_path = run_checkpoint_path(self.local / self.keys[i])
            member_path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(ckpt, member_path)
            self.runs[i].log_checkpoint(member_path)
        self.runs[i].set_tags({"diverged": int(metrics.get("diverged", 0))})
        self.runs[i].finish("FINISHED")

    def report(self, epoch: int, results: list[dict]) -> None:
        done = all(self.runs[i].finished for i in self.todo)
        if done:
            self.folder.remove()
            if self._local is not None:
                shutil.rmtree(self._local, ignore_errors=True)
        tune.report(trial_summary(self.key, epoch, results, done, tuple(self.alone)))

    def finished_at_start(self, starts: list[Start]) -> bool:
        """True, and every run closed, when the members start at their last epoch (killed after saving it; its
        metrics were logged first): nothing is left to train."""
        if starts[0].epoch != self.epochs:
            return False
        for i, start in zip(self.todo, starts, strict=True):
            self.close(i, start.checkpoint["history"][-1], start.checkpoint)
        self.report(self.epochs, [start.checkpoint["history"][-1] for start in starts])
        return True

    def on_epoch(self, epoch: int, results: list[dict | None], checkpoint_fn) -> None:
        """`population.train_members`' callback: log, close diverged and finished members, keep and checkpoint."""
        members = [(self.todo[j], m) for j, m in enumerate(results) if m is not None]
        for i, m in members:
            self.runs[i].log_epoch(epoch, m)
        diverged = [(i, m) for i, m in members if m["diverged"]]
        if diverged:
            old = read_checkpoint(self.path, self.keys[0], [])  # their last finite state
            for i, m in diverged:
                self.close(i, m, old.get(self.keys[i]))
        new = {}
        keep = [i for i, m in members if epoch in self.kept[i] and not m["diverged"]]
        due = checkpoint_due(self.cfgs[0], epoch)
        if checkpoint_fn is not None and (due or keep):
            new = {self.keys[self.todo[j]]: c for j, c in enumerate(checkpoint_fn()) if c is not None}
            for i in keep:
                keep_checkpoint(self.local / self.keys[i], epoch, new[self.keys[i]], self.runs[i])
            if due:
                write_checkpoint(self.path, new, population=len(self.cfgs) > 1)
        if epoch == self.epochs:
            for i, m in members:
                if not m["diverged"]:
                    self.close(i, m, new[self.keys[i]])
        self.report(epoch, [m for _, m in members])


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


def open_run(s, cfg: Config, key: str, name: str, data, tags: dict | None = None) -> TrialRun:
    """The trial's MLflow run for cfg (found by its key, or created) with its params (`rules.applied`), tags and
    its dataset as an MLflow input (name, digest of the data config and shapes, shapes as its profile)."""
    run = TrialRun(s.tracking_uri, s.experiment_id, key, run_name=name, params=applied(cfg.flat()),
                   tags={"rule": cfg.rule.rule, "search": s.search, "dataset": cfg.data.dataset,
                         "seed": cfg.train.seed, "code_version": s.code_version, "n_classes": data.n_classes,
                         **({SWEEP_TAG: s.sweep} if s.sweep else {}), **s.source_tags, **(tags or {})})
    profile = {"train": list(data.x_train.shape), "test": list(data.x_test.shape), "input_shape": list(data.in_shape),
               "targets": list(data.y_train.shape[1:]) or "class labels", "n_classes": data.n_classes}
    source = {**{k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "random_targets"},
              **(data.provenance or {})}
    run.log_dataset(cfg.data.dataset, stable_hash([source, profile])[:10], source, profile)
    return run


def lineage_tags(s, cfg: Config) -> dict:
    """A branch's tags: its parent (run id, or the checkpoint on disk) and epoch, and MLflow's parentRunId, which
    nests the branch under its parent in the UI."""
    parent = Parent.of(cfg)
    if parent is None:
        return {}
    if parent.kind == "path":
        return {PARENT_RUN_TAG: parent.ref, PARENT_EPOCH_TAG: parent.epoch}
    run_id = parent_run_id(s.tracking_uri, parent.ref, s.experiment_id if parent.kind == "run_key" else None)
    return {PARENT_RUN_TAG: run_id, PARENT_EPOCH_TAG: parent.epoch, "mlflow.parentRunId": run_id}


def fail_cleanly(runs: list[TrialRun], key: str, e: Exception) -> None:
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
