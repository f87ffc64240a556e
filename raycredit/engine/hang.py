"""The hang watch: each trial's process beats to its sweep's heartbeat actor (`heartbeat`, run inside the trial),
and the driver's Tune callback (`HangWatch`) kills a trial whose process has stopped beating."""

from __future__ import annotations

import threading
import time

import ray
from ray import tune

from raycredit.engine.heartbeats import HEARTBEAT_S


def heartbeat(actor_name: str, trial_id: str):
    """Start a daemon thread that tells the sweep's heartbeat actor, every HEARTBEAT_S, that this trial's process
    is alive (`HangWatch`): it beats while the trial computes a long epoch or waits on a tracking
    server, and stops only when the whole process stops (SIGSTOP, native code holding Python's lock). Returns
    the thread's stop event, or None without an actor."""
    if not actor_name:
        return None
    stop = threading.Event()

    def beat() -> None:
        actor = None
        while not stop.is_set():
            try:
                actor = actor or ray.get_actor(actor_name)
                actor.beat.remote(trial_id)
            except Exception:  # the driver, and its actor, are gone or restarting: nothing to tell
                actor = None
            stop.wait(HEARTBEAT_S)

    threading.Thread(target=beat, name="raycredit-heartbeat", daemon=True).start()
    return stop


# The hang watch's limits for this driver. Tune pickles its callbacks with the experiment, and a restored
# sweep must obey the flags of the command that resumes it, so the watch reads them from here.
HANG_LIMITS = {"timeout_s": 0.0, "silent_s": 60.0}
POLL_S = 1.0  # seconds between the watch's looks at the heartbeats
DRIVER_STALL_S = 5.0  # a gap this long between two looks: this driver itself was stopped, and so may its trials


class HangWatch(tune.Callback):
    """Kills a trial whose process has stopped, so that it fails like a crashed one and Tune retries it from its
    checkpoint: a frozen worker (SIGSTOP, a debugger, native code stuck holding Python's lock). A trial whose
    main thread waits in a system call (a hung NFS read, a wedged GPU sync) while its process runs is waiting,
    not stopped: `--trial-timeout` is the tool for those.

    What counts is the trial's own heartbeat, a thread inside its process (`heartbeat`), never the
    time between its reports: a slow epoch, a long diagnostics call, a checkpoint upload or a wait on an
    unreachable tracking server keep beating. A trial is hung when its heartbeat has not advanced for
    `silent_s` seconds of this driver's time, counted per attempt from the attempt's first beat (its start-up,
    importing torch and loading data, is not counted), and never across a stretch in which this driver was
    stopped itself (SIGSTOP/SIGCONT of the whole process group, a suspended machine: every trial's clock
    restarts). With `timeout_s` > 0 a trial that has reported nothing for that long is killed too (the
    explicit --trial-timeout, whatever its heartbeat says)."""

    def __init__(self, heartbeats: str = ""):
        self.heartbeats = heartbeats  # the actor's name (a handle is not pickled with Tune's state)
        self.last: dict[str, float] = {}  # trial id -> driver time of its last report or start
        self.seen: dict[str, tuple[int | None, float, bool]] = {}  # trial id -> (beats, when they changed, armed)
        self.polled: float | None = None

    def _forget(self, trial) -> None:
        self.last[trial.trial_id] = time.monotonic()
        self.seen.pop(trial.trial_id, None)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._forget(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._forget(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = time.monotonic()

    def _beats(self) -> dict[str, int] | None:
        if not self.heartbeats:
            return None
        try:
            return ray.get(ray.get_actor(self.heartbeats).snapshot.remote(), timeout=10)
        except Exception:  # the actor is gone or slow: no evidence either way, kill nothing on it
            return None

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        if self.polled is not None and now - self.polled < POLL_S:
            return
        stalled = self.polled is not None and now - self.polled > DRIVER_STALL_S
        self.polled = now
        beats = self._beats() if HANG_LIMITS["silent_s"] > 0 else None
        for t in trials:
            if t.status != "RUNNING" or t.trial_id not in self.last:
                continue
            if stalled:  # this driver was stopped: so may the trials have been; their clocks restart
                self.last[t.trial_id] = now
                self.seen.pop(t.trial_id, None)
                continue
            why = ""
            if beats is not None:
                count = beats.get(t.trial_id)
                before = self.seen.get(t.trial_id)
                if before is None:
                    self.seen[t.trial_id] = (count, now, False)  # the attempt's baseline, not armed
                elif count != before[0]:
                    self.seen[t.trial_id] = (count, now, True)  # it beats: armed from its first beat on
                elif before[2] and now - before[1] > HANG_LIMITS["silent_s"]:
                    why = f"its process has not run for {now - before[1]:.0f} s (limit {HANG_LIMITS['silent_s']:g} s)"
            silent = now - self.last[t.trial_id]
            if not why and 0 < HANG_LIMITS["timeout_s"] < silent:
                why = f"it reported nothing for {silent:.0f} s (limit {HANG_LIMITS['timeout_s']:g} s)"
            actor = t.temporary_state.ray_actor  # Tune has no public way to fail one running trial
            if why and actor is not None:
                print(f"notice: trial {t} is hung: {why}; killed, it is retried from its checkpoint", flush=True)
                ray.kill(actor, no_restart=True)
                self._forget(t)
