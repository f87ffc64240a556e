"""A tiny CIFAR-10 written in the real on-disk format (cifar-10-batches-py pickles)."""

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
