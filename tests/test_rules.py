"""The maths of the rules and diagnostics, without Ray."""

import functools

import pytest
import torch
import torch.nn.functional as F

from raycredit.config import SECTIONS
from raycredit.data import load_data
from raycredit.diagnostics import diagnose, probe_forward
from raycredit.errors import ConfigError
from raycredit.models import build_model
from raycredit.rules import RULES, build_rule, make_config, unused_knobs, validate
from raycredit.rules.base import LocalRule, rms_normalize
from raycredit.train import train


def setup(tiny, **over):
    cfg = make_config({**tiny, **over})
    data = load_data(cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.in_shape, data.n_classes)
    rule = build_rule(cfg, model, data.n_classes)
    return cfg, data, model, rule


def grads_of(model, rule, x, y):
    model.zero_grad(set_to_none=True)
    objective, _, _ = rule.loss(model, x, y)
    objective.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def test_registry_lists_rules_and_rejects_unknown():
    assert set(RULES) >= {"bp", "fa", "dfa", "frozen"}


def test_bp_credit_is_calibrated(tiny):
    cfg, data, model, rule = setup(tiny, rule="bp", rho_dirs=32, probe_size=128)
    m = diagnose(model, rule, data.x_test[:128], data.y_test[:128], cfg.diag, seed=0)
    for i in range(cfg.model.L + 1):
        assert m[f"cos/l{i}"] == pytest.approx(1.0, abs=1e-5)
        assert m[f"rho/l{i}"] > 0.99
        assert m[f"nudge/l{i}"] < 0
    assert m["deep_rho"] >= 0.99 and m["deep_cos"] == pytest.approx(1.0, abs=1e-5)


def test_random_credit_has_no_correlation(tiny):
    cfg, data, model, rule = setup(tiny, rule="bp", rho_dirs=32, probe_size=256)
    x, y = data.x_test[:256], data.y_test[:256]
    g = torch.Generator().manual_seed(1)
    credits = [torch.randn(256, cfg.model.d, generator=g, dtype=torch.float64) for _ in range(cfg.model.L + 1)]
    m = diagnose(model, rule, x, y, cfg.diag, seed=0, credits=credits)
    for i in range(cfg.model.L + 1):
        assert abs(m[f"rho/l{i}"]) < 0.05
        assert abs(m[f"cos/l{i}"]) < 0.05


def test_bp_gradient_matches_finite_differences(tiny):
    cfg, data, model, rule = setup(tiny, rule="bp")
    model = model.double()
    x, y = data.x_train[:16].double(), data.y_train[:16]
    g = grads_of(model, rule, x, y)
    w = model.blocks[0].w1.weight
    with torch.no_grad():
        for idx in [(0, 0), (3, 5), (7, 2)]:
            old = w[idx].item()
            w[idx] = old + 1e-6
            up = F.cross_entropy(model(x), y).item()
            w[idx] = old - 1e-6
            down = F.cross_entropy(model(x), y).item()
            w[idx] = old
            assert (up - down) / 2e-6 == pytest.approx(g["blocks.0.w1.weight"][idx].item(), rel=1e-5, abs=1e-9)


class Oracle(LocalRule):
    """A local rule fed the true gradient: its update must equal backprop's."""

    def credits(self, model, hs, logits, y):
        full = [h.detach().requires_grad_() for h in hs[:1]]
        hs2 = [full[0]]
        for l in range(1, self.L + 1):
            hs2.append(model.step(l, hs2[-1], model.f(l, hs2[-1])))
        out = model.head(hs2[-1])
        ce = F.cross_entropy(out, y, reduction="sum")
        return [g.detach() for g in torch.autograd.grad(ce, hs2, retain_graph=True)]


def test_local_update_with_true_credit_equals_backprop(tiny):
    cfg, data, model, bp = setup(tiny, rule="bp", credit_norm=False)
    model = model.double()
    x, y = data.x_train[:32].double(), data.y_train[:32]
    want = grads_of(model, bp, x, y)
    got = grads_of(model, Oracle(cfg, model, data.n_classes), x, y)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["fa", "dfa"])
def test_local_update_is_gradient_of_local_loss(tiny, name):
    """Each block's update = d/dtheta [<f_l(h_{l-1}), a_l> + lam ||f_l||^2], computed independently."""
    cfg, data, model, rule = setup(tiny, rule=name, penalty_lam=0.3, credit_norm=True, fa_mode="reference")
    x, y = data.x_train[:32], data.y_train[:32]
    got = grads_of(model, rule, x, y)
    with torch.no_grad():
        hs, logits = model.hiddens(x)
    hL = hs[-1].clone().requires_grad_()
    a = rule.credits(model, hs[:-1] + [hL], model.head(hL), y)
    for l in (1, cfg.model.L):
        blk = model.blocks[l - 1]
        f = model.f(l, hs[l - 1])
        an = rms_normalize(a[l])
        local = (f * an).sum(-1).mean() + 0.3 * f.pow(2).sum(-1).mean()
        want = torch.autograd.grad(local, list(blk.parameters()))
        for (pname, _), w in zip(blk.named_parameters(), want, strict=True):
            torch.testing.assert_close(got[f"blocks.{l - 1}.{pname}"], w)


def test_fa_and_dfa_credit_formulas(tiny):
    cfg, data, model, fa = setup(tiny, rule="fa", fa_mode="reference")
    x, y = data.x_test[:32].double(), data.y_test[:32]
    m = model.double()
    fa = fa.double()
    hs, logits, g = probe_forward(m, x, y)
    a = fa.credits(m, hs, logits, y)
    torch.testing.assert_close(a[-1], g[-1])  # a_L is the exact output-local gradient
    for l in range(cfg.model.L):
        torch.testing.assert_close(a[l], a[l + 1] @ fa.B[str(l)].T)
    _, _, _, dfa = setup(tiny, rule="dfa")
    dfa = dfa.double()
    e = logits.softmax(-1) - F.one_hot(y, data.n_classes).double()
    for l, al in enumerate(dfa.credits(m, hs, logits, y)):
        torch.testing.assert_close(al, e.detach() @ dfa.B[str(l)])


class ScrambleGrad(torch.autograd.Function):
    """Identity forward; backward returns a gradient unrelated to the true one."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, 0.123) - 7 * g


def scramble_later_blocks(model):
    for blk in list(model.blocks)[1:]:
        orig = blk.forward
        blk.forward = lambda h, orig=orig: ScrambleGrad.apply(orig(ScrambleGrad.apply(h)))


def hidden_backprop(model, rule, x, y) -> tuple[list[str], list[str]]:
    """(block 1's and the embedding's parameters that get a gradient, those of them whose gradient changes once
    the backward path through blocks 2..L is scrambled)."""
    before = grads_of(model, rule, x, y)
    scramble_later_blocks(model)
    after = grads_of(model, rule, x, y)
    watched = [n for n in before if n.startswith(("blocks.0.", "embed.")) and before[n] is not None]
    return watched, [n for n in watched if not torch.equal(before[n], after[n])]


@pytest.mark.parametrize("name, leaks", [("fa", False), ("dfa", False), ("bp", True)])
def test_no_hidden_backprop(tiny, name, leaks):
    """Altering the backward path through blocks 2..L must not change block 1's or the embedding's update.

    (fa with fa_mode=lillicrap is the network's own backward with B in place of W, so its credit does pass
    through the later blocks' nonlinearities: tests/test_canonical.py proves it against Lillicrap's formula.)
    """
    cfg, data, model, rule = setup(tiny, rule=name, fa_mode="reference")
    watched, changed = hidden_backprop(model, rule, data.x_train[:64], data.y_train[:64])
    assert watched and bool(changed) == leaks, changed


def test_frozen_keeps_blocks_and_embedding_bit_identical(tiny):
    cfg, data, model, rule = setup(tiny, rule="frozen")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = {}

    def grab(epoch, metrics, checkpoint_fn):
        result.update(checkpoint_fn()["model"])

    train(make_config({**tiny, "rule": "frozen", "epochs": 2}), on_epoch=grab)
    for n, p in start.items():
        if n.startswith(("blocks.", "embed.")):
            assert torch.equal(result[n], p), n
    assert not torch.equal(result["readout.weight"], start["readout.weight"])


def test_frozen_train_embedding_moves_only_the_embedding(tiny):
    result = {}
    train(make_config({**tiny, "rule": "frozen", "train_embedding": True}),
          on_epoch=lambda e, m, fn: result.update(fn()["model"]))
    _, _, model, _ = setup(tiny, rule="frozen")
    start = dict(model.named_parameters())
    assert all(torch.equal(result[n], p) for n, p in start.items() if n.startswith("blocks."))
    assert not torch.equal(result["embed.weight"], start["embed.weight"])


def block_output_norm(tiny, lam):
    cfg = make_config({**tiny, "rule": "dfa", "penalty_lam": lam, "epochs": 3, "lr": 1e-2})
    state = {}
    train(cfg, on_epoch=lambda e, m, fn: state.update(fn()["model"]))
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_shape, data.n_classes)
    model.load_state_dict(state)
    with torch.no_grad():
        hs, _ = model.hiddens(data.x_test)
        return sum(model.f(l, hs[l - 1]).norm(dim=-1).mean().item() for l in range(1, cfg.model.L + 1))


def test_larger_penalty_gives_smaller_block_outputs(tiny):
    norms = [block_output_norm(tiny, lam) for lam in (0.0, 0.1, 1.0)]
    assert norms[0] > norms[1] > norms[2]
    assert norms[2] < 0.5 * norms[0]


def test_rms_normalize():
    a = torch.randn(5, 40) * torch.logspace(-3, 3, 5)[:, None]
    n = rms_normalize(a)
    torch.testing.assert_close(n.pow(2).mean(-1).sqrt(), torch.ones(5), rtol=1e-3, atol=1e-3)


# a valid value other than the default for every knob of the rule section (a new knob must be added here)
OTHER = dict(penalty_lam=0.1, credit_norm=True, fa_mode="reference", feedback_scale=0.5, train_embedding=True,
             fit_l2=1e-2, ep_beta=0.05, ep_steps=5, ep_step_size=0.01, ep_credit="state_diff", s_type="deltaL",
             vf_dirs=2, vf_eps=0.05, one_sided=True, tw=0.5, shuffle_control=True, tgw=0.5, cb_samples=2,
             cb_sigma=0.1, cb_temp=0.5, warmup_ratio=0.5, blend_alpha=0.5, aux_kind="time_only", freeze_after=1,
             decay_to=0.0, prefit_epochs=1, refit_every=1, refit_epochs=2, blend_layers=1, aux_width=8, aux_lr=1e-2)
# where a knob acts only once another is set, both runs of its test set that one
CONTEXT = {"decay_to": {"freeze_after": 1}, "refit_epochs": {"refit_every": 1, "epochs": 4}}
SMALL = dict(n_train=128, n_test=64, d=8, L=2, epochs=2, batch_size=32, probe_size=32, rho_dirs=2, diag_every=2)


def trained(tiny, **knobs) -> tuple:
    """What a short run ends with: its model and rule state, and its last epoch's metrics (time_s aside)."""
    return _trained(tuple(sorted({**tiny, **SMALL, **knobs}.items())))


@functools.cache
def _trained(knobs: tuple) -> tuple:
    # the rule knobs after make_config, which sets those that the rule does not read to their defaults: here
    # they must reach it
    knobs, out = dict(knobs), {}
    cfg = make_config({k: v for k, v in knobs.items() if k not in OTHER}).replace(
        **{k: v for k, v in knobs.items() if k in OTHER})
    validate(cfg)
    train(cfg, on_epoch=lambda e, m, fn: out.update(metrics=m, state=fn()))
    metrics = {k: v for k, v in out["metrics"].items() if k != "time_s"}
    return out["state"]["model"], out["state"]["rule"], metrics


def same_run(a: tuple, b: tuple) -> bool:
    def equal(u, v):
        if isinstance(u, dict):
            return isinstance(v, dict) and u.keys() == v.keys() and all(equal(u[k], v[k]) for k in u)
        if isinstance(u, list | tuple):
            return isinstance(v, list | tuple) and len(u) == len(v) and all(map(equal, u, v))
        return torch.equal(u, v) if torch.is_tensor(u) else u == v

    return equal(list(a), list(b))


def test_other_covers_every_rule_knob():
    assert set(OTHER) == set(SECTIONS["rule"].__dataclass_fields__) - {"rule"}


@pytest.mark.parametrize("name", list(RULES))
def test_a_knob_a_rule_does_not_declare_changes_nothing_in_its_run(tiny, name):
    """Every rule knob that `name` does not declare (`Rule.uses`) set to another value at once: the run ends in
    the same state and metrics, bit for bit. So a run that does not log them (`rules.applied`) hides nothing."""
    unused = unused_knobs(name)
    assert unused == set(OTHER) - RULES[name].uses()
    assert same_run(trained(tiny, rule=name), trained(tiny, rule=name, **{k: OTHER[k] for k in unused}))


@pytest.mark.parametrize(("name", "knob"), [(n, k) for n in RULES for k in sorted(RULES[n].uses())])
def test_a_knob_a_rule_declares_changes_its_run_or_is_refused(tiny, name, knob):
    """The other direction: a declared knob acts (a different end state or metrics), or the rule refuses its
    other value (kolen_pollack and sign_symmetry are fa in lillicrap form only)."""
    context = {"rule": name, **CONTEXT.get(knob, {})}
    try:
        changed = trained(tiny, **context, **{knob: OTHER[knob]})
    except ConfigError as e:
        assert e.args[0].startswith(f"{knob}:")
        return
    assert not same_run(trained(tiny, **context), changed)


def test_a_config_sets_the_knobs_its_rule_does_not_read_to_their_defaults():
    """So that two configs that train alike are one trial: a grid's bp under two penalty_lam is one run."""
    plain = make_config({"rule": "bp"})
    assert make_config({"rule": "bp", "penalty_lam": 0.1, "credit_norm": True}).key() == plain.key()
    assert make_config({"rule": "dfa", "penalty_lam": 0.1}).rule.penalty_lam == 0.1
    measured = make_config({"rule": "bp", "credit_norm": True, "exploitability": True, "parent_run": "x",
                            "parent_epoch": 1})
    assert measured.rule.credit_norm  # an exploitability measurement normalizes bp's credit with it
