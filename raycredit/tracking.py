"""All MLflow calls.

Trials log from inside the trial through `TrialRun`, keyed by a stable run
key (the config hash): a restored or retried trial finds and continues its
own run instead of creating a second one (the stock MLflowLoggerCallback
duplicates runs after `Tuner.restore`, SPEC §11), and epochs that were already
logged before an interruption are not logged twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from raycredit import disk
from raycredit.errors import UserError

# MLflow prints "View run <name> at: <tracking URI>/#/..." to stdout whenever a run on a server ends, in the
# driver and in every trial's worker log, credentials in the URI included; raycredit prints its own summary.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

RUN_KEY_TAG = "raycredit.run_key"
STOPPED_EARLY_TAG = "raycredit.stopped_early"
ATTEMPT_TAG = "raycredit.attempt"  # 1, then +1 each time a restored, retried or moved trial takes its run up again
RESUMED_TAG = "raycredit.resumed_from_epoch"  # the checkpoint epoch the latest attempt started from
NODE_TAG = "raycredit.node"  # the Ray node id of the latest attempt
PID_TAG = "raycredit.pid"  # the process id of the latest attempt, on that node
POPULATION_TAG = "raycredit.population"  # runs trained together in one population trial share this key
SUMMARY_TAG = "raycredit.summary"  # runs that summarize a search (not trials); analyses skip them
TERMINAL = ("FINISHED", "FAILED", "KILLED")
T = TypeVar("T")


def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow_runs' / 'mlflow.db'}"


def normalize_uri(uri: str | None) -> str:
    """Absolute tracking URI (trials run in other working directories, SPEC §11)."""
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri and not uri.startswith("sqlite:"):
        raise UserError(f"tracking URI {uri!r} is not a URI (use sqlite:///path/mlflow.db or http://host:port)")
    return uri


TRACKING_SCHEMES = ("sqlite", "http", "https")
REACH_TIMEOUT_S = 5.0


def check_tracking_uri(uri: str) -> None:
    """UserError unless `uri` (normalized) is a store raycredit supports, and, for a server, one that answers
    within REACH_TIMEOUT_S (any HTTP answer counts: an auth proxy's 401 means the server is there)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in TRACKING_SCHEMES:
        raise UserError(f"--tracking-uri {redact(uri)}: tracking URI scheme {parts.scheme!r} is not supported (use "
                        "sqlite:///path/mlflow.db, or http(s)://host:port of an MLflow server)")
    if parts.scheme == "sqlite":
        return
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1:
        raise UserError(f"--tracking-uri {redact(uri)}: expected http(s)://host[:port]")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, port, timeout=REACH_TIMEOUT_S)
    try:
        conn.request("GET", (parts.path.rstrip("/") or "") + "/health")
        conn.getresponse().read(1024)
    except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise UserError(f"--tracking-uri {redact(uri)}: cannot reach the MLflow tracking server within "
                        f"{REACH_TIMEOUT_S:.0f} s ({reason})") from None
    finally:
        conn.close()


def redact(uri: str) -> str:
    """The URI as printed: credentials written into it (http://user:token@host) are masked."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", uri)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _retry(fn: Callable[[], T], tries: int = 8) -> T:
    """Retry SQLite 'database is locked' errors that concurrent trials can hit."""
    for k in range(tries):
        try:
            return fn()
        except Exception as e:
            if "locked" not in str(e).lower() or k == tries - 1:
                raise
            time.sleep(0.2 * 2**k)
    raise AssertionError("unreachable")


def ensure_experiment(uri: str, name: str) -> str:
    """Id of experiment `name`, created if needed (local stores keep artifacts beside the database)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.exists():
            create_sqlite_store(db)
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {name!r} is deleted; restore it or choose another --experiment")
        return exp.experiment_id
    location = (db.parent / "artifacts").as_uri() if uri.startswith("sqlite:///") else None
    return client.create_experiment(name, artifact_location=location)


def create_sqlite_store(db: Path) -> None:
    """Create an empty MLflow SQLite store at `db` atomically: it is built beside `db` under a temporary name
    and linked into place complete, so a full disk or a crash never leaves a half-created store (which MLflow
    refuses to open afterwards); a store that another process created meanwhile is kept."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    # a name never used before: SQLAlchemy may keep a failed attempt's file open under its old name
    tmp = db.with_name(f".{db.name}.creating-{uuid.uuid4().hex}")
    try:
        SqlAlchemyStore(f"sqlite:///{tmp}", (db.parent / "artifacts").as_uri()).engine.dispose()
        with contextlib.closing(sqlite3.connect(tmp)) as con:
            # write-ahead log (kept by the file): trials looking up their runs no longer block the trials
            # writing metrics, which otherwise wait seconds for the lock when many trials log at once
            con.execute("PRAGMA journal_mode=WAL")
        try:
            os.link(tmp, db)
        except FileExistsError:
            pass
    except Exception as e:
        if disk.is_full(e):
            raise UserError(f"cannot create the tracking store {db}: its disk is full "
                            f"({disk.human(disk.free_bytes(db.parent))} free)") from None
        raise
    finally:
        for f in tmp.parent.glob(tmp.name + "*"):
            f.unlink(missing_ok=True)


class TrialRun:
    """The MLflow run of one trial: found by its run key, or created."""

    def __init__(self, uri: str, experiment_id: str, key: str, *, run_name: str, params: dict, tags: dict):
        from mlflow.entities import Param

        self.client = _client(uri)
        found = _retry(lambda: self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=2))
        if found:
            run = found[0]
            self.run_id, self.status = run.info.run_id, run.info.status
            self.last_epoch = int(run.data.metrics.get("epoch", 0))
            self._final = dict(run.data.metrics)
            logged = run.data.params
            self.attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + (self.status != "FINISHED")
            if self.status not in ("RUNNING", "FINISHED"):  # a failed or killed attempt is being retried
                _retry(lambda: self.client.update_run(self.run_id, status="RUNNING"))
                self.status = "RUNNING"
        else:
            # tag values must be strings for the REST store (a tracking server); SQLite is lenient
            run = _retry(lambda: self.client.create_run(
                experiment_id, run_name=run_name,
                tags={**{k: str(v) for k, v in tags.items()}, RUN_KEY_TAG: key, ATTEMPT_TAG: "1"}))
            self.run_id, self.status, self.last_epoch, self._final, logged = run.info.run_id, "RUNNING", 0, {}, {}
            self.attempt = 1
        # also after a kill between create_run and this call: a run is found but its params are missing
        missing = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        if missing:
            _retry(lambda: self.client.log_batch(self.run_id, params=missing))
        if self.attempt > 1 and not self.finished:
            self.set_tags({ATTEMPT_TAG: self.attempt})

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
        _retry(lambda: self.client.log_batch(self.run_id, metrics=batch))
        self.last_epoch = epoch

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        _retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_checkpoint(self, path: str | Path) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path="checkpoint"))

    def finish(self, status: str = "FINISHED") -> None:
        _retry(lambda: self.client.set_terminated(self.run_id, status))
        self.status = status


def record_summary(uri: str, experiment_id: str, *, key: str, name: str, params: dict, metrics: dict,
                   tags: dict, note: str | None = None, files: tuple[Path, ...] = ()) -> str:
    """Create (once per key) a FINISHED run that records a search's result, with `files` as artifacts under
    results/ (replaced when the run exists already); returns its run id."""
    from mlflow.entities import Metric, Param, RunTag

    client = _client(uri)
    found = _retry(lambda: client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                              max_results=1))
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = _retry(lambda: client.create_run(
            experiment_id, run_name=name,
            tags={**{k: str(v) for k, v in tags.items()}, RUN_KEY_TAG: key, SUMMARY_TAG: "1"})).info.run_id
        ts = int(time.time() * 1000)
        _retry(lambda: client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                                        metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                                        tags=[RunTag("mlflow.note.content", note or f"best config of {name}")]))
        _retry(lambda: client.set_terminated(run_id, "FINISHED"))
    for f in files:
        _retry(lambda f=f: client.log_artifact(run_id, str(f), artifact_path="results"))
    return run_id


def experiment_id(uri: str, name: str) -> str:
    """Id of an existing experiment; UserError when there is none of that name."""
    exp = _client(normalize_uri(uri)).get_experiment_by_name(name)
    if exp is None:
        raise UserError(f"no MLflow experiment {name!r} in {redact(normalize_uri(uri))}")
    return exp.experiment_id


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of one metric of one run, by step."""
    return sorted((m.step, m.value) for m in _client(normalize_uri(uri)).get_metric_history(run_id, key))


def finished_keys(uri: str, experiment_id: str) -> set[str]:
    """Run keys of the experiment's FINISHED runs."""
    runs = _client(uri).search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=50000)
    return {r.data.tags.get(RUN_KEY_TAG) for r in runs}


STORE_TOKEN_TAG = "raycredit.store_token"  # experiment tag: a random token, new whenever the experiment is new


def existing_experiment(uri: str, name: str) -> tuple[str, str | None] | None:
    """(id, store token) of experiment `name` if the store and the experiment exist; writes nothing (a sqlite
    store that is not there is not created)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None
    exp = _client(uri).get_experiment_by_name(name)
    return None if exp is None else (exp.experiment_id, exp.tags.get(STORE_TOKEN_TAG))


def store_token(uri: str, experiment_id: str) -> str:
    """The experiment's identity token, set on first use: a deleted and re-created store gets a new one."""
    client = _client(uri)
    token = client.get_experiment(experiment_id).tags.get(STORE_TOKEN_TAG)
    if token is None:
        token = uuid.uuid4().hex
        _retry(lambda: client.set_experiment_tag(experiment_id, STORE_TOKEN_TAG, token))
    return token


def run_keys(uri: str, experiment_id: str) -> set[str]:
    """Run keys of all the experiment's runs, whatever their status."""
    runs = _client(uri).search_runs([experiment_id], max_results=50000)
    return {r.data.tags[RUN_KEY_TAG] for r in runs if RUN_KEY_TAG in r.data.tags}


def running_keys(uri: str, experiment_id: str) -> list[str]:
    """Run keys of the experiment's runs that are RUNNING."""
    runs = _client(uri).search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=50000)
    return [r.data.tags[RUN_KEY_TAG] for r in runs if RUN_KEY_TAG in r.data.tags]


def close_stale_runs(uri: str, experiment_id: str, keys_status: dict[str, str], early: set[str] = frozenset()) -> int:
    """Set RUNNING runs whose trial has ended (key -> FINISHED/FAILED/KILLED) to that status; returns how many.

    Runs of trials a scheduler stopped early (`early`) are FINISHED with the tag raycredit.stopped_early=1.
    """
    from mlflow.entities import RunTag

    client = _client(uri)
    n = 0
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=50000):
        key = run.data.tags.get(RUN_KEY_TAG, "")
        status = keys_status.get(key)
        if status in TERMINAL:
            if key in early:
                _retry(lambda run_id=run.info.run_id: client.log_batch(
                    run_id, tags=[RunTag(STOPPED_EARLY_TAG, "1")]))
            _retry(lambda run_id=run.info.run_id, status=status: client.set_terminated(run_id, status))
            n += 1
    return n


def load_runs(uri: str, experiment: str):
    """All runs of an experiment as a pandas DataFrame: params.*, metrics.* (last values), tags.*, status."""
    import mlflow

    uri = normalize_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store at {uri}")
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"no MLflow experiment {experiment!r} in {redact(uri)} "
                        f"(experiments: {', '.join(names) or 'none'})")
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs([exp.experiment_id], output_format="pandas")


def run_checkpoint(uri: str, run_id: str, dst: str | Path) -> tuple[str, Path]:
    """(run name, local path of the run's logged checkpoint, downloaded into dst); UserError when the run
    or its checkpoint is missing."""
    from mlflow.exceptions import MlflowException

    client = _client(normalize_uri(uri))
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no MLflow run {run_id!r} in {redact(normalize_uri(uri))}") from None
    if "checkpoint/checkpoint.pt" not in [a.path for a in client.list_artifacts(run_id, "checkpoint")]:
        raise UserError(f"run {run_id} has no checkpoint artifact (checkpoint/checkpoint.pt); it did not finish")
    return run.info.run_name, Path(client.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(dst)))


def metrics_at(uri: str, run_id: str, step: int) -> dict[str, float]:
    """Every metric the run logged at `step` (an epoch)."""
    client = _client(normalize_uri(uri))
    out = {}
    for key in client.get_run(run_id).data.metrics:
        values = [m.value for m in client.get_metric_history(run_id, key) if m.step == step]
        if values:
            out[key] = values[-1]
    return out


LOCK_MODEL_PREFIX = "raycredit-lock."
LOCK_HEARTBEAT_S = 10.0  # how often a holder renews its claim
LOCK_STALE_S = 120.0  # a claim not renewed for this long is a dead driver's (clocks of drivers' hosts agree to ~s)


@contextlib.contextmanager
def server_lock(uri: str, experiment: str, holder: dict, *, heartbeat_s: float = LOCK_HEARTBEAT_S,
                stale_s: float = LOCK_STALE_S, on_lost: Callable[[str], None] | None = None):
    """Hold the driver lock of `experiment` on a tracking server for the body, or raise UserError naming the
    driver that holds it.

    The only atomic operation an MLflow server offers is creating a uniquely named object, so the lock is a
    registered model per generation, `raycredit-lock.<experiment hash>.<generation>`: a driver takes the lock by
    creating generation g+1 where g is the newest one, which is allowed only once g is released or stale
    (not renewed for `stale_s`). Two drivers that race create the same name and only one succeeds. A holder
    renews its claim every `heartbeat_s` seconds from a thread; if it finds a newer generation (it was frozen
    for longer than `stale_s` and another driver took over) it calls `on_lost(message)`. Released claims stay
    as the newest generation (deleting it would let a driver start over at generation 0 beside a live one).
    """
    import json
    import threading

    from mlflow.exceptions import MlflowException

    client = _client(uri)
    prefix = f"{LOCK_MODEL_PREFIX}{_stable(experiment)}."

    def generations() -> dict[int, object]:
        models = _retry(lambda: client.search_registered_models(filter_string=f"name LIKE '{prefix}%'"))
        return {int(m.name[len(prefix):]): m for m in models if m.name[len(prefix):].isdigit()}

    while True:
        gens = generations()
        top = max(gens, default=-1)
        if top >= 0:
            tags = gens[top].tags
            age = time.time() - float(tags.get("heartbeat", 0))
            if tags.get("state") == "held" and age < stale_s:
                raise UserError(f"another driver is training into experiment {experiment!r} ({_holder(tags)}, "
                                f"lock {prefix}{top:06d} on the tracking server); wait for it to finish, or stop "
                                "it, then run this command again")
        mine = top + 1
        name = f"{prefix}{mine:06d}"
        try:
            client.create_registered_model(name, tags={"state": "held", "heartbeat": str(time.time()),
                                                       "holder": json.dumps(holder)},
                                           description=f"raycredit's driver lock of experiment {experiment!r}; "
                                                       "not a model (docs/RELIABILITY.md)")
            break
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    for g in gens:  # older generations: released or stale
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(f"{prefix}{g:06d}")

    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(heartbeat_s):
            try:
                newer = [g for g in generations() if g > mine]
                if newer:
                    if on_lost is not None:
                        on_lost(f"this driver lost its lock of experiment {experiment!r} to another driver "
                                f"({_holder(generations()[max(newer)].tags)}): it was unresponsive for more than "
                                f"{stale_s:.0f} s")
                    return
                client.set_registered_model_tag(name, "heartbeat", str(time.time()))
            except Exception:  # a server outage: the claim goes stale only if it lasts stale_s
                continue

    thread = threading.Thread(target=renew, name="raycredit-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            _retry(lambda: client.set_registered_model_tag(name, "state", "released"))


def _holder(tags: dict) -> str:
    import json

    try:
        owner = json.loads(tags["holder"])
        return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
    except (KeyError, ValueError, TypeError):
        return "holder unknown"


def _stable(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]
