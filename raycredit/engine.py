"""All Ray calls: connecting to a cluster, the Tune trainable, running and resuming a sweep.

One trial = one Config = one MLflow run, or, for a population trial, several configs each with its own run.
The trainable is a thin adapter
around `train(cfg)`: it logs every epoch to its MLflow run (see
`raycredit.tracking`), reports to Tune, and every `checkpoint_every` epochs
replaces its checkpoint file `<storage>/<sweep>/checkpoints/<run key>/checkpoint.pt`
atomically. A restored, retried or moved trial resumes from that file.
A population trial (`run_trials(..., population=P)`) trains several configs
with `raycredit.population.train_population`; each still has its own run, and
the trial's one checkpoint file holds all of its unfinished members.

Re-running a grid sweep starts a new Tune run, in the same folder, over the configs without a FINISHED run:
they resume from their checkpoint files. Tune's saved state is not read
(a disk that filled mid-sweep leaves it truncated, and it is a pickle anyone who can write --storage could
plant); an Optuna search needs its searcher back and resumes with `Tuner.restore` (`check_trusted` first).

Tune's own checkpoints are not used: with `num_to_keep` Tune deletes old
checkpoints that its last experiment snapshot may still name, and a driver
killed in that window leaves trials that can never be restored (seen in
testing); keeping them all would cost one checkpoint per epoch per trial.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from raycredit.config import Config
from raycredit.disk import DiskFull
from raycredit.errors import UserError
from raycredit.rules import RULES
from raycredit.rules.base import LocalRule

# Set before ray is first imported (below, and in the functions that import more of it).
# Ray binds to the machine's address unless told otherwise; this keeps local instances on 127.0.0.1 (SPEC §11).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# the classic reporter lets the progress table show the swept knobs instead of the whole nested config
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from ray import tune  # noqa: E402  (after the environment above; the trial callbacks subclass tune.Callback)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class SweepSettings:
    """What every trial of one sweep shares."""

    search: str
    experiment_id: str
    tracking_uri: str
    code_version: str
    cpus_per_trial: float
    gpus_per_trial: float
    checkpoint_root: str = ""  # set by run_trials / run_optuna: <storage>/<sweep>/checkpoints


def resolve_address(address: str | None) -> str | None:
    """None for a new local instance; else a reachable host:port, or UserError."""
    if address in (None, "", "local"):
        return None
    if address == "auto":
        resolved = os.environ.get("RAY_ADDRESS", "")
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not resolved and current.exists():
            resolved = current.read_text().strip()
        if not resolved:
            raise UserError("--address auto: no running Ray cluster found (start one with `ray start --head`, "
                            "or omit --address for a local instance)")
    else:
        resolved = address.removeprefix("ray://") if address.startswith("ray://") else address
    host, _, port = resolved.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r}: expected host:port, 'auto' or nothing")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        reason = e.strerror or e
        raise UserError(f"--address {address!r}: cannot reach a Ray cluster at {resolved} ({reason})") from None
    return resolved


def connect(address: str | None) -> None:
    """Join the cluster at `address` (already resolved), or start a local instance on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
        return
    # `ray start` turns token auth on when ~/.ray/auth_token exists but ray.init(address=...) does not (ray 2.60):
    # make the driver decide the same way, or it is refused by the cluster it was pointed at.
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ray.init(address=address, log_to_driver=True)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def check_trial_resources(cpus: float, gpus: float) -> None:
    """UserError when no alive node of the cluster has the CPUs or GPUs one trial asks for: Tune would wait
    for them forever."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n["Alive"]]
    for flag, want, name in (("--cpus-per-trial", cpus, "CPU"), ("--gpus-per-trial", gpus, "GPU")):
        most = max((float(r.get(name, 0.0)) for r in nodes), default=0.0)
        if want > most:
            raise UserError(f"{flag} {want:g}: no node of the Ray cluster has that many {name}s (the largest has "
                            f"{most:g}); a trial would wait forever")


def _reads(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def storage_visibility(storage: str) -> dict[str, bool]:
    """On a cluster of more than one node: {node: whether it reads the file this driver writes into
    `storage`} (created if missing), from a zero-CPU task pinned to each alive node; {} on one node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return {}
    Path(storage).mkdir(parents=True, exist_ok=True)
    probe = Path(storage) / f".raycredit-probe-{uuid.uuid4().hex}"
    probe.write_text(probe.name)
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(_reads)
        refs = {f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})": task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(probe), probe.name)
            for n in nodes}
        try:
            return dict(zip(refs, ray.get(list(refs.values()), timeout=120), strict=True))
        except ray.exceptions.GetTimeoutError:
            raise UserError(f"--storage {storage}: could not check within 120 s that every node of the cluster "
                            "can read it (a node is unresponsive?)") from None
    finally:
        probe.unlink(missing_ok=True)


def check_shared_storage(storage: str) -> None:
    """UserError when a multi-node cluster has nodes that cannot see `storage`: a trial moved to such a
    node would not find its checkpoint. Leaves no folder behind when it fails."""
    top = Path(storage)
    while not top.parent.exists():
        top = top.parent
    existed = top.exists()
    try:
        seen = storage_visibility(storage)
        blind = [node for node, ok in seen.items() if not ok]
        if blind:
            raise UserError(f"--storage {storage} is node-local: {len(blind)} of {len(seen)} nodes cannot read it "
                            f"({', '.join(blind[:3])}{', ...' if len(blind) > 3 else ''}); on a multi-node "
                            "cluster pass a folder that every node mounts (e.g. NFS)")
    except UserError:
        if not existed:
            shutil.rmtree(top, ignore_errors=True)
        raise


def run_label(cfg: Config) -> str:
    """Readable name of a trial and its MLflow run; `-norm` marks a local rule trained with credit_norm."""
    norm = "-norm" if cfg.rule.credit_norm and issubclass(RULES[cfg.rule.rule], LocalRule) else ""
    return f"{cfg.rule.rule}{norm}-d{cfg.model.d}-L{cfg.model.L}-seed{cfg.train.seed}"


def trial_item(members: list[Config]) -> dict:
    """The Tune config of a trial: one config dict, or a population {"members": [...], "label": ...}."""
    if len(members) == 1:
        return members[0].to_dict()
    c = members[0]
    return {"members": [m.to_dict() for m in members],
            "label": f"{c.rule.rule}-d{c.model.d}-L{c.model.L}-pop{len(members)}"}


def item_members(item: dict) -> list[Config]:
    return [Config.from_dict(m) for m in item["members"]] if "members" in item else [Config.from_dict(item)]


def trial_name(trial) -> str:
    if "cfg" not in trial.config:
        return f"trial-{trial.trial_id}"  # a searcher's trial: its config is drawn when it starts
    item = trial.config["cfg"]
    return f"{item['label'] if 'members' in item else run_label(Config.from_dict(item))}-{trial.trial_id}"


def trial_dirname(trial) -> str:
    return trial.trial_id


def _trial_device() -> str:
    import ray
    import torch

    on_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    if ray.get_gpu_ids() and not on_gpu:
        print(f"notice: Ray assigned GPU {ray.get_gpu_ids()} but torch sees no CUDA device; training on CPU")
    return "cuda" if on_gpu else "cpu"


def _open_run(s: SweepSettings, cfg: Config, key: str, name: str, n_classes: int, tags: dict | None = None):
    from raycredit.tracking import TrialRun

    return TrialRun(s.tracking_uri, s.experiment_id, key, run_name=name, params=cfg.flat(),
                    tags={"rule": cfg.rule.rule, "search": s.search, "dataset": cfg.data.dataset,
                          "seed": cfg.train.seed, "code_version": s.code_version, "n_classes": n_classes,
                          **(tags or {})})


def _start_attempt(run, resumed_from: int) -> None:
    """Tag the attempt: its node and process, and, for any attempt that starts from a checkpoint (or any
    restart), the epoch it resumed from."""
    import ray

    from raycredit.tracking import NODE_TAG, PID_TAG, RESUMED_TAG

    tags = {NODE_TAG: ray.get_runtime_context().get_node_id(), PID_TAG: os.getpid()}
    run.set_tags({**tags, RESUMED_TAG: resumed_from} if run.attempt > 1 or resumed_from else tags)


def _close(run, metrics: dict, checkpoint: Path | None) -> None:
    """Everything a finished run owes MLflow: its last (finite) checkpoint, the divergence tag, FINISHED."""
    if checkpoint is not None and checkpoint.exists():
        run.log_checkpoint(checkpoint)
    run.set_tags({"diverged": int(metrics.get("diverged", 0))})
    run.finish("FINISHED")


def _trainable(config: dict, settings: dict, base: dict | None = None) -> None:
    """One trial. Grid sweeps pass the whole config as config["cfg"] (or a population of them);
    searchers pass the knobs they drew, applied on top of `base`, and the run key then includes the
    trial id (two draws may coincide)."""
    import torch

    from raycredit.checkpoint import save_checkpoint
    from raycredit.data import load_data
    from raycredit.train import train

    s = SweepSettings(**settings)
    torch.set_num_threads(max(1, int(s.cpus_per_trial)))
    if base is None and "members" in config["cfg"]:
        return _population_trial(item_members(config["cfg"]), s)
    if base is None:
        cfg = Config.from_dict(config["cfg"])
        key, name = cfg.key(), run_label(cfg)
    else:
        cfg = Config.from_dict(base).replace(**config)
        key = f"{cfg.key()}-{tune.get_context().get_trial_id()}"
        name = f"{run_label(cfg)}-{tune.get_context().get_trial_id()}"
    run_cfg = cfg.replace(device=_trial_device())
    data = load_data(cfg.data)
    run = _open_run(s, cfg, key, name, data.n_classes)
    folder = Path(s.checkpoint_root) / key
    path = folder / CHECKPOINT_FILE

    def close(metrics: dict) -> None:
        """Done before the trial's last report: a scheduler may stop the trial inside that report
        (SystemExit), and nothing after it would run."""
        _close(run, metrics, path)  # after a divergence: the last finite state
        shutil.rmtree(folder, ignore_errors=True)

    def on_epoch(epoch: int, metrics: dict, checkpoint_fn) -> None:
        run.log_epoch(epoch, metrics)
        final = epoch == cfg.train.epochs or metrics["diverged"]
        if checkpoint_fn is not None and (final or epoch % cfg.train.checkpoint_every == 0):
            save_checkpoint(checkpoint_fn(), path)
        if final:
            close(metrics)
        tune.report({**metrics, "run_key": key})

    try:
        if run.finished:
            # finished before the driver died, though Tune's saved state may not know it yet
            tune.report({**run.final_metrics(), "run_key": key})
            return
        folder.mkdir(parents=True, exist_ok=True)
        ckpt = _readable_checkpoint(path, [run])
        _start_attempt(run, ckpt["epoch"] if ckpt is not None else 0)
        if ckpt is not None and ckpt["epoch"] == cfg.train.epochs:
            # killed after saving its last epoch (whose metrics were logged first): nothing left to train
            final = ckpt["history"][-1]
            close(final)
            tune.report({**final, "run_key": key})
            return
        train(run_cfg, checkpoint=ckpt, on_epoch=on_epoch, data=data)
    except SystemExit:
        # Tune stopped the trial (a scheduler's early stop, or the sweep shutting down): the driver
        # knows which, and sets the run's status when the sweep ends (tracking.close_stale_runs)
        raise
    except DiskFull as e:
        _fail_cleanly([run], key, e)
    except BaseException:
        run.finish("FAILED")
        raise


FAILURE_TAG = "raycredit.failure"  # why the latest attempt failed, when it failed cleanly (a full disk)


def _fail_cleanly(runs: list, key: str, e: Exception) -> None:
    """End the trial as failed without a traceback or a retry (retrying cannot help: a full disk stays full
    until someone frees it): its unfinished runs are FAILED with the reason, and Tune is told the reason. When
    even that cannot be written, `e` propagates and Tune retries the trial as after any crash."""
    try:
        for run in runs:
            if not run.finished:
                run.set_tags({FAILURE_TAG: str(e)})
                run.finish("FAILED")
    except Exception:
        raise e from None
    tune.report({"failure": str(e), "run_key": key})


SET_ASIDE_TAG = "raycredit.checkpoint_set_aside"  # where an unreadable trial checkpoint was moved


def _readable_checkpoint(path: Path, runs: list) -> dict | None:
    """The trial's checkpoint at `path`, or None when there is none. An unreadable one (truncated by a full
    disk or a crash, corrupt) is moved to <checkpoints>/set_aside/, noted on the runs and in the trial's log,
    and the trial starts over from scratch: its epochs are recomputed (the run keeps the ones it logged)."""
    from raycredit.checkpoint import load_checkpoint

    if not path.exists():
        return None
    try:
        return load_checkpoint(path)
    except UserError as e:
        # beside the trials' folders, not in its own (which goes once the trial finishes): kept to inspect
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = path.parent.parent / "set_aside" / f"{path.parent.name}-{path.name}.corrupt-{stamp}"
        aside.parent.mkdir(exist_ok=True)
        os.replace(path, aside)
        print(f"warning: {e}; set aside as {aside}, the trial starts over from scratch", flush=True)
        for run in runs:
            run.set_tags({SET_ASIDE_TAG: str(aside)})
        return None


def _population_summary(key: str, epoch: int, results: list[dict], done: bool) -> dict:
    """What a population trial reports to Tune: its members' mean metrics (the runs hold each member's)."""
    ok = [m for m in results if not m["diverged"]]
    means = {k: sum(m[k] for m in ok) / len(ok) for k in ("train_loss", "test_acc", "deep_cos")
             if ok and all(k in m for m in ok)}
    return {**means, "epoch": epoch, "members": len(results), "diverged": float(len(results) - len(ok)),
            "done": float(done), "run_key": key}


def _population_trial(cfgs: list[Config], s: SweepSettings) -> None:
    """A population trial: its members train together (raycredit.population) and each logs its own MLflow
    run, exactly as a separate trial would. Its checkpoint file holds every unfinished member's checkpoint;
    a member's own checkpoint is written beside it when the member finishes, and logged to its run."""
    from raycredit.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
    from raycredit.population import member_data, population_key, train_population
    from raycredit.tracking import POPULATION_TAG

    group, E = population_key(cfgs), cfgs[0].train.epochs
    data = member_data(cfgs)
    runs = [_open_run(s, c, c.key(), run_label(c), d.n_classes, {POPULATION_TAG: group})
            for c, d in zip(cfgs, data, strict=True)]
    folder = Path(s.checkpoint_root) / group
    path = folder / CHECKPOINT_FILE
    todo = [i for i, r in enumerate(runs) if not r.finished]

    def close(i: int, metrics: dict, ckpt: dict | None) -> None:
        member_path = folder / cfgs[i].key() / CHECKPOINT_FILE
        if ckpt is not None:
            member_path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(ckpt, member_path)
        _close(runs[i], metrics, member_path)

    def saved_members() -> dict:
        return load_checkpoint(path)["population"] if path.exists() else {}

    def on_epoch(epoch: int, results: list[dict | None], checkpoint_fn) -> None:
        members = [(todo[j], m) for j, m in enumerate(results) if m is not None]
        for i, m in members:
            runs[i].log_epoch(epoch, m)
        diverged = [(i, m) for i, m in members if m["diverged"]]
        if diverged:
            # before the file is replaced: it holds their last finite state
            old = saved_members()
            for i, m in diverged:
                close(i, m, old.get(cfgs[i].key()))
        new = None
        if checkpoint_fn is not None and (epoch == E or epoch % cfgs[0].train.checkpoint_every == 0):
            new = {"format": CHECKPOINT_FORMAT, "population": {
                cfgs[todo[j]].key(): c for j, c in enumerate(checkpoint_fn()) if c is not None}}
            save_checkpoint(new, path)
        if epoch == E:
            for i, m in members:
                if not m["diverged"]:
                    close(i, m, new["population"][cfgs[i].key()])
        done = all(runs[i].finished for i in todo)
        if done:
            shutil.rmtree(folder, ignore_errors=True)
        tune.report(_population_summary(group, epoch, [m for _, m in members], done))

    try:
        if not todo:
            tune.report(_population_summary(group, E, [r.final_metrics() for r in runs], True))
            return
        folder.mkdir(parents=True, exist_ok=True)
        whole = _readable_checkpoint(path, [runs[i] for i in todo])
        saved = whole["population"] if whole is not None else {}
        entries = [saved.get(cfgs[i].key()) for i in todo] if saved else None
        if entries is not None and any(e is None for e in entries):
            raise RuntimeError(f"{path} lacks unfinished members of its population; delete it to restart them")
        for r in (runs[i] for i in todo):
            _start_attempt(r, entries[0]["epoch"] if entries else 0)
        if entries and entries[0]["epoch"] == E:
            # killed after saving the last epoch (whose metrics were logged first): nothing left to train
            for i, e in zip(todo, entries, strict=True):
                close(i, e["history"][-1], e)
            shutil.rmtree(folder, ignore_errors=True)
            tune.report(_population_summary(group, E, [e["history"][-1] for e in entries], True))
            return
        device = _trial_device()
        train_population([cfgs[i].replace(device=device) for i in todo], checkpoints=entries, on_epoch=on_epoch,
                         data=[data[i] for i in todo])
    except SystemExit:
        raise
    except DiskFull as e:
        _fail_cleanly(runs, group, e)
    except BaseException:
        for r in runs:
            if not r.finished:
                r.finish("FAILED")
        raise


def progress_reporter(items: list[dict]):
    """Ray's progress table with one column per knob that varies across the sweep (and one naming each
    population)."""
    configs = [c for item in items for c in item_members(item)]
    flat = [c.flat() for c in configs]
    varying = [k for k in flat[0] if any(f[k] != flat[0][k] for f in flat)]
    sections = {k: s for s, sec in configs[0].to_dict().items() for k in sec}
    columns = {f"cfg/{sections[k]}/{k}": k for k in varying}
    metrics = {"epoch": "epoch", "train_loss": "train_loss", "test_acc": "test_acc", "deep_cos": "deep_cos",
               "diverged": "diverged"}
    if any("members" in item for item in items):
        columns["cfg/label"] = "population"
        metrics["members"] = "members"
    return tune.CLIReporter(parameter_columns=columns, metric_columns=metrics, max_report_frequency=10)


def check_trusted(path: str) -> None:
    """UserError unless every file and folder of the Tune experiment at `path` belongs to this user and is not
    world-writable: resuming unpickles Tune's state files (tuner.pkl, the searcher, the trials' state), so a
    file that someone else wrote or could rewrite in a shared --storage would run their code as this user.
    (Group-writable files are accepted: the storage's group is trusted.)"""
    uid = os.getuid()
    for p in [Path(path), *Path(path).rglob("*")]:
        st = p.lstat()
        if st.st_uid != uid or st.st_mode & 0o002:
            why = "belongs to another user" if st.st_uid != uid else "is writable by every user"
            raise UserError(f"{p} {why}: resuming would unpickle Tune's state from that folder, which could run "
                            f"code written by someone else; check it, then `chown -R` / `chmod -R o-w` it, or "
                            f"use a new --storage")


# The hang watch's limits for this driver. Tune pickles its callbacks with the experiment, and a restored
# sweep must obey the flags of the command that resumes it, so the watch reads them from here.
HANG_LIMITS = {"timeout_s": 0.0, "factor": 10.0}




class HangWatch(tune.Callback):
    """Kills a trial that has reported nothing for `timeout_s` seconds (when > 0), or for `factor` times its
    own longest gap between reports so far (once it has reported): a frozen worker (SIGSTOP, a hung NFS read,
    a wedged GPU) then fails like a crashed one, and Tune retries it from its checkpoint."""

    def __init__(self):
        self.last: dict[str, float] = {}
        self.longest: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.last[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        gap = now - self.last.get(trial.trial_id, now)
        self.longest[trial.trial_id] = max(self.longest.get(trial.trial_id, 0.0), gap)
        self.last[trial.trial_id] = now

    def on_step_begin(self, iteration, trials, **info):
        import ray

        now = time.monotonic()
        for t in trials:
            if t.status != "RUNNING" or t.trial_id not in self.last:
                continue
            limits = [HANG_LIMITS["timeout_s"]] if HANG_LIMITS["timeout_s"] > 0 else []
            if self.longest.get(t.trial_id):
                limits.append(HANG_LIMITS["factor"] * self.longest[t.trial_id])
            silent = now - self.last[t.trial_id]
            actor = t.temporary_state.ray_actor  # Tune has no public way to fail one running trial
            if limits and silent > min(limits) and actor is not None:
                print(f"notice: trial {t} reported nothing for {silent:.0f} s (limit {min(limits):.0f} s): "
                      "killed as hung; it is retried from its checkpoint", flush=True)
                ray.kill(actor, no_restart=True)
                self.last[t.trial_id] = now


def _fit(settings: SweepSettings, *, name: str, storage: str, max_failures: int, kind: str,
         fresh: Callable[[], dict], base: dict | None = None, restore: bool = True):
    """Resume the Tune experiment storage/name (when `restore`), or start it with the Tuner arguments fresh()
    returns (progress_reporter among them goes to the RunConfig); returns (ResultGrid, the trials' settings)."""
    path = os.path.join(storage, name)
    settings = replace(settings, checkpoint_root=os.path.join(path, "checkpoints"))
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, settings=asdict(settings), base=base), resources)
    if restore and tune.Tuner.can_restore(path):
        check_trusted(path)
        print(f"resuming {kind} from {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        if os.path.isdir(path):
            print(f"resuming {kind} in {path}: unfinished trials continue from their checkpoints")
        kw = fresh()
        tuner = tune.Tuner(trainable, run_config=tune.RunConfig(
            name=name, storage_path=storage, failure_config=tune.FailureConfig(max_failures=max_failures),
            progress_reporter=kw.pop("progress_reporter", None), callbacks=[HangWatch()], verbose=1), **kw)
    return tuner.fit(), settings


def run_trials(configs: list[Config], settings: SweepSettings, *, name: str, storage: str,
               max_failures: int, population: int = 1) -> dict[str, str]:
    """Run (or resume) the sweep; returns {run key: 'FINISHED' | 'FAILED' | 'KILLED' (interrupted, resumable)}.

    With population > 1, configs that differ only in the population keys train as populations of up to
    that many members, one trial each (raycredit.population.group_members).
    """
    from raycredit.population import group_members
    from raycredit.tracking import finished_keys

    done = finished_keys(settings.tracking_uri, settings.experiment_id)
    groups = [g for g in group_members(configs, population) if not all(c.key() in done for c in g)]
    status = {c.key(): "FINISHED" for c in configs if c.key() in done}
    if not groups:
        return status
    items = [trial_item(g) for g in groups]

    def fresh() -> dict:
        return dict(param_space={"cfg": tune.grid_search(items)},
                    tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
                                                reuse_actors=True),
                    progress_reporter=progress_reporter(items))

    grid, _ = _fit(settings, name=name, storage=storage, max_failures=max_failures, kind="sweep", fresh=fresh,
                   restore=False)
    status.update({c.key(): "KILLED" for g in groups for c in g})  # trials an interruption left unstarted
    for r in grid:
        if not r.config:
            continue
        members, last = item_members(r.config["cfg"]), r.metrics or {}
        if last.get("failure"):
            print(f"trial {r.path.rsplit('/', 1)[-1]} ({', '.join(run_label(c) for c in members[:3])}"
                  f"{', ...' if len(members) > 3 else ''}) failed: {last['failure']}", flush=True)
            outcome = "FAILED"
        elif r.error:
            outcome = "FAILED"
        elif last.get("done") or (len(members) == 1 and (last.get("epoch") == members[0].train.epochs
                                                           or last.get("diverged"))):
            outcome = "FINISHED"
        else:
            outcome = "KILLED"
        status.update({c.key(): outcome for c in members})
    return status


@dataclass(frozen=True)
class OptunaSettings:
    """A model-based search: Optuna's TPE proposes, ASHA stops the laggards early."""

    space: object  # define-by-run function(optuna.Trial) -> dict of constants or None
    num_samples: int
    metric: str = "test_acc"
    mode: str = "max"
    grace_period: int = 2  # epochs every trial runs before ASHA may stop it
    max_concurrent: int = 4
    seed: int = 0


@dataclass
class SearchOutcome:
    status: dict[str, str]  # run key -> FINISHED / FAILED / KILLED
    early: set[str]  # run keys of trials the scheduler stopped before their last epoch
    complete: bool  # every trial of num_samples has ended
    best: dict | None  # the best trial's drawn knobs
    best_metrics: dict


def run_optuna(base: Config, opt: OptunaSettings, settings: SweepSettings, *, name: str, storage: str,
               max_failures: int) -> SearchOutcome:
    """Run (or resume) an Optuna search over knobs on top of `base`.

    Optuna keeps its study in memory and Tune checkpoints the searcher with the experiment:
    Optuna's RDB storage breaks Tuner.restore (SPEC §11). Trials that ASHA stopped early count
    as finished.
    """
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    def fresh() -> dict:
        searcher = OptunaSearch(opt.space, metric=opt.metric, mode=opt.mode,
                                sampler=optuna.samplers.TPESampler(seed=opt.seed))
        scheduler = ASHAScheduler(metric=opt.metric, mode=opt.mode, time_attr="epoch", max_t=base.train.epochs,
                                  grace_period=min(opt.grace_period, base.train.epochs))
        return dict(tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=opt.max_concurrent), scheduler=scheduler,
            num_samples=opt.num_samples, trial_name_creator=trial_name, trial_dirname_creator=trial_dirname))

    grid, settings = _fit(settings, name=name, storage=storage, max_failures=max_failures, kind="search",
                          fresh=fresh, base=base.to_dict())
    out = SearchOutcome({}, set(), grid.num_terminated + grid.num_errors == opt.num_samples, None, {})
    for r in grid:
        last = r.metrics or {}
        if "run_key" not in last:
            continue
        full = last.get("epoch") == base.train.epochs or last.get("diverged")
        out.status[last["run_key"]] = "FAILED" if r.error else "FINISHED" if full or out.complete else "KILLED"
        if out.complete and not full and not r.error:
            out.early.add(last["run_key"])
            shutil.rmtree(Path(settings.checkpoint_root) / last["run_key"], ignore_errors=True)
        value = last.get(opt.metric)
        if not r.error and value is not None and (
                out.best is None or (value > out.best_metrics[opt.metric]) == (opt.mode == "max")):
            out.best, out.best_metrics = dict(r.config), dict(last)
    return out
