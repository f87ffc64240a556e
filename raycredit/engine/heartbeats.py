"""The sweep's heartbeat actor, which counts the heartbeats of its trials' processes (`hang`).

A module of its own that imports Ray alone: the actor's worker process imports the module that defines its
class (and its package, whose names load lazily), and the hang watch's would load torch for an actor that only
counts (seconds of CPU at the start of every sweep).
"""

from __future__ import annotations

from collections import Counter

import ray

HEARTBEAT_S = 1.0  # seconds between a trial's heartbeats (`raycredit.engine.hang.heartbeat`)
# the least --hang-after: a busy machine can delay a few beats. Here, not in `hang`, because the driver checks
# its flags before it imports Tune (which `hang` does: a second of CPU on a refused command)
MIN_HANG_AFTER_S = 10.0


@ray.remote(num_cpus=0)
class Heartbeats:
    """Counts the heartbeats of each trial's process (`raycredit.engine.hang.heartbeat`), by trial id: one per
    sweep driver."""

    def __init__(self):
        self.counts: Counter = Counter()

    def beat(self, trial_id: str) -> None:
        self.counts[trial_id] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def heartbeat_actor(name: str):
    """The sweep's heartbeat actor, created by its driver, which holds the handle for as long as the sweep runs
    (a named actor without a handle is ended by Ray)."""
    return Heartbeats.options(name=name, get_if_exists=True, lifetime=None).remote()
