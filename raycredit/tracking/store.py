"""Tracking stores: URIs (checked, normalized, printed without credentials), creating a SQLite store, the
experiment and its identity token, and reading an experiment's runs."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import uuid
from pathlib import Path

from raycredit import disk
from raycredit.errors import UserError
from raycredit.tracking.client import get_client, mlflow_uri, retry


def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow_runs' / 'mlflow.db'}"


def normalize_uri(uri: str | None) -> str:
    """Absolute tracking URI (trials run in other working directories)."""
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri and not uri.startswith("sqlite:"):
        raise UserError(f"tracking URI {uri!r} is not a URI (use sqlite:///path/mlflow.db or http://host:port)")
    return uri


TRACKING_SCHEMES = ("sqlite", "http", "https")
REACH_TIMEOUT_S = 5.0
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


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
        db = Path(uri[len("sqlite:///"):])
        if db.is_file() and os.access(db, os.R_OK) and db.stat().st_size:
            with db.open("rb") as f:
                if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                    raise UserError(f"--tracking-uri {redact(uri)}: {db} is not a SQLite database (a file of "
                                    "something else is in its place; move it away or pass another store)")
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


def full_store_error(uri: str, e: BaseException) -> disk.DiskFull:
    """The DiskFull to raise for a write to the store at `uri` that failed because its disk is full
    (disk.is_full(e))."""
    import errno

    if uri.startswith("sqlite:///"):
        return disk.full_error(Path(uri[len("sqlite:///"):]), e)
    return disk.DiskFull(errno.ENOSPC, f"the tracking server's store {redact(uri)} is full: "
                                       f"{str(e).strip().splitlines()[0][:200]}")


def ensure_experiment(uri: str, name: str) -> str:
    """Id of experiment `name`, created if needed (local stores keep artifacts beside the database)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.exists():
            create_sqlite_store(db)
    client = get_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {name!r} is deleted; restore it or choose another --experiment")
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    location = (db.parent / "artifacts").as_uri() if uri.startswith("sqlite:///") else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as e:  # a driver holding the experiment's lock created it a moment ago
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def tag_experiment(uri: str, experiment_id: str, tags: dict[str, str]) -> None:
    """Set tags on an experiment (the UI shows them on its page)."""
    client = get_client(uri)
    for key, value in tags.items():
        retry(lambda k=key, v=value: client.set_experiment_tag(experiment_id, k, v))


def artifact_folder(uri: str, name: str) -> Path | None:
    """The local folder experiment `name` keeps its artifacts (checkpoints) in: its artifact location where that
    is a path on this machine, or, for a SQLite store that does not hold it yet, the folder `ensure_experiment`
    will give it; None where the artifacts go elsewhere (a tracking server, object storage). Writes nothing."""
    from urllib.parse import unquote, urlsplit

    found = existing_experiment(uri, name)
    location = get_client(uri).get_experiment(found[0]).artifact_location if found else None
    if location is None:
        return Path(uri[len("sqlite:///"):]).parent / "artifacts" if uri.startswith("sqlite:///") else None
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    return Path(location) if not parts.scheme else None


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


def experiment_id(uri: str, name: str) -> str:
    """Id of an existing experiment; UserError when there is none of that name."""
    exp = get_client(existing_store(uri)).get_experiment_by_name(name)
    if exp is None:
        raise UserError(f"no MLflow experiment {name!r} in {redact(normalize_uri(uri))}")
    return exp.experiment_id


STORE_TOKEN_TAG = "raycredit.store_token"  # experiment tag: a random token, new whenever the experiment is new


def existing_experiment(uri: str, name: str) -> tuple[str, str | None] | None:
    """(id, store token) of experiment `name` if the store and the experiment exist; writes nothing (a sqlite
    store that is not there is not created)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None
    exp = get_client(uri).get_experiment_by_name(name)
    return None if exp is None else (exp.experiment_id, exp.tags.get(STORE_TOKEN_TAG))


def store_token(uri: str, experiment_id: str) -> str:
    """The experiment's identity token, set on first use: a deleted and re-created store gets a new one."""
    client = get_client(uri)
    token = client.get_experiment(experiment_id).tags.get(STORE_TOKEN_TAG)
    if token is None:
        token = uuid.uuid4().hex
        retry(lambda: client.set_experiment_tag(experiment_id, STORE_TOKEN_TAG, token))
    return token


def existing_store(uri: str | None) -> str:
    """The normalized URI of a store to read; UserError for a SQLite store that is not there (MLflow would
    create an empty one wherever the command runs)."""
    uri = normalize_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store at {uri} (pass --tracking-uri, or run from the folder holding "
                        "mlflow_runs/)")
    return uri


def load_runs(uri: str, experiment: str):
    """All runs of an experiment as a pandas DataFrame: params.*, metrics.* (last values), tags.*, status."""
    import mlflow

    uri = existing_store(uri)
    client = get_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"no MLflow experiment {experiment!r} in {redact(uri)} "
                        f"(experiments: {', '.join(names) or 'none'})")
    mlflow.set_tracking_uri(mlflow_uri(uri))
    return mlflow.search_runs([exp.experiment_id], output_format="pandas")
