"""The MLflow client of a tracking URI, and retries of what concurrent trials can hit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def get_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def retry(fn: Callable[[], T], tries: int = 8) -> T:
    """Retry SQLite 'database is locked' errors that concurrent trials can hit."""
    for k in range(tries):
        try:
            return fn()
        except Exception as e:
            if "locked" not in str(e).lower() or k == tries - 1:
                raise
            time.sleep(0.2 * 2**k)
    raise AssertionError("unreachable")
