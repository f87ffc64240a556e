"""What an entry point prints as a process: no line a user cannot act on (a warning, a traceback)."""

import re
from pathlib import Path

NOISE = re.compile(r"Warning\b|\bWARNING\b|Traceback \(most recent call last\)|DeprecationWarning")


def assert_quiet(*texts: str) -> None:
    """No warning or traceback line in the outputs of a run that succeeded (stdout and stderr); the message
    shows each noisy line with what follows it (a traceback's frames)."""
    lines = [line for text in texts for line in text.splitlines()]
    noisy = [i for i, line in enumerate(lines) if NOISE.search(line)]
    assert not noisy, "\n".join("\n".join(lines[i:i + 25]) for i in noisy[:3])


def leaks(secret: str, outputs: dict[str, str], root: Path, objects: dict[str, bytes]) -> list[str]:
    """Where `secret` shows: the named outputs, the files of the Ray session under root/rt, the objects (by key)
    and the store's files root/mlflow.db*."""
    raw = secret.encode()
    found = [name for name, text in outputs.items() if secret in text]
    found += [str(f) for f in (root / "rt").rglob("*") if f.is_file() and not f.is_symlink() and raw in f.read_bytes()]
    found += [f"object {k}" for k, data in objects.items() if raw in data]
    return found + [f.name for f in root.glob("mlflow.db*") if raw in f.read_bytes()]
