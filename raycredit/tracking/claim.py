"""The driver lock of an experiment as a claim in the tracking store itself (`raycredit.locks` adds a SQLite
store's file lock)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from raycredit.errors import UserError
from raycredit.knobs import stable_hash
from raycredit.locks import dead_here
from raycredit.tracking.client import get_client, retry

LOCK_MODEL_PREFIX = "raycredit-lock."
LOCK_HEARTBEAT_S = 10.0  # how often a holder renews its claim
LOCK_STALE_S = 120.0  # a claim not renewed for this long is a dead driver's (clocks of drivers' hosts agree to ~s)


@contextlib.contextmanager
def server_lock(uri: str, experiment: str, holder: dict, *, heartbeat_s: float = LOCK_HEARTBEAT_S,
                stale_s: float = LOCK_STALE_S, on_lost: Callable[[str], None] | None = None):
    """Hold the driver lock of `experiment` in the store at `uri` (a tracking server, or a SQLite file) for the
    body, or raise UserError naming the driver that holds it.

    The only atomic operation an MLflow store offers is creating a uniquely named object, so the lock is a
    registered model per generation, `raycredit-lock.<experiment hash>.<generation>`: a driver takes the lock by
    creating generation g+1 where g is the newest one, which is allowed only once g is released or stale
    (not renewed for `stale_s`, or its holder a process of this machine that has ended: `locks.dead_here`).
    Two drivers that race create the same name and only one succeeds. A holder
    renews its claim every `heartbeat_s` seconds from a thread; if it finds a newer generation (it was frozen
    for longer than `stale_s` and another driver took over) it calls `on_lost(message)`. Released claims stay
    as the newest generation (deleting it would let a driver start over at generation 0 beside a live one).
    """
    import json
    import threading

    from mlflow.exceptions import MlflowException

    server = get_client(uri)
    prefix = lock_prefix(experiment)

    def generations() -> dict[int, object]:
        models = retry(lambda: server.search_registered_models(filter_string=f"name LIKE '{prefix}%'"))
        return {int(m.name[len(prefix):]): m for m in models if m.name[len(prefix):].isdigit()}

    while True:
        gens = generations()
        top = max(gens, default=-1)
        if top >= 0:
            tags = gens[top].tags
            age = time.time() - float(tags.get("heartbeat", 0))
            if tags.get("state") == "held" and age < stale_s and not dead_here(_owner(tags)):
                raise UserError(f"another driver is training into experiment {experiment!r} ({_holder(tags)}, "
                                f"lock {prefix}{top:06d} in the tracking store); wait for it to finish, or stop "
                                "it, then run this command again")
        mine = top + 1
        name = f"{prefix}{mine:06d}"
        try:
            server.create_registered_model(name, tags={"state": "held", "heartbeat": str(time.time()),
                                                       "holder": json.dumps(holder)},
                                           description=f"raycredit's driver lock of experiment {experiment!r}; "
                                                       "not a model (docs/RELIABILITY.md)")
            break
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    for g in gens:  # older generations: released or stale
        with contextlib.suppress(MlflowException):
            server.delete_registered_model(f"{prefix}{g:06d}")

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
                server.set_registered_model_tag(name, "heartbeat", str(time.time()))
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
            retry(lambda: server.set_registered_model_tag(name, "state", "released"))


def lock_prefix(experiment: str) -> str:
    """The registered-model name prefix of `experiment`'s lock, before its generation."""
    return f"{LOCK_MODEL_PREFIX}{stable_hash(experiment)}."


def _owner(tags: dict) -> dict:
    import json

    try:
        owner = json.loads(tags["holder"])
    except (KeyError, ValueError, TypeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _holder(tags: dict) -> str:
    owner = _owner(tags)
    try:
        return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
    except KeyError:
        return "holder unknown"
