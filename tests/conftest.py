"""Shared fixtures. Ray runs once per session, on 127.0.0.1, and is shut down by the fixture that started it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

TINY = dict(dataset="synthetic", n_train=512, n_test=256, input_dim=16, d=32, L=3, mlp_ratio=2.0,
            epochs=2, batch_size=64, probe_size=64, rho_dirs=8, device="cpu")


@pytest.fixture
def tiny():
    """Flat dict of a fast config; tests override what they need."""
    return dict(TINY)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for all engine tests: 2 CPUs and one logical GPU (no CUDA needed)."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
