"""Checks a search makes before anything starts, beyond each value's own range (`raycredit.config`): its
flags, the experiment's name, the device, and the tracking store against the sweep's record of it."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

from raycredit.errors import UserError
from raycredit.storage import Place

STORE_MARKER = "raycredit-store.json"


def store(sweep: Place, uri: str, experiment: str, keys: list[str]) -> None:
    """The tracking store is the record: refuse to resume the sweep folder `sweep` into a store that is not
    the one it started with (deleted and re-created, replaced, another one), or that is behind the sweep's own
    record (a restored backup, a copy): a run missing, or fewer epochs logged, than the sweep's checkpoints
    (`keys`: its configs' run keys, whose folders say they started) or its record of its runs
    (`record_runs`) say exist. Either would give runs whose histories start mid-way or skip epochs. Writes
    nothing: `record_store` marks a sweep's store once the sweep starts."""
    from raycredit import tracking

    marker = sweep / STORE_MARKER
    if not marker.exists():
        return
    try:
        record = json.loads(marker.read_bytes())
        recorded, runs = record["token"], dict(record.get("runs", {}))
    except (OSError, UserError, ValueError, KeyError, TypeError, AttributeError):
        recorded, runs = None, {}
    found = tracking.existing_experiment(uri, experiment)
    fix = (f"point --tracking-uri at the sweep's original store, or start the sweep over with a new --storage "
           f"(or delete {sweep})")
    if found is None or found[1] != recorded:
        raise UserError(f"the sweep in {sweep} was started with another tracking store than "
                        f"{tracking.redact(uri)} (deleted, replaced or another one): {fix}")
    expected = {k: 0 for k in keys if (sweep / "checkpoints" / k).is_dir()}
    for k, epoch in {**checkpoint_epochs(sweep / "checkpoints"), **runs}.items():
        if isinstance(epoch, int):
            expected[k] = max(expected.get(k, 0), epoch)
    logged = tracking.run_epochs(uri, found[0])
    missing = sorted(k for k in expected if k not in logged)
    if missing:
        raise UserError(f"{len(missing)} runs of the sweep in {sweep} are not in {tracking.redact(uri)} (the store "
                        f"lost them, or is an older copy), e.g. run key {missing[0]}: {fix}")
    behind = sorted((k, logged[k], e) for k, e in expected.items() if logged[k] < e)
    if behind:
        k, has, e = behind[0]
        raise UserError(f"{len(behind)} runs of the sweep in {sweep} have fewer epochs in {tracking.redact(uri)} "
                        f"than the sweep recorded (an older copy of the store?), e.g. run key {k}: epoch {has} "
                        f"logged, {e} recorded: {fix}")


def checkpoint_epochs(root: Place) -> dict[str, int]:
    """{run key: epoch} of every checkpoint the sweep's trials left under `root` (one run's, or a population's
    members'); files a trial would set aside (unreadable, a symlink, another user's) are skipped here."""
    from raycredit.checkpoint import CHECKPOINT_FILE, load_checkpoint

    out: dict[str, int] = {}
    for name in root.children():
        path = root / name / CHECKPOINT_FILE
        try:
            ckpt = load_checkpoint(path, path.read_bytes())
            members = ckpt["population"] if "population" in ckpt else {name: ckpt}
            out.update({k: int(c["epoch"]) for k, c in members.items()})
        except Exception:  # whatever a damaged file raises: the trial sets it aside itself
            continue
    return out


def record_store(sweep: Place, uri: str, experiment_id: str) -> None:
    """Record the store's token in `sweep`/raycredit-store.json (once, when the sweep starts)."""
    from raycredit import tracking

    marker = sweep / STORE_MARKER
    if not marker.exists():
        marker.write_bytes(json.dumps({"token": tracking.store_token(uri, experiment_id)}).encode())


@contextlib.contextmanager
def recording_runs(sweep: Place, uri: str, experiment_id: str) -> Iterator[None]:
    """Run a sweep, then add the epochs its runs logged to its record (`record_runs`), however it ends."""
    try:
        yield
    finally:
        record_runs(sweep, uri, experiment_id)


def record_runs(sweep: Place, uri: str, experiment_id: str) -> None:
    """Add to the sweep's record the epochs its runs have logged (`store` refuses a store behind them); a
    record that cannot be written (a full disk) is left as it was."""
    from raycredit import tracking

    marker = sweep / STORE_MARKER
    try:
        record = json.loads(marker.read_bytes())
        runs = record.setdefault("runs", {})
        for r in tracking.sweep_runs(uri, experiment_id, sweep.name):
            key = r.data.tags.get(tracking.RUN_KEY_TAG)
            if key:
                runs[key] = max(int(runs.get(key, 0)), int(r.data.metrics.get("epoch", 0)))
        marker.write_bytes(json.dumps(record).encode())
    except Exception:  # the record is a safeguard: the sweep's outcome stands without it
        return


EXPERIMENT_NAME_MAX = 100  # characters
EXPERIMENT_NAME_BYTES = 200  # the Tune experiment folder "<experiment>-<8 hex>" stays within a name's 255 bytes


def sweep_flags(args, min_hang_after_s: float) -> None:
    """UserError for a search's resource, retry and watch flags out of range."""
    if not (math.isfinite(args.gpus_per_trial) and math.isfinite(args.cpus_per_trial)) \
            or args.gpus_per_trial < 0 or args.cpus_per_trial <= 0:
        raise UserError("--gpus-per-trial must be a finite number >= 0 and --cpus-per-trial a finite number > 0")
    if args.max_failures < 0:
        raise UserError("--max-failures must be >= 0")
    for flag, value in (("--trial-timeout", args.trial_timeout), ("--hang-after", args.hang_after),
                        ("--system-metrics", args.system_metrics)):
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{flag} {value}: must be a finite number >= 0")
    if 0 < args.hang_after < min_hang_after_s:
        raise UserError(f"--hang-after {args.hang_after}: below {min_hang_after_s:g} s a busy machine's "
                        "scheduling delays count as a hang")


def devices(configs: list, args) -> list[str]:
    """The CUDA devices the configs name explicitly (sorted), checked against the machine and the flags."""
    wants_cuda = sorted({c.train.device for c in configs if c.train.device not in ("auto", "cpu")})
    for device in wants_cuda:
        device_name(device, local=args.address in (None, "", "local"))
    if wants_cuda and args.gpus_per_trial == 0:
        raise UserError(f"device {wants_cuda[0]}: trials get no GPU with --gpus-per-trial 0")
    return wants_cuda


def store_writable(uri: str, experiment: str) -> None:
    """UserError unless the tracking store's files (a SQLite database, its journal files and folder) and the
    experiment's artifact folder, where every trial uploads its checkpoint at its end, can be written."""
    from raycredit import disk, tracking

    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        disk.check_writable(db.parent, "--tracking-uri")
        for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            disk.check_writable_file(f, "--tracking-uri")
    artifacts = tracking.artifact_folder(uri, experiment)
    if artifacts is not None:
        disk.check_writable(artifacts, f"the artifact folder of experiment {experiment!r}")


def foreign_run(uri: str, experiment: str, search: str):
    """A trial run of a search other than `search` in experiment `experiment` (None when there is none, or no
    such experiment). Reads only."""
    from raycredit import tracking
    from raycredit.tracking.client import get_client

    found = tracking.existing_experiment(uri, experiment)
    if found is None:
        return None
    runs = get_client(uri).search_runs([found[0]], filter_string=f"tags.search != '{search}'", max_results=100)
    return next((r for r in runs if tracking.SUMMARY_TAG not in r.data.tags and "search" in r.data.tags), None)


def experiment_owner(uri: str, experiment: str, search: str) -> None:
    """UserError when experiment `experiment` holds trials of a search other than `search`: its controls
    (bp, frozen) would be shared with, and silently moved by, a search whose grid differs. Reads only."""
    other = foreign_run(uri, experiment, search)
    if other is not None:
        raise UserError(f"--experiment {experiment!r} holds the runs of search {other.data.tags['search']!r} "
                        f"(e.g. {other.info.run_name!r}); {search} writes its own experiment: pass another "
                        "--experiment")


def experiment_name(name: str) -> None:
    """UserError unless `name` is a usable experiment name: it also names a folder under --storage, so it
    must stay inside it (no separators, no leading dot) and within filesystem name limits (255 bytes, so
    characters of several bytes count by their bytes), and it is quoted in MLflow's run filters (no quotes)."""
    if not name or len(name) > EXPERIMENT_NAME_MAX:
        raise UserError(f"--experiment: {len(name)} characters; use 1 to {EXPERIMENT_NAME_MAX}")
    size = len(name.encode(errors="surrogatepass"))
    if size > EXPERIMENT_NAME_BYTES:
        raise UserError(f"--experiment: {size} bytes in UTF-8; use at most {EXPERIMENT_NAME_BYTES} "
                        "(it names a folder under --storage)")
    if any(c in name for c in "/\\\0") or name.startswith(".") or not name.isprintable():
        raise UserError(f"--experiment {name!r}: no '/', '\\', leading '.' or control characters (it names a "
                        "folder under --storage)")
    if any(c in name for c in "'\"`"):
        raise UserError(f"--experiment {name!r}: no quotes or backticks (MLflow's run filters quote the name)")


def device_name(device: str, local: bool) -> None:
    """UserError unless `device` parses as a torch device and, for a local Ray instance (whose trials run on
    this machine), exists here; on a cluster the GPU check comes after connecting."""
    import torch

    from raycredit.train import parse_device

    dev = parse_device(device)
    if local and dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA devices, and a local "
                        "Ray instance runs the trials here")
