"""How a sweep stops on Ctrl-C: cleanly, with every run it left RUNNING marked KILLED and exit code 130."""

from __future__ import annotations

import contextlib
import signal

INTERRUPTED = 130  # the shell's code for a Ctrl-C


@contextlib.contextmanager
def sweep_interrupts(uri: str, experiment_id: str, keys: list[str] | None):
    """Run a sweep so that any number of Ctrl-C presses ends it cleanly.

    Tune takes the first Ctrl-C (it saves its state and returns); a second one raises KeyboardInterrupt out
    of Tuner.fit. Then the runs of this sweep left RUNNING are marked KILLED, further Ctrl-C presses are
    ignored while that happens, and the search exits 130 with the resume hint instead of a traceback.
    keys: the sweep's run keys, or None for an Optuna search (whose trials are drawn: its RUNNING runs).
    """
    try:
        yield
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            from raycredit import tracking

            keys = tracking.running_keys(uri, experiment_id) if keys is None else keys
            tracking.close_stale_runs(uri, experiment_id, dict.fromkeys(keys, "KILLED"))
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
