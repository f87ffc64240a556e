"""All MLflow calls: the store (`store`), runs (`runs`), a tracking server's driver lock (`claim`) and how the
UI opens an experiment (`view`).

Trials log from inside the trial through `TrialRun`, keyed by a stable run
key (the config hash): a restored or retried trial finds and continues its
own run instead of creating a second one (the stock MLflowLoggerCallback
duplicates runs after `Tuner.restore`), and epochs that were already
logged before an interruption are not logged twice.
"""

import logging
import os

# MLflow's SQL store logs every OperationalError with its traceback before raising it again (mlflow/store/db/
# utils.py, make_managed_session): SQLite's "database is locked", which raycredit retries, and a full disk,
# which a trial reports in one line; the raised error is handled either way
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
# MLflow prints "View run <name> at: <tracking URI>/#/..." to stdout whenever a run on a server ends, in the
# driver and in every trial's worker log, credentials in the URI included; raycredit prints its own summary.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# a branch downloads its parent's checkpoint inside its trial: no progress bar in the sweep's output
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from raycredit.tracking.claim import LOCK_MODEL_PREFIX, lock_prefix, server_lock  # noqa: E402
from raycredit.tracking.runs import (  # noqa: E402
    ATTEMPT_TAG,
    DEVICE_TAG,
    KEPT_ARTIFACT,
    NODE_TAG,
    PARENT_EPOCH_TAG,
    PARENT_RUN_TAG,
    PID_TAG,
    POPULATION_TAG,
    RESUMED_TAG,
    RUN_KEY_TAG,
    SEARCHED_TAG,
    STOPPED_EARLY_TAG,
    SUMMARY_TAG,
    SWEEP_TAG,
    TERMINAL,
    TrialRun,
    close_stale_runs,
    experiment_facts,
    finished_keys,
    kept_checkpoint,
    metric_history,
    metrics_at,
    parent_run_id,
    record_summary,
    run_checkpoint,
    run_epochs,
    run_experiment_name,
    running_keys,
    sweep_runs,
)
from raycredit.tracking.store import (  # noqa: E402
    REACH_TIMEOUT_S,
    STORE_TOKEN_TAG,
    TRACKING_SCHEMES,
    artifact_folder,
    check_tracking_uri,
    create_sqlite_store,
    default_tracking_uri,
    ensure_experiment,
    existing_experiment,
    existing_store,
    experiment_id,
    full_store_error,
    load_runs,
    normalize_uri,
    redact,
    store_token,
    tag_experiment,
)
from raycredit.tracking.view import searched_knobs, set_view, ui_link  # noqa: E402

__all__ = ["ATTEMPT_TAG", "DEVICE_TAG", "KEPT_ARTIFACT", "LOCK_MODEL_PREFIX", "NODE_TAG", "PARENT_EPOCH_TAG",
           "PARENT_RUN_TAG", "PID_TAG", "POPULATION_TAG", "REACH_TIMEOUT_S", "RESUMED_TAG", "RUN_KEY_TAG",
           "SEARCHED_TAG", "STOPPED_EARLY_TAG", "STORE_TOKEN_TAG", "SUMMARY_TAG", "SWEEP_TAG", "TERMINAL",
           "TRACKING_SCHEMES", "TrialRun", "artifact_folder", "check_tracking_uri", "close_stale_runs",
           "create_sqlite_store", "default_tracking_uri", "ensure_experiment", "existing_experiment",
           "existing_store", "experiment_facts", "experiment_id", "finished_keys", "full_store_error",
           "kept_checkpoint", "load_runs",
           "lock_prefix", "metric_history", "metrics_at", "normalize_uri", "parent_run_id", "record_summary",
           "redact", "run_checkpoint", "run_epochs", "run_experiment_name", "running_keys",
           "searched_knobs", "server_lock", "set_view", "store_token", "sweep_runs", "tag_experiment", "ui_link"]
