"""Checks a search makes before anything starts, beyond each value's own range (`raycredit.config`): the
experiment's name, the device, and the tracking store against the sweep's record of it."""

from __future__ import annotations

import json
from pathlib import Path

from raycredit.errors import UserError

STORE_MARKER = "raycredit-store.json"


def store(sweep: Path, uri: str, experiment: str, keys: list[str]) -> None:
    """The tracking store is the record: refuse to resume the sweep folder `sweep` into a store that is not
    the one it started with (deleted and re-created, replaced, another one), or that lacks the run of a trial
    the sweep has already checkpointed; either would give runs whose histories start mid-way. Writes
    nothing: `record_store` marks a sweep's store once the sweep starts."""
    from raycredit import tracking

    marker = sweep / STORE_MARKER
    if not marker.exists():
        return
    try:
        recorded = json.loads(marker.read_text())["token"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    found = tracking.existing_experiment(uri, experiment)
    fix = (f"point --tracking-uri at the sweep's original store, or start the sweep over with a new --storage "
           f"(or delete {sweep})")
    if found is None or found[1] != recorded:
        raise UserError(f"the sweep in {sweep} was started with another tracking store than "
                        f"{tracking.redact(uri)} (deleted, replaced or another one): {fix}")
    checkpointed = {k for k in keys if (sweep / "checkpoints" / k).is_dir()}
    missing = checkpointed - tracking.run_keys(uri, found[0])
    if missing:
        raise UserError(f"{len(missing)} trials of the sweep in {sweep} have checkpoints but no run in "
                        f"{tracking.redact(uri)} (the store lost them): {fix}")


def record_store(sweep: Path, uri: str, experiment_id: str) -> None:
    """Record the store's token in `sweep`/raycredit-store.json (once, when the sweep starts)."""
    from raycredit import tracking

    marker = sweep / STORE_MARKER
    if not marker.exists():
        sweep.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"token": tracking.store_token(uri, experiment_id)}))


EXPERIMENT_NAME_MAX = 100  # the Tune experiment folder is "<experiment>-<8 hex>" under --storage


def experiment_name(name: str) -> None:
    """UserError unless `name` is a usable experiment name: it also names a folder under --storage, so it
    must stay inside it (no separators, no leading dot) and within filesystem name limits."""
    if not name or len(name) > EXPERIMENT_NAME_MAX:
        raise UserError(f"--experiment: {len(name)} characters; use 1 to {EXPERIMENT_NAME_MAX}")
    if any(c in name for c in "/\\\0") or name.startswith(".") or not name.isprintable():
        raise UserError(f"--experiment {name!r}: no '/', '\\', leading '.' or control characters (it names a "
                        "folder under --storage)")


def device_name(device: str, local: bool) -> None:
    """UserError unless `device` parses as a torch device and, for a local Ray instance (whose trials run on
    this machine), exists here; on a cluster the GPU check comes after connecting."""
    import torch

    from raycredit.train import parse_device

    dev = parse_device(device)
    if local and dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA devices, and a local "
                        "Ray instance runs the trials here")
