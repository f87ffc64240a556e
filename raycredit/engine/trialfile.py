"""A trial's checkpoint file in the sweep's storage (`raycredit.storage.Place`: a folder, or object storage):
read (what cannot be read is set aside, and the trial starts over), written whole, and its folder made.

The file is `<storage>/<sweep>/checkpoints/<trial key>/checkpoint.pt`: a one-config trial's checkpoint, or a
population's {"population": {member key: checkpoint}} of its members still training.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from raycredit.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, run_checkpoint_path, save_checkpoint
from raycredit.errors import UserError
from raycredit.storage import Place
from raycredit.tracking import KEPT_ARTIFACT, TrialRun

SET_ASIDE_TAG = "raycredit.checkpoint_set_aside"  # where an unreadable trial checkpoint was moved


def write_checkpoint(place: Place, members: dict[str, dict], population: bool) -> None:
    """Replace the trial's checkpoint file at `place` (`checkpoint.save_checkpoint`: atomically) with a one-config
    trial's checkpoint itself, or a population's members'."""
    save_checkpoint({"format": CHECKPOINT_FORMAT, "population": members} if population
                    else next(iter(members.values())), place)


def read_checkpoint(place: Place, key: str, runs: list[TrialRun]) -> dict[str, dict]:
    """{member key: checkpoint} of the trial's file at `place` ({} when there is none); `key` names the member of
    a one-config trial. An unreadable file (truncated by a full disk or a crash, corrupt), or one that is not
    this user's own regular file (a symlink, another user's file in a shared folder), is moved to
    <checkpoints>/set_aside/ (a symlink itself, never its target), noted on `runs` and in the trial's log, and
    the trial starts over from scratch: its epochs are recomputed (the runs keep the ones they logged)."""
    if not place.exists():
        return {}
    try:
        ckpt = load_checkpoint(place, place.read_bytes())
    except UserError as e:
        # beside the trials' folders, not in its own (which goes once the trial finishes)
        aside = set_aside(place, place.parent.parent, f"{place.parent.name}-{place.name}.corrupt")
        print(f"warning: {e}; set aside as {aside}, the trial starts over from scratch", flush=True)
        for run in runs:
            run.set_tags({SET_ASIDE_TAG: str(aside)})
        return {}
    return ckpt["population"] if "population" in ckpt else {key: ckpt}


def set_aside(place: Place, root: Place, name: str) -> Place:
    """Move `place` (locally the entry itself, never a symlink's target) to <root>/set_aside/<name>-<time>, kept
    to inspect; returns where it went."""
    aside = root / "set_aside" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    place.move(aside)
    return aside


def own_folder(place: Place) -> None:
    """Make the trial's local folder, as a directory of its own: a symlink planted in its place in a shared
    folder is moved to <checkpoints>/set_aside/ (the link, never its target) with a warning, not written
    through. An object store has no folders to make and no links."""
    folder = place.local
    if folder is None:
        return
    if folder.is_symlink():
        aside = set_aside(place, place.parent, f"{folder.name}.symlink")
        print(f"warning: {folder} was a symbolic link (to {os.readlink(aside.path)}), which raycredit never makes; "
              f"set aside as {aside}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)


def keep_checkpoint(folder: Path, epoch: int, ckpt: dict, run: TrialRun) -> None:
    """A kept epoch (train.keep_epochs): its checkpoint, written under the local `folder` and logged to the run
    as checkpoint/epoch-<e>/."""
    path = run_checkpoint_path(folder, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, path)
    run.log_checkpoint(path, KEPT_ARTIFACT.format(epoch=epoch))
    path.unlink()
