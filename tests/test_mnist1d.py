"""MNIST-1D (raycredit.data.mnist1d): made by its package's generator with no network, deterministic in
data_seed, generated once into a cache that many processes may fill at once, a clear line without the package."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from raycredit import data as data_mod
from raycredit.data import load_data
from raycredit.errors import DataError
from raycredit.rules import make_config

from mlflow_checks import new_store


def cfg(folder, **over):
    return make_config({"dataset": "mnist1d", "data_dir": str(folder), "n_train": 400, "n_test": 100, **over}).data


def test_the_default_set_is_the_packages_own_split_made_without_network(tmp_path):
    """With data_seed 42 and the default sizes, the package's default dataset (make_dataset of its default
    arguments), split as it splits it; the suite's guard fails any connection beyond 127.0.0.1 meanwhile."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = load_data(make_config({"dataset": "mnist1d", "data_dir": str(tmp_path), "data_seed": 42}).data)
    ref = make_dataset(get_dataset_args())
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40) and d.in_shape == (1, 40)
    assert d.n_classes == 10 and d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    np.testing.assert_array_equal(d.x_train.numpy(), ref["x"].astype(np.float32))
    np.testing.assert_array_equal(d.y_test.numpy(), ref["y_test"])


def test_the_suites_network_guard_is_on():
    import socket

    with pytest.raises(OSError, match="tests reach 127.0.0.1 only"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1: never routed


def test_deterministic_in_data_seed_and_global_generators_untouched(tmp_path):
    import random

    np.random.seed(7)
    random.seed(7)
    expected = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    a = load_data(cfg(tmp_path / "a", data_seed=3))
    assert (np.random.rand(), random.random()) == expected  # the generator's set_seed was undone
    b = load_data(cfg(tmp_path / "b", data_seed=3))
    c = load_data(cfg(tmp_path / "b", data_seed=4))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert len(a.y_train) == 400 and len(a.y_test) == 100 and set(a.y_train.tolist()) == set(range(10))


def test_the_second_load_reads_the_cache_and_a_damaged_file_is_made_again(tmp_path, monkeypatch):
    first = load_data(cfg(tmp_path))
    [cached] = tmp_path.glob("mnist1d-*.npz")
    monkeypatch.setattr(data_mod, "_generate_mnist1d", lambda args: pytest.fail("generated twice"))
    assert torch.equal(load_data(cfg(tmp_path)).x_train, first.x_train)
    monkeypatch.undo()
    cached.write_bytes(b"not an npz")
    assert torch.equal(load_data(cfg(tmp_path)).x_train, first.x_train)
    with np.load(cached) as f:
        assert f["x"].shape == (500, 40)


def test_concurrent_first_loads_generate_once_and_read_one_set(tmp_path):
    """Four processes that need the same set at once: one generates it, the others wait and read it."""
    log = tmp_path / "generated.log"
    script = textwrap.dedent(f"""
        import hashlib, os
        from raycredit import data
        make = data._generate_mnist1d
        def counted(args):
            with open({str(log)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            return make(args)
        data._generate_mnist1d = counted
        x, y = data.mnist1d_cached(500, 5, data.Path({str(tmp_path / "cache")!r}))
        print(hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    assert len(log.read_text().splitlines()) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"] == []


def test_without_the_package_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(DataError, match=r"^dataset 'mnist1d' needs the mnist1d package: pip install mnist1d$"):
        load_data(cfg(tmp_path))


def test_an_unwritable_cache_folder_is_one_clear_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="cannot write the mnist1d cache in .*set --data-dir"):
        load_data(cfg(tmp_path / "file" / "sub"))


def test_a_runs_dataset_input_names_the_generator_and_its_version(tmp_path):
    import json
    from importlib.metadata import version

    from mlflow.tracking import MlflowClient

    from raycredit import tracking
    from raycredit.engine.bookkeeper import open_run
    from raycredit.engine.trainable import SweepSettings

    uri = new_store(tmp_path / "m.db")
    settings = SweepSettings(search="t", experiment_id=tracking.ensure_experiment(uri, "e"), tracking_uri=uri,
                             code_version="x", cpus_per_trial=1, gpus_per_trial=0)
    c = make_config({"dataset": "mnist1d", "data_dir": str(tmp_path), "n_train": 400, "n_test": 100})
    run = open_run(settings, c, c.key(), "n", load_data(c.data))
    [given] = MlflowClient(uri).get_run(run.run_id).inputs.dataset_inputs
    assert given.dataset.name == "mnist1d"
    assert json.loads(given.dataset.source)["generator"] == f"mnist1d {version('mnist1d')}"


def test_a_cache_write_that_fails_is_one_clear_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_mod.np, "savez", full)
    with pytest.raises(DataError, match="cannot write the mnist1d cache in .*No space left on device.*free space"):
        load_data(cfg(tmp_path))
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".npz", ".tmp")]
