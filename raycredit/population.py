"""Population mode: one process trains P members that share architecture, rule and data shape.

Members may differ only in `POPULATION_KEYS` (seeds, lr, penalty_lam, feedback
scale, the synthetic teacher's alpha, and a branch's parent run: branches of
one epoch of several trunks, each member starting from its own). Each member is built exactly as
`train(cfg)` builds it: same init, feedback matrices and batch order (its own
generator). Their weights and buffers, the rules' auxiliary nets included, are
stacked along a leading member axis; one `torch.func.vmap` of `functional_call`
computes every member's objective, one backward of their sum fills every
member's gradient (members share no weights), and one optimizer updates the
stacked tensors (the auxiliary nets in their own group at `aux_lr`). A rule's
random tensors of a step (`Rule.random_draws`) are drawn before it, each
member's from its own generator in the order a separate run draws them, and
handed to the vmapped step. Adam, AdamW and SGD
are elementwise, so this is P separate optimizers, except where it could not
be: gradient clipping is done per member, and members with different lr
share an optimizer run at lr 1 whose step each member then scales by its lr.

Everything a member produces has exactly the format of a separate run: its
history, its metrics and its checkpoint (`train.checkpoint_dict`), which
`raycredit diagnose` and `train(cfg, checkpoint=...)` read. Its numbers agree
with a separate run's to float round-off (batched matmuls sum in another
order), not bit for bit; resuming a population from its checkpoint is bit-identical.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from raycredit.config import Config
from raycredit.data import Data, load_data
from raycredit.errors import ConfigError, UserError
from raycredit.knobs import stable_hash
from raycredit.models import build_model
from raycredit.rules import build_rule
from raycredit.rules.base import n_correct, task_loss
from raycredit.train import EagerStepper, fit, make_optimizer, resolve_device

POPULATION_KEYS = ("seed", "lr", "penalty_lam", "feedback_scale", "alpha", "parent_run")
_NEUTRAL = {"seed": 0, "lr": 1.0, "penalty_lam": 0.0, "feedback_scale": 1.0, "alpha": 0.0}

PopulationCallback = Callable[[int, "list[dict | None]", "Callable[[], dict] | None"], None]


def shared_key(cfg: Config) -> str:
    """The config hash with the population keys neutralized: members of one population share it.

    A student that follows the teacher's alpha (student_activation=teacher) has it in its forward pass,
    so such members must share alpha.
    """
    neutral = {k: v for k, v in _NEUTRAL.items() if k != "alpha" or cfg.model.student_activation == "own"}
    if cfg.lineage.parent_run:  # branches of one epoch of different trunks (a trunk's parent_run is empty)
        neutral["parent_run"] = "a branch"
    return cfg.replace(**neutral).key()


def supports_population(cfg: Config) -> bool:
    """Every rule trains in population mode; a compiled model or a snapshot measurement does not."""
    return not cfg.train.compile and not cfg.exploit.exploitability


def check_members(cfgs: list[Config]) -> None:
    """ConfigError unless `cfgs` can train as one population."""
    if not cfgs:
        raise ConfigError("a population needs at least one member")
    if cfgs[0].train.compile:
        raise ConfigError("compile: population members train eagerly under vmap; drop compile or the population")
    if len({c.key() for c in cfgs}) != len(cfgs):
        raise ConfigError("a population's members must be distinct configs")
    if len({shared_key(c) for c in cfgs}) != 1:
        raise ConfigError(f"a population's members may differ only in {', '.join(POPULATION_KEYS)}")


def group_members(configs: list[Config], size: int) -> list[list[Config]]:
    """Consecutive populations of at most `size` members; configs that cannot train in one stay alone.

    Members are grouped by `shared_key` in the order configs first appear.
    """
    groups: dict[str, list[Config]] = {}
    alone: list[list[Config]] = []
    for c in configs:
        if size > 1 and supports_population(c):
            groups.setdefault(shared_key(c), []).append(c)
        else:
            alone.append([c])
    chunks = [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]
    return chunks + alone


def population_key(cfgs: list[Config]) -> str:
    """Identity of a population across restarts (its members' config hashes)."""
    return "pop-" + stable_hash(sorted(c.key() for c in cfgs))


class ModelAndRule(nn.Module):
    """A model and its rule as one module: functional_call swaps both sets of weights and buffers."""

    def __init__(self, model: nn.Module, rule: nn.Module):
        super().__init__()
        self.model, self.rule = model, rule

    def forward(self, x: torch.Tensor, y: torch.Tensor, *drawn: torch.Tensor):
        self.rule.drawn = list(drawn)  # this member's random tensors of the step (Rule.random_draws)
        return self.rule.loss(self.model, x, y)


def _member_optimizer_state(stacked: dict, i: int, lr: float) -> dict:
    """Member i's slice of the stacked optimizer's state_dict, as its own optimizer would hold it (the model's
    group at the member's lr; the auxiliary nets' group at aux_lr, which members share)."""
    state = {idx: {k: ((v[i] if v.dim() else v) if torch.is_tensor(v) else v) for k, v in st.items()}
             for idx, st in stacked["state"].items()}
    groups = [{**g, "lr": lr} if j == 0 else dict(g) for j, g in enumerate(stacked["param_groups"])]
    return {"state": state, "param_groups": groups}


def _stack_optimizer_states(states: list[dict], lr: float) -> dict:
    """Inverse of _member_optimizer_state; the shared step count is taken from the first member."""
    stacked = {}
    for idx, st in states[0]["state"].items():
        stacked[idx] = {k: (torch.stack([s["state"][idx][k] for s in states]) if torch.is_tensor(v) and v.dim() > 0
                            else v) for k, v in st.items()}
    groups = [{**g, "lr": lr} if j == 0 else dict(g) for j, g in enumerate(states[0]["param_groups"])]
    return {"state": stacked, "param_groups": groups}


def _clip_per_member(grads: list[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_ of each member's own gradients (the leading axis indexes members)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))


@torch.no_grad()
def _evaluate_members(forward, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-member test loss and accuracy; x is (P, n, ...) and y (P, n) labels or (P, n, outputs) targets."""
    P, n = y.shape[:2]
    chunk = max(256, 8192 // P)
    loss = torch.zeros(P, device=x.device, dtype=torch.float64)  # float64 sums, as in train.evaluate
    correct = torch.zeros(P, device=x.device, dtype=torch.float64)
    for s in range(0, n, chunk):
        logits = forward(params, buffers, x[:, s:s + chunk])
        yy = y[:, s:s + chunk]
        loss += task_loss(logits.flatten(0, 1), yy.flatten(0, 1), reduction="none").view(P, -1).sum(1).double()
        correct += n_correct(logits, yy)
    return {"test_loss": loss / n, "test_acc": correct / n}


def member_data(cfgs: list[Config], data: list[Data] | None = None) -> list[Data]:
    """Each member's dataset, loaded once per distinct data config."""
    if data is not None:
        return data
    loaded: dict = {}
    for c in cfgs:
        if c.data not in loaded:
            loaded[c.data] = load_data(c.data)
    return [loaded[c.data] for c in cfgs]


def _member_data(cfgs: list[Config], data: list[Data] | None, device: torch.device):
    """(each member's data on the device, its (x_train, y_train, x_test, y_test) stacked along a leading
    member axis): a shared dataset is expanded, not copied."""
    data = member_data(cfgs, data)
    on_device = {id(d): d.to(device) for d in data}
    datas = [on_device[id(d)] for d in data]
    if len({(d.x_train.shape, d.x_test.shape, d.n_classes) for d in datas}) != 1:
        raise UserError("a population's members need data of one shape")
    names = ("x_train", "y_train", "x_test", "y_test")
    if len(on_device) == 1:
        return datas, [getattr(datas[0], a).unsqueeze(0).expand(len(cfgs), *getattr(datas[0], a).shape)
                       for a in names]
    return datas, [torch.stack([getattr(d, a) for d in datas]) for a in names]


class PopulationStepper:
    """P members with stacked weights, stepped by one vmapped call (the module docstring); the same interface as
    `train.EagerStepper`, whose `fit` loop trains them."""

    def __init__(self, cfgs: list[Config], data: list[Data] | None, device: torch.device):
        self.cfgs, self.device, cfg0 = cfgs, device, cfgs[0]
        P = len(cfgs)
        self.datas, (self.x_tr, self.y_tr, self.x_te, self.y_te) = _member_data(cfgs, data, device)
        self.C = C = self.datas[0].n_classes
        members, self.gens = [], []
        for cfg, d in zip(cfgs, self.datas, strict=True):
            torch.manual_seed(cfg.train.seed)
            model = build_model(cfg.model, d.in_shape, C, cfg.data.alpha).to(device)
            model.eval()  # members only evaluate and diagnose; the vmapped template trains
            member = ModelAndRule(model, build_rule(cfg, model, C).to(device))
            member.rule.generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
            self.gens.append(member.rule.generator)
            members.append(member)
        self.modules = members
        self.n = self.x_tr.shape[1]
        self.params, self.buffers = stack_module_state(members)
        names = [f"model.{k}" for k, p in members[0].model.named_parameters() if p.requires_grad]
        self.trainable = [self.params[k] for k in names]
        aux = [self.params[f"rule.{k}"] for k, _ in members[0].rule.named_parameters()]  # at aux_lr, shared
        self.lrs = [c.train.lr for c in cfgs]
        shared_lr = len(set(self.lrs)) == 1
        self.opt = make_optimizer(cfg0 if shared_lr else cfg0.replace(lr=1.0), self.trainable, aux, device)
        # members with their own lr: each step starts from a copy of the weights, then moves lr of the way
        self.lr_scales = None if shared_lr else [
            torch.tensor(self.lrs, device=device).view(-1, *[1] * (p.dim() - 1)) for p in self.trainable]
        self.before = None if shared_lr else [torch.empty_like(p) for p in self.trainable]

        # weights-free twin of a member: functional_call supplies the stacked weights
        template_model = build_model(cfg0.model, self.datas[0].in_shape, C, cfg0.data.alpha)
        self.template = template = ModelAndRule(template_model, build_rule(cfg0, template_model, C)).to("meta")
        template.rule.functional = True
        low_precision = cfg0.train.precision == "bf16"

        def step(p, b, x, y, *drawn):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low_precision):
                return functional_call(template, (p, b), (x, y, *drawn))

        self.batched_step = vmap(step)
        self.model_params = {k[len("model."):]: v for k, v in self.params.items() if k.startswith("model.")}
        self.model_buffers = {k[len("model."):]: v for k, v in self.buffers.items() if k.startswith("model.")}
        self.batched_forward = vmap(lambda p, b, x: functional_call(template.model, (p, b), (x,)))
        self.rows = torch.arange(P, device=device).unsqueeze(1)

    @property
    def members(self) -> list[tuple[nn.Module, nn.Module]]:
        """(model, rule) of each member: its own modules, which hold its slice of the weights after each epoch."""
        return [(m.model, m.rule) for m in self.modules]

    def load(self, checkpoints: list[dict]) -> None:
        for member, gen, ckpt in zip(self.modules, self.gens, checkpoints, strict=True):
            member.model.load_state_dict(ckpt["model"])
            member.rule.load_state_dict(ckpt["rule"])
            gen.set_state(ckpt["generator"])
        with torch.no_grad():  # into the stacked tensors the optimizer holds
            for i, m in enumerate(self.modules):
                for k, v in m.named_parameters():
                    self.params[k][i].copy_(v)
                for k, v in m.named_buffers():
                    self.buffers[k][i].copy_(v)
        self.opt.load_state_dict(_stack_optimizer_states([c["optimizer"] for c in checkpoints],
                                                         self.opt.param_groups[0]["lr"]))

    def start_epoch(self, epoch: int, epochs: int) -> torch.Tensor:
        for m in self.modules:
            m.rule.start_epoch(epoch, epochs)
        self.template.rule.start_epoch(epoch, epochs)
        return torch.stack([torch.randperm(self.n, generator=g, device=self.device) for g in self.gens])

    def step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg0 = self.cfgs[0]
        x, y = self.x_tr[self.rows, idx], self.y_tr[self.rows, idx]
        if cfg0.data.random_targets:
            y = torch.stack([torch.randint(0, self.C, y.shape[1:], generator=g, device=self.device)
                             for g in self.gens])
        self.opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # torch 2.14 has no batching rule for conv1d's aten::unfold_backward under vmap and warns once per
            # process that it falls back to a loop: the gradients are exact, and nothing a user can change
            warnings.filterwarnings("ignore", "There is a performance drop because we have not yet implemented "
                                    "the batching rule", UserWarning)
            objective, ce, logits = self.batched_step(self.params, self.buffers, x, y, *self.draw(idx.shape[1]))
            if objective.requires_grad:  # see EagerStepper.step
                objective.sum().backward()
        grads = [p.grad for p in self.trainable if p.grad is not None]  # none with freeze_model
        if cfg0.train.clip_norm and grads:
            _clip_per_member(grads, cfg0.train.clip_norm)
        if self.before is None:
            self.opt.step()
        else:
            with torch.no_grad():
                torch._foreach_copy_(self.before, self.trainable)
                self.opt.step()
                for p, b, w in zip(self.trainable, self.before, self.lr_scales, strict=True):
                    p.copy_(b.lerp_(p, w))
        return ce * idx.shape[1], n_correct(logits, y)

    def draw(self, n: int) -> list[torch.Tensor]:
        """The step's random tensors (Rule.random_draws), each member's from its own generator, stacked."""
        plan = self.modules[0].rule.random_draws(n, self.cfgs[0].model.d)
        if not plan:
            return []
        per_member = []
        for m in self.modules:
            gen = m.rule.step_generator(self.device)
            per_member.append([torch.randn(shape, generator=gen, device=self.device) if kind == "randn"
                               else torch.randperm(shape[0], generator=gen, device=self.device)
                               for kind, shape in plan])
        return [torch.stack(ts) for ts in zip(*per_member, strict=True)]

    def end_epoch(self) -> dict[str, torch.Tensor]:
        test = _evaluate_members(self.batched_forward, self.model_params, self.model_buffers, self.x_te, self.y_te)
        with torch.no_grad():  # each member's own modules get its slice of the stacked weights
            for i, m in enumerate(self.modules):
                for k, v in m.named_parameters():
                    v.copy_(self.params[k][i])
        return test

    def optimizer_state(self, i: int) -> dict:
        return _member_optimizer_state(self.opt.state_dict(), i, self.lrs[i])


def train_population(cfgs: list[Config], *, checkpoints: list[dict] | None = None,
                     on_epoch: PopulationCallback | None = None, data: list[Data] | None = None) -> list[dict]:
    """Train the members `cfgs` together (`train_members`); returns one `train(cfg)`-style result per member.

    on_epoch(epoch, results, checkpoint_fn) is called after every epoch (`train.fit`).
    `checkpoints`, one per member and all of one epoch, resume a population.
    `data`, one per member, may repeat one object (members then share it on the device).
    """
    data = member_data(cfgs, data)
    histories = train_members(cfgs, checkpoints=checkpoints, on_epoch=on_epoch, data=data)
    return [{"config": c.to_dict(), "final": h[-1] if h else {}, "history": h, "n_classes": d.n_classes}
            for c, h, d in zip(cfgs, histories, data, strict=True)]


def train_members(cfgs: list[Config], *, checkpoints: list[dict] | None = None,
                  on_epoch: PopulationCallback | None = None, data: list[Data] | None = None) -> list[list[dict]]:
    """One config trained eagerly (exactly `train(cfg)`), or several as a population; returns each member's
    history. on_epoch and checkpoints as in `train.fit`."""
    device = resolve_device(cfgs[0].train.device)
    if len(cfgs) == 1:
        [d] = member_data(cfgs, data)
        stepper = EagerStepper(cfgs[0], d.to(device), device)
    else:
        check_members(cfgs)
        stepper = PopulationStepper(cfgs, data, device)
    return fit(stepper, cfgs, checkpoints=checkpoints, on_epoch=on_epoch)
