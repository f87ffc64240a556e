"""The Tune trainable: one trial trains one config, or several as a population, each with its own MLflow run;
or, for a snapshot measurement, measures its parent's state once.

The trial's kind is chosen once, at the top of `trainable`; where each member starts is
`raycredit.start.resolve_start`'s to decide, and what the trial owes MLflow, its checkpoint file and Tune is
the `Bookkeeper`'s (`raycredit.engine.bookkeeper`). Around `raycredit.population.train_members` (one config:
exactly `train(cfg)`), nothing else happens here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from ray import tune

from raycredit.config import Config
from raycredit.engine.bookkeeper import Bookkeeper
from raycredit.population import population_key, train_members
from raycredit.rules import RULES
from raycredit.rules.base import LocalRule
from raycredit.start import Start


def trainable(config: dict, settings: dict, base: dict | None = None) -> None:
    """One trial. A grid passes its members as config["cfg"] (`trial_item`); a searcher passes the knobs it
    drew, applied on top of `base`, and the run key then includes the trial id (two draws may coincide)."""
    s = SweepSettings(**settings)
    torch.set_num_threads(max(1, int(s.cpus_per_trial)))
    quiet_sigterm_exit()
    book = Bookkeeper(s, *trial_members(config, base))
    kind = measure if book.cfgs[0].exploit.exploitability else train_all
    if not book.open(config.get(SEARCHED)):
        return
    with book.attempt():
        if book.finished_before():
            return
        starts = book.starts()
        if starts:
            kind(book, starts)


def quiet_sigterm_exit() -> None:
    """Let this worker process end on SIGTERM without a traceback in the driver's output. Ray's handler raises
    SystemExit wherever the worker is (ray 2.60 `worker.sigterm_handler`; ray PR #57086 describes it); when
    that is a garbage-collection callback, Python cannot raise it there and prints it as an ignored exception,
    at the end of every sweep on a `ray start` cluster, whose raylet then stops the job's idle workers."""
    previous = sys.unraisablehook
    if getattr(previous, "raycredit", False):
        return

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    hook.raycredit = True
    sys.unraisablehook = hook


def train_all(book: Bookkeeper, starts: list[Start]) -> None:
    """Train the unfinished members on from where they start, together (`population.train_members`)."""
    device = trial_device()
    book.begin(starts, device)
    if book.finished_at_start(starts):
        return
    checkpoints = [start.checkpoint for start in starts]
    train_members([book.cfgs[i].replace(device=device) for i in book.todo],
                  checkpoints=None if all(c is None for c in checkpoints) else checkpoints,
                  on_epoch=book.on_epoch, data=[book.data[i] for i in book.todo])


def measure(book: Bookkeeper, starts: list[Start]) -> None:
    """A snapshot measurement (`snapshot.exploitability`): its parent's state, measured once, never trained."""
    from raycredit.exploitability import exploitability

    device = trial_device()
    book.begin(starts, device)
    [i], [start] = book.todo, starts
    metrics = {**exploitability(start.checkpoint, book.data[i], device), "epoch": start.epoch}
    book.runs[i].log_epoch(start.epoch, metrics)
    book.runs[i].finish("FINISHED")
    book.report(start.epoch, [metrics])


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
    source_tags: dict = field(default_factory=dict)  # MLflow's mlflow.source.* / mlflow.user tags of the driver
    sweep: str = ""  # the sweep's Tune experiment name, tagged on every run (raycredit.sweep)
    system_metrics_s: float = 0.0  # seconds between samples of a trial's machine into its run's system/* metrics
    heartbeat: str = ""  # the sweep's heartbeat actor (`engine.heartbeats`), by name; "" for none


# a scaffold run's name gives its auxiliary and α, and these schedule knobs where they are not their defaults
SCAFFOLD_SCHEDULE = ("prefit_epochs", "freeze_after", "decay_to", "refit_every", "refit_epochs", "blend_layers")


def run_label(cfg: Config) -> str:
    """Readable name of a trial and its MLflow run: rule (`-norm`: a local rule trained with credit_norm), for
    scaffold its auxiliary, α and changed schedule knobs, model, seed and, for a branch, the trunk epoch it
    starts from: the branches of one trunk differ by name, e.g. scaffold-norm-time_only-a0.75-d64-L4-seed0-from2."""
    norm = "-norm" if cfg.rule.credit_norm and issubclass(RULES[cfg.rule.rule], LocalRule) else ""
    branch = f"-from{cfg.lineage.parent_epoch}" if cfg.lineage.parent_run else ""
    what = "-exploit" if cfg.exploit.exploitability else "-frozen-model" if cfg.train.freeze_model else ""
    if cfg.rule.rule == "scaffold":
        flat, default = cfg.flat(), Config.from_dict({"rule": "scaffold"}).flat()
        what += f"-{flat['aux_kind']}-a{flat['blend_alpha']:g}" + "".join(
            f"-{k}={flat[k]:g}" for k in SCAFFOLD_SCHEDULE if flat[k] != default[k])
    return f"{cfg.rule.rule}{norm}{what}-d{cfg.model.d}-L{cfg.model.L}-seed{cfg.train.seed}{branch}"


def trial_item(members: list[Config]) -> dict:
    """A grid trial's Tune config: its members, a label for the trial's name and how many runs it trains (the
    progress table's one parameter column)."""
    label = run_label(members[0])
    if len(members) > 1:  # members differ in seed and the other population keys
        label = f"{label.rsplit('-seed', 1)[0]}-pop{len(members)}"
    return {"members": [m.to_dict() for m in members], "label": label, "runs": len(members)}


def item_members(item: dict) -> list[Config]:
    return [Config.from_dict(m) for m in item["members"]]


# a searcher's trial config: the names of the knobs the space drew (`raycredit.engine.sweep.BoundSpace`)
SEARCHED = "_searched"


def searched_label(cfg: Config, searched: list[str]) -> str:
    """A searcher's trial: its rule and the values it drew (3 significant digits), e.g.
    scaffold-aux_kind=linear-blend_alpha=0.423."""
    flat = cfg.flat()
    return "-".join([cfg.rule.rule] + [f"{k}={flat[k]:.3g}" if isinstance(flat[k], float) else f"{k}={flat[k]}"
                                       for k in searched])


def trial_members(config: dict, base: dict | None) -> tuple[list[Config], list[str], list[str], str]:
    """(configs, run keys, run names, the trial's key: its checkpoint folder) of a trial's Tune config."""
    if base is not None:
        cfg = Config.from_dict(base).replace(**{k: v for k, v in config.items() if k != SEARCHED})
        trial_id = tune.get_context().get_trial_id()
        name = f"{searched_label(cfg, config.get(SEARCHED, []))}-{trial_id}"
        return [cfg], [f"{cfg.key()}-{trial_id}"], [name], f"{cfg.key()}-{trial_id}"
    cfgs = item_members(config["cfg"])
    keys = [c.key() for c in cfgs]
    return cfgs, keys, [run_label(c) for c in cfgs], keys[0] if len(cfgs) == 1 else population_key(cfgs)


def trial_name(trial) -> str:
    if "cfg" not in trial.config:
        return f"trial-{trial.trial_id}"  # a searcher's trial: its config is drawn when it starts
    return f"{trial.config['cfg']['label']}-{trial.trial_id}"


def trial_dirname(trial) -> str:
    return trial.trial_id


def trial_device() -> str:
    import ray
    import torch

    on_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    if ray.get_gpu_ids() and not on_gpu:
        print(f"notice: Ray assigned GPU {ray.get_gpu_ids()} but torch sees no CUDA device; training on CPU")
    return "cuda" if on_gpu else "cpu"
