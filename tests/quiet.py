"""What an entry point prints as a process: no line a user cannot act on (a warning, a traceback)."""

import re

NOISE = re.compile(r"Warning\b|\bWARNING\b|Traceback \(most recent call last\)|DeprecationWarning")


def assert_quiet(*texts: str) -> None:
    """No warning or traceback line in the outputs of a run that succeeded (stdout and stderr); the message
    shows each noisy line with what follows it (a traceback's frames)."""
    lines = [line for text in texts for line in text.splitlines()]
    noisy = [i for i, line in enumerate(lines) if NOISE.search(line)]
    assert not noisy, "\n".join("\n".join(lines[i:i + 25]) for i in noisy[:3])
