"""Datasets, held whole as tensors on the trial's device.

`load_data(cfg, device)` returns a `Data` with flattened float32 inputs (their
per-example shape kept in `Data.shape`, for the image architectures) and int64
labels, or float32 target vectors for toy_lq (whose loss is then the quadratic
cost, `rules.base.task_loss`); mini-batches are index_select-ed there, never
copied per batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raycredit.config import DataConfig
from raycredit.errors import DataError

SYNTHETIC_DEFAULT_SIZES = (10_000, 2_000)
CIFAR_STATS = {  # per-channel mean, std of the training images, in [0, 1] pixel units
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    shape: tuple[int, ...] | None = None  # per-example input shape before flattening, e.g. (3, 32, 32)
    provenance: dict | None = None  # what made the data besides its config (a generator's version), for its record

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.shape or (self.in_dim,)

    def to(self, device) -> Data:
        return Data(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)), self.n_classes,
                    self.shape, self.provenance)


def phi(z: torch.Tensor, alpha: float) -> torch.Tensor:
    return (1 - alpha) * z + alpha * torch.tanh(z)


def synthetic(cfg: DataConfig) -> Data:
    """Teacher-student task: a random phi_alpha teacher labels Gaussian inputs into C classes."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    n_train = cfg.n_train or SYNTHETIC_DEFAULT_SIZES[0]
    n_test = cfg.n_test or SYNTHETIC_DEFAULT_SIZES[1]
    x = torch.randn(n_train + n_test, cfg.input_dim, generator=g)
    h, width = x, cfg.input_dim
    for _ in range(cfg.teacher_depth):
        w = torch.randn(width, cfg.teacher_width, generator=g) * (cfg.teacher_gain / width**0.5)
        h, width = phi(h @ w, cfg.alpha), cfg.teacher_width
    z = h @ (torch.randn(width, cfg.n_classes, generator=g) / width**0.5)
    # standardize each class score so that argmax gives roughly balanced classes
    z = (z - z.mean(0)) / z.std(0)
    y = z.argmax(1)
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], cfg.n_classes)


def toy_lq(cfg: DataConfig) -> Data:
    """The linear-quadratic toy (the reference study's "Toy LQ"): initial states x ~ N(0, I) of input_dim, each to be
    driven to the target y = T x + noise of n_classes dimensions, T a fixed random linear map (entries ~ N(0, 1 /
    input_dim)), the noise ~ N(0, lq_noise^2) per entry.
    With the quadratic cost 1/2 ||z - y||^2 and a linear student (block_ln and out_ln off, student_activation
    teacher at alpha 0: h_l = h_{l-1} + W2 W1 h_{l-1}) it is a linear-quadratic control problem over the
    layers, whose costate is the true gradient dJ/dh_l: cos/l{i} is the costate cosine."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    n_train = cfg.n_train or SYNTHETIC_DEFAULT_SIZES[0]
    n_test = cfg.n_test or SYNTHETIC_DEFAULT_SIZES[1]
    x = torch.randn(n_train + n_test, cfg.input_dim, generator=g)
    y = x @ (torch.randn(cfg.input_dim, cfg.n_classes, generator=g) / cfg.input_dim**0.5)
    y = y + cfg.lq_noise * torch.randn(y.shape, generator=g)
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], cfg.n_classes)


DIGITS_TEST = 360  # of scikit-learn's 1797 digits: the 1437/360 (80/20) split


def digits(cfg: DataConfig) -> Data:
    """scikit-learn's 8x8 handwritten digits (shipped inside scikit-learn: no download), shaped (1, 8, 8).

    A fixed shuffle by `data_seed` splits them 1437/360; pixels are scaled by the training set's mean and
    std (one scalar each).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("dataset 'digits' needs scikit-learn: pip install 'raycredit[digits]'") from None
    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.data_seed))
    x, y = x[order], y[order]
    n_train = len(y) - DIGITS_TEST
    mean, std = x[:n_train].mean(), x[:n_train].std()
    x = (x - mean) / std
    return _subset(Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10, (1, 8, 8)), cfg)


MNIST1D_SIZES = (4000, 1000)  # the package's default set: 5000 examples, 80 % for training
CACHE_FORMAT = 1  # bump when the cached file's layout changes


def mnist1d(cfg: DataConfig) -> Data:
    """MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024): 40-sample 1-D signals
    of 10 classes, shaped (1, 40), made by the `mnist1d` package's own generator from the templates shipped in it
    (never its download path) with its default arguments except the number of examples (n_train + n_test; 0 = its
    4000 + 1000), the seed (`data_seed`; 42 is the package's default set) and the split, taken here: the first
    n_train examples of its shuffled set train, the next n_test test (with the defaults exactly its own split).
    Generated once per argument set and package version into a cache file (`mnist1d_cached`)."""
    from importlib.metadata import version

    n_train, n_test = cfg.n_train or MNIST1D_SIZES[0], cfg.n_test or MNIST1D_SIZES[1]
    x, y = mnist1d_cached(n_train + n_test, cfg.data_seed, cache_dir(cfg))
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    return Data(x[:n_train], y[:n_train], x[n_train:n_train + n_test], y[n_train:n_train + n_test], 10, (1, 40),
                {"generator": f"mnist1d {version('mnist1d')}"})


def cache_dir(cfg: DataConfig) -> Path:
    """Where generated datasets are kept: data_dir, else $XDG_CACHE_HOME/raycredit (~/.cache/raycredit)."""
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raycredit"


def mnist1d_args(n: int, seed: int):
    """The generator's arguments: its defaults, n examples (rounded up to a multiple of the 10 classes, its
    unit), one split holding all of them, and `seed`."""
    try:
        from mnist1d.data import get_dataset_args
    except ImportError:
        raise DataError("dataset 'mnist1d' needs the mnist1d package: pip install mnist1d") from None
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = -(-n // 10) * 10, 1.0, seed
    return args


def mnist1d_cached(n: int, seed: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (n', 40), y int64 (n',)) of the generator, read from folder/mnist1d-<hash>.npz, the hash of
    the generator's arguments, the package's version and CACHE_FORMAT. The first process to need a file makes
    it under an exclusive `flock` (others wait for it, then read it) and renames it into place whole; a file
    that is not the arrays it should be is made again."""
    import fcntl
    from importlib.metadata import version

    from raycredit.knobs import stable_hash

    args = mnist1d_args(n, seed)
    fields = {k: v for k, v in vars(args).items() if k != "url"}
    path = folder / f"mnist1d-{stable_hash([fields, version('mnist1d'), CACHE_FORMAT])}.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise DataError(f"cannot write the mnist1d cache in {folder} ({e.strerror}): set --data-dir to a "
                        "writable folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        arrays = _read_mnist1d(path, args.num_samples)
        if arrays is None:
            arrays = _generate_mnist1d(args)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    np.savez(f, x=arrays[0], y=arrays[1])
                os.replace(tmp, path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise DataError(f"cannot write the mnist1d cache in {folder} ({e.strerror}): free space there or "
                                "set --data-dir to another folder") from None
        return arrays
    finally:
        os.close(fd)


def _read_mnist1d(path: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # as in `npz`
            x, y = f["x"], f["y"]
    except (OSError, KeyError, ValueError):
        return None
    ok = (x.shape == (n, 40) and x.dtype == np.float32 and y.shape == (n,) and y.dtype == np.int64
          and np.isfinite(x).all() and y.min() >= 0 and y.max() < 10)
    return (x, y) if ok else None


def _generate_mnist1d(args) -> tuple[np.ndarray, np.ndarray]:
    """The generator's set; it seeds NumPy's and Python's global generators, whose states are put back."""
    import random

    from mnist1d.data import make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return d["x"].astype(np.float32), d["y"].astype(np.int64)


def _subset(d: Data, cfg: DataConfig) -> Data:
    n_tr = cfg.n_train or len(d.y_train)
    n_te = cfg.n_test or len(d.y_test)
    return Data(d.x_train[:n_tr], d.y_train[:n_tr], d.x_test[:n_te], d.y_test[:n_te], d.n_classes, d.shape)


def cifar(cfg: DataConfig) -> Data:
    """CIFAR-10/100 through torchvision from cfg.data_dir (download only when cfg.download)."""
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[cfg.dataset]
    root = Path(cfg.data_dir).expanduser().resolve()
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError as e:
        if "not found" in str(e).lower() or "corrupted" in str(e).lower():
            hint = "" if cfg.download else " (pass --download to fetch it)"
            raise DataError(f"{cfg.dataset} not found or corrupted under {root}{hint}") from None
        raise DataError(f"{cfg.dataset} under {root}: {e}") from None
    except OSError as e:
        raise DataError(f"{cfg.dataset} under {root}: {e}") from None
    except Exception as e:  # truncated pickles raise UnpicklingError, EOFError, ValueError
        raise DataError(f"{cfg.dataset} under {root} is unreadable: {type(e).__name__}: {e}") from None
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in CIFAR_STATS[cfg.dataset])

    def prep(ds):
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float().div_(255)
        return ((x - mean) / std).flatten(1), torch.as_tensor(ds.targets, dtype=torch.int64)

    n_classes = len(train.classes)
    return _subset(Data(*prep(train), *prep(test), n_classes, (3, 32, 32)), cfg)


def npz(cfg: DataConfig) -> Data:
    """A user's .npz with x_train, y_train, x_test, y_test; labels must be integers in [0, C)."""
    path = Path(cfg.data_dir).expanduser()
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        # the file opened here, not by np.load: numpy 2 leaves its own handle open when a file that starts like
        # a zip archive is not one (np.load hands the handle to NpzFile, whose constructor then raises)
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"cannot read npz file {path}: {type(e).__name__}: {e}") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DataError(f"npz file {path} lacks {', '.join(missing)} (has {', '.join(arrays) or 'nothing'})")
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
            raise DataError(
                f"npz file {path}: x_{split} must be (N, ...) and y_{split} (N,) with N > 0, "
                f"got {x.shape} and {y.shape}"
            )
        if (not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating)
                or not np.issubdtype(y.dtype, np.integer)):
            raise DataError(f"npz file {path}: x_{split} must be real numbers and y_{split} integers, "
                            f"got {x.dtype} and {y.dtype}")
        if x[0].size == 0:
            raise DataError(f"npz file {path}: x_{split} has no features (examples of shape {x.shape[1:]})")
        out.append((torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)))
    (xtr, ytr), (xte, yte) = out
    if xtr.shape[1] != xte.shape[1]:
        raise DataError(f"npz file {path}: x_train has {xtr.shape[1]} features, x_test {xte.shape[1]}")
    n_classes = int(max(ytr.max(), yte.max())) + 1
    if min(ytr.min(), yte.min()) < 0 or n_classes < 2:
        raise DataError(f"npz file {path}: labels must be integers in [0, C) with C >= 2")
    if not (torch.isfinite(xtr).all() and torch.isfinite(xte).all()):
        raise DataError(f"npz file {path}: inputs contain NaN or inf")
    unseen = sorted(set(yte.unique().tolist()) - set(ytr.unique().tolist()))
    if unseen:
        raise DataError(f"npz file {path}: test labels {', '.join(map(str, unseen[:5]))}"
                        f"{', ...' if len(unseen) > 5 else ''} never occur in y_train (no run can learn them)")
    return _subset(Data(xtr, ytr, xte, yte, n_classes, tuple(arrays["x_train"].shape[1:])), cfg)


LOADERS = {"synthetic": synthetic, "digits": digits, "mnist1d": mnist1d, "cifar10": cifar, "cifar100": cifar,
           "npz": npz, "toy_lq": toy_lq}


def load_data(cfg: DataConfig, device: torch.device | str = "cpu") -> Data:
    return LOADERS[cfg.dataset](cfg).to(device)


def check_data(cfg: DataConfig) -> int:
    """Raise DataError now if the dataset cannot be loaded (run before any trial starts); its number of
    classes."""
    if cfg.dataset in ("cifar10", "cifar100"):
        root = Path(cfg.data_dir).expanduser()
        if cfg.download:
            os.makedirs(root, exist_ok=True)
        elif not root.is_dir():
            raise DataError(f"data dir {root} does not exist (pass --download to fetch {cfg.dataset} into it)")
    return LOADERS[cfg.dataset](cfg).n_classes
