"""The Ray cluster: connecting to it (or starting a local instance), and checking that it can run the sweep
(trial resources that some node has, storage that every node sees)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from raycredit.errors import UserError
from raycredit.storage import Place, display, is_uri, join


def resolve_address(address: str | None) -> str | None:
    """None for a new local instance; else a reachable host:port, or UserError."""
    if address in (None, "", "local"):
        return None
    if address == "auto":
        resolved = os.environ.get("RAY_ADDRESS", "")
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not resolved and current.exists():
            resolved = current.read_text().strip()
        if not resolved:
            raise UserError("--address auto: no running Ray cluster found (start one with `ray start --head`, "
                            "or omit --address for a local instance)")
    else:
        resolved = address.removeprefix("ray://") if address.startswith("ray://") else address
    host, _, port = resolved.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r}: expected host:port, 'auto' or nothing")
    try:
        speaks = speaks_http2(host, int(port))
    except OSError as e:
        reason = e.strerror or e
        raise UserError(f"--address {address!r}: cannot reach a Ray cluster at {resolved} ({reason})") from None
    # a TLS cluster (RAY_USE_TLS) answers only after a TLS handshake, which this cleartext probe does not make
    if not speaks and os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):
        raise UserError(f"--address {address!r}: {resolved} answers, but not as a Ray cluster (give the head's GCS "
                        "port, 6379 unless `ray start --port` said otherwise; not the dashboard's or another "
                        "service's)")
    return resolved


# the HTTP/2 client preface and an empty SETTINGS frame (RFC 9113 §3.4), then a PING (§6.7)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_PING = bytes([0, 0, 8, 6, 0, 0, 0, 0, 0]) + b"raycredt"


def speaks_http2(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether host:port speaks HTTP/2 as a Ray head's GCS (a gRPC server) does: it answers the preface with a
    SETTINGS frame and a PING with its acknowledgement. An HTTP/1 service (the Ray dashboard, an MLflow UI), a
    silent one, or one that answers the preface and then nothing does not; ray.init would wait on such a port
    indefinitely. OSError when nothing listens there."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(HTTP2_PREFACE + HTTP2_PING)
        frames, buf = [], b""
        try:
            while True:
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    size = int.from_bytes(buf[:3], "big")
                    frames.append((buf[3], buf[4], buf[9:9 + size]))
                    buf = buf[9 + size:]
                if frames and frames[0][0] != 0x4:  # the first frame of a server is its SETTINGS
                    return False
                if any(kind == 0x6 and flags & 0x1 and data == HTTP2_PING[9:] for kind, flags, data in frames):
                    return True
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
        except OSError:  # a timeout: nothing (more) answered
            return False


STARTED: dict[str, bool] = {"local": False, "joined": False}  # what `connect` did, for `disconnect`
KEPT = [0]  # how many `kept` blocks are open: `disconnect` waits for the last one to end


def connect(address: str | None, verbose: bool = True) -> None:
    """Join the cluster at `address` (already resolved), or start a local instance on 127.0.0.1 (nothing when
    Ray is already initialized in this process). Not verbose: Ray and Tune log warnings and errors only (no
    INFO lines such as "Started a local Ray instance")."""
    import logging

    import ray

    level = logging.INFO if verbose else logging.WARNING
    if ray.is_initialized():
        return
    STARTED.update(local=address is None, joined=address is not None)
    # Ray's notice that the instance uses token authentication (a new local one's default, which raycredit keeps;
    # a `ray start` cluster's with ~/.ray/auth_token): only with -v (ray 2.60:
    # authentication_token_setup._warn_token_auth_enabled, on every ray.init)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.WARNING if verbose else logging.ERROR)
    if address is None:
        with interrupt_after(), worker_environment():
            ray.init(address="local", include_dashboard=False, log_to_driver=True, logging_level=level)
        return
    # `ray start` turns token auth on when ~/.ray/auth_token exists but ray.init(address=...) does not (ray 2.60):
    # make the driver decide the same way, or it is refused by the cluster it was pointed at.
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    with interrupt_after():
        ray.init(address=address, log_to_driver=True, logging_level=level)


@contextlib.contextmanager
def interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C pressed during the body (Ray starting or joining) until it ends, then raise it: an
    interrupted ray.init would leave a half-started instance that nothing stops, and Ray's core worker may take
    SIGINT over while it starts (a Ctrl-C then went unseen); Python's handler is put back in any case."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


# what a trial may need of the driver's environment although the name looks secret: Ray's own settings, and the
# credentials of MLflow's tracking server and of the artifact stores MLflow's clients upload checkpoints to
TRIAL_CREDENTIALS = ("RAY_", "MLFLOW_", "AWS_", "AZURE_STORAGE_", "GOOGLE_APPLICATION_CREDENTIALS")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|PRIVATE_KEY|ACCESS_KEY|AUTH", re.IGNORECASE)


@contextlib.contextmanager
def worker_environment() -> Iterator[None]:
    """Start a local Ray instance, whose processes (and so every trial's) inherit this process's environment,
    without the secrets a trial does not need (a GitHub or Hugging Face token, a database password):
    they are out of os.environ for the body."""
    held = {k: os.environ.pop(k) for k in list(os.environ)
            if SECRET_NAME.search(k) and not k.upper().startswith(TRIAL_CREDENTIALS)}
    try:
        yield
    finally:
        os.environ.update(held)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Keep what `connect` starts or joins in the body until the body ends: `disconnect` then happens once, at
    its end. A reproduction's stages share one local instance so (it takes seconds to start and to stop)."""
    KEPT[0] += 1
    try:
        yield
    finally:
        KEPT[0] -= 1
        if not KEPT[0]:
            disconnect()


def disconnect() -> None:
    """Leave the cluster `connect` joined, or stop the local instance it started (which takes seconds: say so);
    inside a `kept` block, nothing yet."""
    import signal
    import threading

    if KEPT[0]:
        return
    import ray

    if STARTED["local"]:
        print("stopping the local Ray instance", flush=True)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # more Ctrl-C: it is stopping
    try:
        if STARTED["local"] or STARTED["joined"]:
            ray.shutdown()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    STARTED.update(local=False, joined=False)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def check_trial_resources(cpus: float, gpus: float) -> None:
    """UserError when no alive node of the cluster has the CPUs or GPUs one trial asks for: Tune would wait
    for them forever."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n["Alive"]]
    for flag, want, name in (("--cpus-per-trial", cpus, "CPU"), ("--gpus-per-trial", gpus, "GPU")):
        most = max((float(r.get(name, 0.0)) for r in nodes), default=0.0)
        if want > most:
            raise UserError(f"{flag} {want:g}: no node of the Ray cluster has that many {name}s (the largest has "
                            f"{most:g}); a trial would wait forever")


def _reads(where: str, token: str) -> bool:
    try:
        return Place.of(where).read_bytes() == token.encode()
    except (OSError, UserError):
        return False


def storage_visibility(storage: str) -> dict[str, bool]:
    """On a cluster of more than one node: {node: whether it reads the file this driver writes into
    `storage` (a folder, created if missing, or object storage, with each node's own credentials)}, from a
    zero-CPU task pinned to each alive node; {} on one node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return {}
    name = f".raycredit-probe-{uuid.uuid4().hex}"
    probe = Place.of(storage) / name
    probe.write_bytes(name.encode())
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(_reads)
        refs = {f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})": task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                join(storage, name), name)
            for n in nodes}
        try:
            return dict(zip(refs, ray.get(list(refs.values()), timeout=120), strict=True))
        except ray.exceptions.GetTimeoutError:
            raise UserError(f"--storage {display(storage)}: could not check within 120 s that every node of the "
                            "cluster can read it (a node is unresponsive?)") from None
    finally:
        probe.remove()


def check_shared_storage(storage: str) -> None:
    """UserError when a multi-node cluster has nodes that cannot read `storage`: a trial moved to such a
    node would not find its checkpoint. Leaves no folder behind when it fails."""
    if is_uri(storage):
        top, existed = None, True
    else:
        top = Path(storage)
        while not top.parent.exists():
            top = top.parent
        existed = top.exists()
    try:
        seen = storage_visibility(storage)
        blind = [node for node, ok in seen.items() if not ok]
        if blind:
            nodes = f"{len(blind)} of {len(seen)} nodes cannot read it ({', '.join(blind[:3])}" + (
                ", ...)" if len(blind) > 3 else ")")
            if is_uri(storage):
                raise UserError(f"--storage {display(storage)}: {nodes}; give every node the storage's "
                                "credentials and network access")
            raise UserError(f"--storage {storage} is node-local: {nodes}; on a multi-node cluster pass a folder "
                            "that every node mounts (e.g. NFS), or object storage")
    except UserError:
        if not existed:
            shutil.rmtree(top, ignore_errors=True)
        raise
