"""All Ray calls: connecting to a cluster (`cluster`), the Tune trainable (`trainable`) and what a trial owes
MLflow, its checkpoint and Tune (`bookkeeper`; the checkpoint file itself, in a folder or object storage:
`trialfile`), running and resuming a sweep (`sweep`), the hang watch (`hang`) and its heartbeat actor
(`heartbeats`). One trial trains one config, or several as a population, each with its own MLflow run.

The names below load their module on first use (PEP 562): a Ray worker that only hosts the heartbeat actor
imports this package without torch, MLflow or Tune.
"""

import importlib
import os

# Set before ray is first imported (by the modules of this package).
# Ray binds to the machine's address unless told otherwise; this keeps local instances on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# the classic reporter lets the progress table show the trials' labels instead of the whole nested config
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

_FROM = {
    "bookkeeper": ("FAILURE_TAG", "open_run"),
    "cluster": ("check_shared_storage", "check_trial_resources", "cluster_gpus", "connect", "disconnect",
                "kept", "resolve_address", "storage_visibility"),
    "hang": ("HANG_LIMITS", "HangWatch"),
    "heartbeats": ("MIN_HANG_AFTER_S",),
    "sweep": ("OUTPUT", "BoundSpace", "OptunaSettings", "SearchOutcome", "check_trusted", "run_optuna",
              "run_trials", "space_check", "tune_logging"),
    "trainable": ("SweepSettings", "run_label", "trainable"),
    "trialfile": ("SET_ASIDE_TAG",),
}
_MODULE = {name: module for module, names in _FROM.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE))
