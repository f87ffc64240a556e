"""Import a search script as a module (searches/ is a folder of scripts, not a package); the flags with which
the tests run searches in processes of their own."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the 2 CPUs of a local Ray instance (or of the tests' `ray start` head) to one trial at a time: one Ray worker
# process, which imports torch, MLflow and Tune once (about 5 CPU-s), serves every trial of a sweep; the faults
# these tests inject need no two trials at once. The trials then use 2 threads (`raycredit.engine.trainable`).
ONE_AT_A_TIME = ["--cpus-per-trial", "2"]


def load_search(name: str):
    spec = importlib.util.spec_from_file_location(f"search_{name}", ROOT / "searches" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
