"""Runs: one per trial, found by its run key (`TrialRun`), the search's summary runs, and closing runs whose
trial has ended."""

from __future__ import annotations

import time
from pathlib import Path

from raycredit.errors import UserError
from raycredit.locks import store_mutex
from raycredit.tracking.client import DUPLICATE, LOCKED, get_client, mlflow_uri, retry
from raycredit.tracking.store import existing_store, normalize_uri, redact

RUN_KEY_TAG = "raycredit.run_key"
STOPPED_EARLY_TAG = "raycredit.stopped_early"
ATTEMPT_TAG = "raycredit.attempt"  # 1, then +1 each time a restored, retried or moved trial takes its run up again
RESUMED_TAG = "raycredit.resumed_from_epoch"  # the checkpoint epoch the latest attempt started from
NODE_TAG = "raycredit.node"  # the Ray node id of the latest attempt
PID_TAG = "raycredit.pid"  # the process id of the latest attempt, on that node
DEVICE_TAG = "raycredit.device"  # the device the latest attempt trained on (cpu, cuda); params.device is the request
POPULATION_TAG = "raycredit.population"  # runs trained together in one population trial share this key
# a run's checkpoint folder among its artifacts, in the layout of `checkpoint.run_checkpoint_path`: the last
# epoch's checkpoint.pt, and each kept epoch's (train.keep_epochs) in epoch-<e>/
CHECKPOINT_ARTIFACT = "checkpoint"
KEPT_ARTIFACT = CHECKPOINT_ARTIFACT + "/epoch-{epoch}"
PARENT_RUN_TAG = "raycredit.parent_run"  # a branch's parent: its MLflow run id, or the checkpoint it started from
PARENT_EPOCH_TAG = "raycredit.parent_epoch"  # the parent's epoch the branch started from
SUMMARY_TAG = "raycredit.summary"  # runs that summarize a search (not trials); analyses skip them
SWEEP_TAG = "raycredit.sweep"  # the sweep (its Tune experiment's name) whose trial made the run
SEARCHED_TAG = "raycredit.searched"  # an Optuna trial's drawn knobs (comma-separated); its other params are fixed
TERMINAL = ("FINISHED", "FAILED", "KILLED")


class TrialRun:
    """The MLflow run of one trial: found by its run key, or created."""

    def __init__(self, uri: str, experiment_id: str, key: str, *, run_name: str, params: dict, tags: dict):
        from mlflow.entities import Param

        self.client, self.uri, self._monitor = get_client(uri), uri, None
        # two processes opening one key at once: the second finds the first's run, with its params (logged under
        # the mutex too, or both would insert them: one run, a duplicate-key error in the second)
        with store_mutex(uri):
            self._open(experiment_id, key, run_name, tags)
            # also after a kill between create_run and this call: a run is found but its params are missing
            missing = [Param(k, str(v)) for k, v in params.items() if k not in self._logged]
            if missing:
                retry(lambda: self.client.log_batch(self.run_id, params=missing))
        if self.attempt > 1 and not self.finished:
            self.set_tags({ATTEMPT_TAG: self.attempt})

    def _open(self, experiment_id: str, key: str, run_name: str, tags: dict) -> None:
        found = retry(lambda: self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=2))
        if found:
            run = found[0]
            self.run_id, self.status = run.info.run_id, run.info.status
            self.last_epoch = int(run.data.metrics.get("epoch", 0))
            self._final = dict(run.data.metrics)
            logged = run.data.params
            self.attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + (self.status != "FINISHED")
            if self.status not in ("RUNNING", "FINISHED"):  # a failed or killed attempt is being retried
                retry(lambda: self.client.update_run(self.run_id, status="RUNNING"))
                self.status = "RUNNING"
        else:
            # tag values must be strings for the REST store (a tracking server); SQLite is lenient
            run = retry(lambda: self.client.create_run(
                experiment_id, run_name=run_name,
                tags={**{k: str(v) for k, v in tags.items()}, RUN_KEY_TAG: key, ATTEMPT_TAG: "1"}))
            self.run_id, self.status, self.last_epoch, self._final, logged = run.info.run_id, "RUNNING", 0, {}, {}
            self.attempt = 1
        self._logged = logged

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    def final_metrics(self) -> dict[str, float]:
        """Last logged value of every metric of a run found at start."""
        return self._final

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log one epoch's metrics at step=epoch, unless that epoch was logged before an interruption."""
        from mlflow.entities import Metric

        if epoch <= self.last_epoch:
            return
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, epoch) for k, v in metrics.items()]
        retry(lambda: self.client.log_batch(self.run_id, metrics=batch))
        self.last_epoch = epoch

    def log_dataset(self, name: str, digest: str, source: dict, profile: dict) -> None:
        """The run's training data as an MLflow dataset input (the UI's Datasets), unless it has one already (a
        retried trial)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        run = retry(lambda: self.client.get_run(self.run_id))
        if run.inputs is not None and run.inputs.dataset_inputs:
            return
        dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps(source),
                          profile=json.dumps(profile))
        retry(lambda: self.client.log_inputs(self.run_id, datasets=[
            DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]), transient=LOCKED + DUPLICATE)

    def monitor_system(self, interval_s: float) -> None:
        """MLflow's system metrics of this process's machine (CPU, memory, disk, network; NVIDIA GPUs through
        nvidia-ml-py), sampled by a thread every interval_s seconds into the run's system/* metrics (the UI's
        System metrics tab) until finish(); a retried trial's samples continue the run's steps."""
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # its start, stop and "Skip logging GPU metrics" INFO lines would reach the driver's output from every
        # trial on a cluster whose workers do not inherit the driver's MLFLOW_LOGGING_LEVEL
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, resume_logging=True,
                                             tracking_uri=mlflow_uri(self.uri))
        # its batches go to MlflowClient.log_batch unretried, and one failed batch ends the monitor with a
        # warning in the trial's output: give them the trials' retry of SQLite's "database is locked"
        client = self._monitor.mlflow_logger.client
        log_batch = client.log_batch
        client.log_batch = lambda *a, **k: retry(lambda: log_batch(*a, **k))
        self._monitor.start()

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_checkpoint(self, path: str | Path, artifact_path: str = CHECKPOINT_ARTIFACT) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path))

    def stop_monitor(self) -> None:
        """Stop monitor_system's thread and log, as one last step, the samples of the interval it was in with
        one taken now: MLflow's monitor drops them (mlflow 3.17: monitor() returns on shutdown before
        publishing), which left every run shorter than one interval without a single sample."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        monitor.finish()
        if any(m._metrics for m in monitor.monitors):  # samples of the unfinished interval
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            retry(monitor.mlflow_logger.flush)

    def finish(self, status: str = "FINISHED") -> None:
        self.stop_monitor()
        retry(lambda: self.client.set_terminated(self.run_id, status))
        self.status = status


def record_summary(uri: str, experiment_id: str, *, key: str, name: str, params: dict, metrics: dict,
                   tags: dict, note: str | None = None, files: tuple[Path, ...] = (), update: bool = False) -> str:
    """Create (once per key) a FINISHED run that records a search's result, with `files` as artifacts under
    results/ (replaced when the run exists already); returns its run id. `update`: an existing run gets the
    metrics (as a new step), tags and note again."""
    from mlflow.entities import Metric, Param, RunTag

    client = get_client(uri)
    with store_mutex(uri):
        found = retry(lambda: client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                                  max_results=1))
        run_id = found[0].info.run_id if found else retry(lambda: client.create_run(
            experiment_id, run_name=name,
            tags={**{k: str(v) for k, v in tags.items()}, RUN_KEY_TAG: key, SUMMARY_TAG: "1"})).info.run_id
    ts = int(time.time() * 1000)
    if not found:
        retry(lambda: client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                                        metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                                        tags=[RunTag("mlflow.note.content", note or f"best config of {name}")]))
        retry(lambda: client.set_terminated(run_id, "FINISHED"))
    elif update:
        step = len(client.get_metric_history(run_id, next(iter(metrics)))) if metrics else 0
        retry(lambda: client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()],
                                        tags=[RunTag(k, str(v)) for k, v in tags.items()]
                                        + [RunTag("mlflow.note.content", note or "")]))
    for f in files:
        retry(lambda f=f: client.log_artifact(run_id, str(f), artifact_path="results"))
    return run_id


def sweep_runs(uri: str, experiment_id: str, sweep: str) -> list:
    """The MLflow runs (entities) of one sweep's trials, oldest first."""
    return sorted(get_client(uri).search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'",
                                              max_results=50000), key=lambda r: r.info.start_time)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of one metric of one run, by step."""
    return sorted((m.step, m.value) for m in get_client(existing_store(uri)).get_metric_history(run_id, key))


def _runs(uri: str, experiment_id: str, status: str = ""):
    """The experiment's runs (of one status, when given)."""
    where = f"attributes.status = '{status}'" if status else ""
    return get_client(uri).search_runs([experiment_id], filter_string=where, max_results=50000)


def finished_keys(uri: str, experiment_id: str) -> set[str]:
    """Run keys of the experiment's FINISHED runs."""
    return {r.data.tags.get(RUN_KEY_TAG) for r in _runs(uri, experiment_id, "FINISHED")}


def run_epochs(uri: str, experiment_id: str) -> dict[str, int]:
    """{run key: last epoch logged} of all the experiment's runs, whatever their status."""
    return {r.data.tags[RUN_KEY_TAG]: int(r.data.metrics.get("epoch", 0)) for r in _runs(uri, experiment_id)
            if RUN_KEY_TAG in r.data.tags}


def running_keys(uri: str, experiment_id: str) -> list[str]:
    """Run keys of the experiment's runs that are RUNNING."""
    return [r.data.tags[RUN_KEY_TAG] for r in _runs(uri, experiment_id, "RUNNING") if RUN_KEY_TAG in r.data.tags]


def close_stale_runs(uri: str, experiment_id: str, keys_status: dict[str, str], early: set[str] = frozenset()) -> int:
    """Set RUNNING runs whose trial has ended (key -> FINISHED/FAILED/KILLED) to that status; returns how many.

    Runs of trials a scheduler stopped early (`early`) are FINISHED with the tag raycredit.stopped_early=1.
    """
    from mlflow.entities import RunTag

    client = get_client(uri)
    n = 0
    for run in _runs(uri, experiment_id, "RUNNING"):
        key = run.data.tags.get(RUN_KEY_TAG, "")
        status = keys_status.get(key)
        if status in TERMINAL:
            if key in early:
                retry(lambda run_id=run.info.run_id: client.log_batch(
                    run_id, tags=[RunTag(STOPPED_EARLY_TAG, "1")]))
            retry(lambda run_id=run.info.run_id, status=status: client.set_terminated(run_id, status))
            n += 1
    return n


def run_checkpoint(uri: str, run_id: str, dst: str | Path) -> tuple[str, Path]:
    """(run name, local path of the run's logged checkpoint, downloaded into dst); UserError when the run
    or its checkpoint is missing."""
    from mlflow.exceptions import MlflowException

    client = get_client(existing_store(uri))
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no MLflow run {run_id!r} in {redact(normalize_uri(uri))}") from None
    if "checkpoint/checkpoint.pt" not in [a.path for a in client.list_artifacts(run_id, "checkpoint")]:
        raise UserError(f"run {run_id} has no checkpoint artifact (checkpoint/checkpoint.pt); it did not finish")
    return run.info.run_name, Path(client.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(dst)))


def run_experiment_name(uri: str, run_id: str) -> str:
    """The name of the experiment that holds the run."""
    client = get_client(existing_store(uri))
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name




def parent_run_id(uri: str, ref: str, experiment_id: str | None = None) -> str:
    """The run id of `ref`: a run id, or with experiment_id a run key in that experiment; UserError if none."""
    from mlflow.exceptions import MlflowException

    client = get_client(existing_store(uri))
    if experiment_id is not None:
        found = retry(lambda: client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{ref}'",
                                                  max_results=1))
        if not found:
            raise UserError(f"parent_run {ref!r}: no run with that key in the experiment (has it been trained?)")
        return found[0].info.run_id
    try:
        return retry(lambda: client.get_run(ref)).info.run_id
    except MlflowException:
        raise UserError(f"parent_run {ref!r}: no such MLflow run in {redact(normalize_uri(uri))}") from None


def kept_checkpoint(uri: str, ref: str, epoch: int, dst: str | Path, experiment_id: str | None = None
                    ) -> tuple[str, Path]:
    """(run id, local path) of the checkpoint at `epoch` of the run `ref` (`parent_run_id`), downloaded into
    dst: a kept epoch, else the last checkpoint (the caller checks its epoch). UserError naming the epochs the
    run has kept when it has neither."""
    client = get_client(existing_store(uri))
    run_id = parent_run_id(uri, ref, experiment_id)
    listed = {a.path for a in client.list_artifacts(run_id, CHECKPOINT_ARTIFACT)}
    kept = KEPT_ARTIFACT.format(epoch=epoch)
    for where in (kept, CHECKPOINT_ARTIFACT):
        if where in listed or f"{where}/checkpoint.pt" in listed:
            return run_id, Path(client.download_artifacts(run_id, f"{where}/checkpoint.pt", str(dst)))
    epochs = sorted(int(p.rsplit("-", 1)[1]) for p in listed if p.startswith("checkpoint/epoch-"))
    raise UserError(f"parent_run {ref!r}: run {run_id} has no checkpoint of epoch {epoch} (kept: "
                    f"{', '.join(map(str, epochs)) or 'none'}; it has not finished; see keep_epochs)")


def metrics_at(uri: str, run_id: str, step: int) -> dict[str, float]:
    """Every metric the run logged at `step` (an epoch)."""
    client = get_client(existing_store(uri))
    out = {}
    for key in client.get_run(run_id).data.metrics:
        values = [m.value for m in client.get_metric_history(run_id, key) if m.step == step]
        if values:
            out[key] = values[-1]
    return out


def experiment_facts(uri: str, experiment_id: str) -> dict[str, set[str]]:
    """What an experiment's finished runs were made of, for a manifest: their code versions, devices, nodes and
    training datasets (name@digest)."""
    facts: dict[str, set[str]] = {"code": set(), "device": set(), "node": set(), "data": set()}
    for r in _runs(uri, experiment_id, "FINISHED"):
        if SUMMARY_TAG in r.data.tags:
            continue
        for key, tag in (("code", "code_version"), ("device", DEVICE_TAG), ("node", NODE_TAG)):
            if tag in r.data.tags:
                facts[key].add(r.data.tags[tag])
        facts["data"] |= {f"{d.dataset.name}@{d.dataset.digest}" for d in (r.inputs.dataset_inputs if r.inputs else [])}
    return facts
