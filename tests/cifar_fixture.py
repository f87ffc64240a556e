"""Tiny CIFAR-10 / CIFAR-100 written in the real on-disk formats (the python-version pickles)."""

import hashlib
import pickle
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> dict:
    """Write 5 train batches, a test batch and batches.meta; return torchvision's md5 lists for them."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj) -> list[str]:
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    def batch(name: str):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        return dump(name, {"batch_label": name, "labels": labels, "data": data, "filenames": []})

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    test = [batch("test_batch")]
    meta_name, meta_md5 = dump("batches.meta", {"label_names": LABELS, "num_cases_per_batch": per_batch})
    return {"train_list": train, "test_list": test,
            "meta": {"filename": meta_name, "key": "label_names", "md5": meta_md5}}


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> dict:
    """Write cifar-100-python/{train,test,meta}; return torchvision's md5 lists for them."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj) -> list[str]:
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    def split(name: str, n: int):
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        return dump(name, {"filenames": [], "batch_label": name, "fine_labels": fine,
                           "coarse_labels": [f // 5 for f in fine],
                           "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)})

    train, test = split("train", n_train), split("test", n_test)
    meta_name, meta_md5 = dump("meta", {"fine_label_names": [f"class{i}" for i in range(100)],
                                        "coarse_label_names": [f"super{i}" for i in range(20)]})
    return {"train_list": [train], "test_list": [test],
            "meta": {"filename": meta_name, "key": "fine_label_names", "md5": meta_md5}}
