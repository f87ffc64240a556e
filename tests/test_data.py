import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from raycredit.config import Config
from raycredit.data import CIFAR_STATS, check_data, load_data
from raycredit.errors import DataError

from cifar_fixture import write_cifar10


def data_cfg(**kw):
    return Config.from_dict(kw).data


def test_synthetic_is_deterministic_balanced_and_learnable_by_its_knobs():
    a = load_data(data_cfg(n_train=3000, n_test=500, alpha=1.0))
    b = load_data(data_cfg(n_train=3000, n_test=500, alpha=1.0))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (3000, 8) and a.n_classes == 10
    counts = torch.bincount(a.y_train, minlength=10).float() / 3000
    assert counts.min() > 0.03, counts
    c = load_data(data_cfg(n_train=3000, n_test=500, alpha=0.0))
    assert not torch.equal(a.y_train, c.y_train)
    d = load_data(data_cfg(n_train=3000, n_test=500, data_seed=1))
    assert not torch.equal(a.x_train, d.x_train)


def test_teacher_gain_changes_labels_only_through_the_nonlinearity():
    """At alpha=0 the teacher is linear: its gain rescales every score alike, so argmax labels do not change."""
    assert torch.equal(load_data(data_cfg(alpha=0.0, teacher_gain=1.0)).y_train,
                       load_data(data_cfg(alpha=0.0, teacher_gain=3.0)).y_train)
    assert not torch.equal(load_data(data_cfg(alpha=1.0, teacher_gain=1.0)).y_train,
                           load_data(data_cfg(alpha=1.0, teacher_gain=3.0)).y_train)


def test_digits_is_the_shipped_dataset_as_images():
    data = load_data(data_cfg(dataset="digits"))
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64) and data.shape == (1, 8, 8)
    assert data.n_classes == 10 and set(data.y_train.tolist()) == set(range(10))
    assert abs(data.x_train.mean().item()) < 1e-5 and data.x_train.std().item() == pytest.approx(1.0, abs=1e-4)
    again = load_data(data_cfg(dataset="digits"))
    assert torch.equal(data.x_test, again.x_test)
    assert not torch.equal(load_data(data_cfg(dataset="digits", data_seed=1)).y_test, data.y_test)
    sub = load_data(data_cfg(dataset="digits", n_train=100, n_test=50))
    assert len(sub.y_train) == 100 and len(sub.y_test) == 50


def test_digits_without_scikit_learn_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=r"needs scikit-learn: pip install 'raycredit\[digits\]'"):
        load_data(data_cfg(dataset="digits"))


def test_cifar_fixture_loads_through_torchvision(tmp_path, monkeypatch):
    lists = write_cifar10(tmp_path, per_batch=20)
    for name, value in lists.items():
        monkeypatch.setattr(torchvision.datasets.CIFAR10, name, value)
    data = load_data(data_cfg(dataset="cifar10", data_dir=str(tmp_path)))
    assert data.x_train.shape == (100, 3072) and data.x_test.shape == (20, 3072)
    assert data.n_classes == 10 and data.y_train.dtype == torch.int64
    # the first pixel of the first image, normalized with CIFAR-10's red-channel statistics
    raw = torchvision.datasets.CIFAR10(str(tmp_path), train=True).data[0, 0, 0, 0]
    mean, std = CIFAR_STATS["cifar10"][0][0], CIFAR_STATS["cifar10"][1][0]
    assert data.x_train[0, 0].item() == pytest.approx((raw / 255 - mean) / std, rel=1e-5)
    sub = load_data(data_cfg(dataset="cifar10", data_dir=str(tmp_path), n_train=30, n_test=10))
    assert len(sub.y_train) == 30 and len(sub.y_test) == 10


def test_truncated_cifar_file_is_a_clear_error(tmp_path, monkeypatch):
    lists = write_cifar10(tmp_path, per_batch=20)
    for name, value in lists.items():
        monkeypatch.setattr(torchvision.datasets.CIFAR10, name, value)
    f = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError, match="not found or corrupted"):
        load_data(data_cfg(dataset="cifar10", data_dir=str(tmp_path)))


@pytest.mark.parametrize("exists", [False, True])
@pytest.mark.system
def test_missing_cifar_exits_2_with_one_line(tmp_path, exists):
    root = tmp_path / "cifar"
    if exists:
        root.mkdir()
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "raycredit.cli", "train", "--dataset", "cifar10", "--data-dir",
                        str(root), "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--download" in lines[0] and str(root) in lines[0], p.stderr
    assert not out.exists()


def write_npz(path, **over):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.normal(size=(40, 3, 4)).astype(np.float32), y_train=rng.integers(0, 3, 40),
                  x_test=rng.normal(size=(10, 3, 4)).astype(np.float32), y_test=rng.integers(0, 3, 10))
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_npz_loads_and_flattens(tmp_path):
    d = load_data(data_cfg(dataset="npz", data_dir=str(write_npz(tmp_path / "a.npz"))))
    assert d.x_train.shape == (40, 12) and d.n_classes == 3


@pytest.mark.parametrize("over, words", [
    ({"y_test": None}, "lacks y_test"),
    ({"y_train": np.zeros(39, dtype=np.int64)}, "x_train must be"),
    ({"x_test": np.zeros((10, 5), dtype=np.float32)}, "features"),
    ({"y_train": np.full(40, -1)}, "labels must be"),
    ({"y_train": np.zeros(40, dtype=np.float32)}, "integer"),
    ({"x_train": np.full((40, 12), np.nan, dtype=np.float32)}, "NaN"),
])
def test_npz_shape_and_label_errors(tmp_path, over, words):
    path = write_npz(tmp_path / "b.npz", **over)
    with pytest.raises(DataError, match=words):
        load_data(data_cfg(dataset="npz", data_dir=str(path)))


def test_npz_missing_and_garbage_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        check_data(data_cfg(dataset="npz", data_dir=str(tmp_path / "none.npz")))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        check_data(data_cfg(dataset="npz", data_dir=str(tmp_path / "junk.npz")))
