"""The MLflow client of a tracking URI, and retries of what concurrent trials can hit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def get_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri(uri))


def mlflow_uri(uri: str) -> str:
    """The URI as MLflow gets it: a user and password written into an http(s) URI move into MLflow's own
    variables of this process (MLFLOW_TRACKING_USERNAME/PASSWORD, which it sends as the same basic auth), so no
    message of MLflow's, which quotes the URL a request failed on (an outage: every retry), carries them. A
    user without a password (a bare token) stays in the URI: MLflow's variables cannot say it."""
    import os
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.password:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


LOCKED = ("locked",)
# MLflow's SQL store looks a dataset up and inserts it when missing in one transaction without a lock
# (SqlAlchemyStore._log_inputs_impl), so two trials logging the same dataset at once can both insert it: the
# loser fails on the (experiment_id, name, digest) key and, tried again, finds the winner's row
DUPLICATE = ("unique constraint", "duplicate key", "duplicate entry")


def retry(fn: Callable[[], T], tries: int = 8, transient: tuple[str, ...] = LOCKED) -> T:
    """Call fn, again after errors that concurrent trials can hit: SQLite's 'database is locked', or whatever
    `transient` names (lower-case parts of the message)."""
    for k in range(tries):
        try:
            return fn()
        except Exception as e:
            if not any(t in str(e).lower() for t in transient) or k == tries - 1:
                raise
            time.sleep(0.2 * 2**k)
    raise AssertionError("unreachable")
