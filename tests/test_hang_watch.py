"""The hang watch (raycredit.engine.sweep.HangWatch) judges a trial by the heartbeat of its process, never by the
time between its reports: on fake trials with a controlled clock and heartbeat counts, and the heartbeat thread
against a real actor while the trial's main thread is busy or blocked."""

import threading
import time
from types import SimpleNamespace

import pytest

from raycredit.engine import hang as sweep


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def watch(monkeypatch):
    """(watch, clock, beats, killed): a watch over one RUNNING fake trial, whose heartbeat count the test sets."""
    clock, beats, killed = Clock(), {}, []
    monkeypatch.setattr(sweep.time, "monotonic", clock)
    monkeypatch.setitem(sweep.HANG_LIMITS, "silent_s", 60.0)
    monkeypatch.setitem(sweep.HANG_LIMITS, "timeout_s", 0.0)
    monkeypatch.setattr(sweep.ray, "kill", lambda actor, no_restart: killed.append(actor))
    w = sweep.HangWatch("beats")
    monkeypatch.setattr(w, "_beats", lambda: dict(beats))
    trial = SimpleNamespace(trial_id="t1", status="RUNNING", temporary_state=SimpleNamespace(ray_actor="actor-1"))
    w.on_trial_start(0, [trial], trial)

    def tick(seconds: float, beat: bool) -> None:
        """`seconds` of driver time in steps of one, the trial beating once a step when `beat`."""
        for _ in range(int(seconds)):
            clock.now += 1.0
            if beat:
                beats["t1"] = beats.get("t1", 0) + 1
            w.on_step_begin(0, [trial])

    return w, tick, beats, killed, trial


def test_a_slow_epoch_that_keeps_beating_is_not_killed(watch):
    """Cheap epochs (a report a second) and then a diagnostics epoch of 10 minutes, or a wait on an unreachable
    tracking server: no report for 600 s, but the process beats, so it is not hung."""
    w, tick, beats, killed, trial = watch
    for _ in range(5):
        tick(1, True)
        w.on_trial_result(0, [trial], trial, {})
    tick(600, True)
    assert killed == []


def test_a_stopped_process_is_killed_once_and_its_retry_gets_a_fresh_start(watch):
    w, tick, beats, killed, trial = watch
    tick(5, True)
    tick(59, False)
    assert killed == []
    tick(3, False)
    assert killed == ["actor-1"]
    # the retry's start-up (importing torch, loading data) beats nothing yet: not counted against it
    w.on_trial_start(0, [trial], trial)
    tick(300, False)
    assert killed == ["actor-1"]
    tick(1, True)  # its first beat arms the watch again
    tick(61, False)
    assert killed == ["actor-1", "actor-1"]


def test_a_driver_stopped_with_its_trials_kills_nothing_when_continued(watch):
    """SIGSTOP/SIGCONT of the whole process group: the driver's own clock jumps, and every trial's restarts."""
    w, tick, beats, killed, trial = watch
    tick(5, True)
    sweep.time.monotonic.now += 3600  # an hour stopped: no beats, no looks
    tick(1, False)
    tick(30, True)
    assert killed == []


def test_without_heartbeats_nothing_is_killed_on_them_and_the_explicit_timeout_still_holds(watch, monkeypatch):
    w, tick, beats, killed, trial = watch
    monkeypatch.setattr(w, "_beats", lambda: None)  # the actor is unreachable: no evidence
    tick(120, False)
    assert killed == []
    monkeypatch.setitem(sweep.HANG_LIMITS, "timeout_s", 30.0)
    tick(1, False)
    assert killed == ["actor-1"]


def test_the_heartbeat_thread_beats_while_the_trial_is_busy_or_blocked(ray_session):
    """A real actor and the trial's own heartbeat thread: it beats while the main thread holds the CPU in a
    Python loop or blocks in a call (a tracking server's retries), and stops when told to."""
    import ray

    from raycredit.engine.hang import HEARTBEAT_S, heartbeat
    from raycredit.engine.heartbeats import heartbeat_actor

    actor = heartbeat_actor("raycredit-heartbeats-test")
    stop = heartbeat("raycredit-heartbeats-test", "trial-x")
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5 * HEARTBEAT_S:  # busy in Python
            sum(range(1000))
        threading.Event().wait(2.5 * HEARTBEAT_S)  # blocked
        busy = ray.get(actor.snapshot.remote())["trial-x"]
        assert busy >= 3
    finally:
        stop.set()
    time.sleep(2 * HEARTBEAT_S)
    after = ray.get(actor.snapshot.remote())["trial-x"]
    time.sleep(2 * HEARTBEAT_S)
    assert ray.get(actor.snapshot.remote())["trial-x"] == after
    ray.kill(actor)


def test_a_worker_ended_by_sigterm_inside_a_gc_callback_prints_no_traceback():
    """Ray's SIGTERM handler raises SystemExit wherever the worker is; where Python cannot raise it (a weakref
    callback) it would print a traceback into the driver's output. That one is dropped; any other unraisable
    exception still reaches the hook that was there before."""
    import sys

    from raycredit.engine.trainable import quiet_sigterm_exit

    seen, saved = [], sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        quiet_sigterm_exit()
        quiet_sigterm_exit()  # a reused worker's next trial installs nothing more
        for exc in (SystemExit(1), ValueError("x")):
            sys.unraisablehook(SimpleNamespace(exc_value=exc))
    finally:
        sys.unraisablehook = saved
    assert [type(u.exc_value) for u in seen] == [ValueError]
