"""Shared fixtures. Ray runs once per session, on 127.0.0.1, and is shut down by the fixture that started it."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# the suite runs several processes that each use OpenMP threads (pytest's workers, drivers, trials) on a few
# cores; OpenMP's default is to spin while it waits, which then takes the cores from the thread it waits for
# (`benchmarks/launch_cost.py --at-once 2`, docs/PERFORMANCE.md). Read as torch loads, so set before it does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TINY = dict(dataset="synthetic", n_train=512, n_test=256, input_dim=16, d=32, L=3, mlp_ratio=2.0,
            epochs=2, batch_size=64, probe_size=64, rho_dirs=8, device="cpu")


# whole modules of the system tier: every test there runs Ray, a subprocess driver, a server or a browser
SYSTEM_MODULES = {"test_cluster", "test_drivers", "test_engine", "test_ui"}
SYSTEM_FIXTURES = {"ray_session", "served_store", "mlflow_server"}


# the modules whose tests take longest (a minute or more each: kills, restarts, outages, a browser), longest first
LONGEST = ("test_reproduce", "test_s3", "test_cluster", "test_drivers", "test_hostile", "test_ui")
TIERS = ("system", "science", "unit")


def pytest_configure(config):
    """Each pytest worker computes on its share of the cores (read as torch loads, which the test modules do
    after this): two workers of torch's default two threads each on 2 cores spent about 15% more CPU-s on the
    unit tier than two of one thread. The trials set their own (`cpus_per_trial`), and so do the tests that
    compare numbers with them; the drivers and servers that tests start inherit it."""
    workers = getattr(config, "workerinput", {}).get("workercount") or getattr(config.option, "numprocesses", 0) or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


def pytest_collection_modifyitems(config, items):
    """Each test's tier (pyproject.toml's markers): `science` and `system` where a test says so, `system` for
    the modules and fixtures above, `unit` otherwise. Then the longest first (the modules above, the rest of the
    system tier, science, unit): the workers (pytest-xdist, given at most two tests ahead by addopts'
    --maxschedchunk) take the next test in this order whenever one ends, so the short unit tests even out
    their ends. Each worker collects and sorts, xdist checks that they agree."""
    def module(item) -> str:
        return item.module.__name__.rsplit(".", 1)[-1] if item.module else ""

    for item in items:
        if item.get_closest_marker("science") or item.get_closest_marker("system"):
            continue
        if module(item) in SYSTEM_MODULES or SYSTEM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)
        else:
            item.add_marker(pytest.mark.unit)

    def rank(item) -> tuple[int, int]:
        tier = next(i for i, t in enumerate(TIERS) if item.get_closest_marker(t))
        return tier, LONGEST.index(module(item)) if module(item) in LONGEST else len(LONGEST)

    items.sort(key=rank)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing in a test's own process connects beyond 127.0.0.1: datasets are made or shipped, never fetched
    (README). Stream connections only; a UDP connect sends nothing (Ray uses one to find this host's address)."""
    real = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM \
                and address[0] not in LOOPBACK:
            raise OSError(f"this test tried to connect to {address[0]}: tests reach 127.0.0.1 only")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def tiny():
    """Flat dict of a fast config; tests override what they need."""
    return dict(TINY)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for all engine tests: 1 CPU and one logical GPU (no CUDA needed). One CPU runs one
    trial at a time where a test asks for a whole one: each trial process imports torch, MLflow and Tune (about
    5 CPU-s, the suite's largest cost), and the trials of a sweep then share one process (`reuse_actors`). The
    tests of concurrency ask for fractions of it."""
    import ray

    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def served_store(tmp_path_factory):
    """(URL, SQLite file) of a real `mlflow server` on 127.0.0.1 serving that file, in its own process group,
    stopped (that group only) at the end of the session (each test uses its own experiments); one worker
    process, which starts faster on 2 cores."""
    import sys

    from ports import free_port, server

    tmp_path = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    db = tmp_path / "server.db"
    with server([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                 "--backend-store-uri", f"sqlite:///{db}",
                 "--artifacts-destination", str(tmp_path / "server_artifacts"), "--workers", "1"], port,
                tmp_path / "mlflow_server.log"):
        yield f"http://127.0.0.1:{port}", db


@pytest.fixture
def mlflow_server(served_store):
    """The URL of the session's `mlflow server` (`served_store`)."""
    return served_store[0]
