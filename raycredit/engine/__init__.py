"""All Ray calls: connecting to a cluster (`cluster`), the Tune trainable (`trainable`) and what a trial owes
MLflow, its checkpoint and Tune (`bookkeeper`), running and resuming a sweep (`sweep`), the hang watch (`hang`).
One trial trains one config, or several as a population, each with its own MLflow run."""

import os

# Set before ray is first imported (by the modules below).
# Ray binds to the machine's address unless told otherwise; this keeps local instances on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# the classic reporter lets the progress table show the trials' labels instead of the whole nested config
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from raycredit.engine.bookkeeper import FAILURE_TAG, SET_ASIDE_TAG, open_run  # noqa: E402
from raycredit.engine.cluster import (  # noqa: E402
    check_shared_storage,
    check_trial_resources,
    cluster_gpus,
    connect,
    disconnect,
    resolve_address,
    storage_visibility,
)
from raycredit.engine.hang import HANG_LIMITS, MIN_HANG_AFTER_S, HangWatch  # noqa: E402
from raycredit.engine.sweep import (  # noqa: E402
    OUTPUT,
    BoundSpace,
    OptunaSettings,
    SearchOutcome,
    check_trusted,
    run_optuna,
    run_trials,
    space_check,
    tune_logging,
)
from raycredit.engine.trainable import SweepSettings, run_label, trainable  # noqa: E402

__all__ = ["BoundSpace", "FAILURE_TAG", "HANG_LIMITS", "MIN_HANG_AFTER_S", "OUTPUT",
           "SET_ASIDE_TAG", "HangWatch", "OptunaSettings", "SearchOutcome", "SweepSettings", "check_shared_storage",
           "check_trial_resources", "check_trusted", "cluster_gpus", "connect", "disconnect", "open_run",
           "resolve_address", "run_label", "run_optuna", "run_trials", "space_check", "storage_visibility",
           "trainable", "tune_logging"]
