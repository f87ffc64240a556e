"""The published FA (Lillicrap et al. 2016) and DFA (Nøkland 2016) against hand-written formulas, and the
anchors they must reach on real data (digits). No Ray."""

import pytest
import torch
import torch.nn.functional as F

from raycredit.config import Config
from raycredit.data import load_data
from raycredit.diagnostics import diagnose, probe_forward
from raycredit.models import build_model
from raycredit.rules import build_rule, make_config
from raycredit.rules.fa import feedback_linears
from raycredit.train import train


def mlp_setup(tiny, L, **over):
    cfg = make_config({**tiny, "arch": "mlp", "L": L, "activation": "tanh", **over})
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_shape, data.n_classes).double()
    rule = build_rule(cfg, model, data.n_classes).double()
    return cfg, data, model, rule


def grads(model, rule, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    rule.loss(model, x, y)[0].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def tanh_prime(z):
    return 1 - torch.tanh(z) ** 2


@pytest.mark.parametrize("L", [1, 2])
def test_dfa_on_a_plain_mlp_is_nokland_exactly(tiny, L):
    """grad W_l = mean_n ((e_n B_l) * f'(z_l)) h_{l-1}^T; the readout gets its exact gradient."""
    cfg, data, model, rule = mlp_setup(tiny, L, rule="dfa")
    x, y = data.x_train[:32].double(), data.y_train[:32]
    got = grads(model, rule, x, y)
    n = len(y)
    hs, zs = [x], []
    for blk in model.blocks:
        zs.append(hs[-1] @ blk.w.weight.T + blk.w.bias)
        hs.append(torch.tanh(zs[-1]))
    logits = hs[-1] @ model.readout.weight.T + model.readout.bias
    e = (logits.softmax(-1) - F.one_hot(y, 10).double()) / n  # dCE/dz of the batch-mean CE
    for l in range(1, L + 1):
        delta = (e @ rule.B[str(l)]) * tanh_prime(zs[l - 1])
        torch.testing.assert_close(got[f"blocks.{l - 1}.w.weight"], delta.T @ hs[l - 1], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(got[f"blocks.{l - 1}.w.bias"], delta.sum(0), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got["readout.weight"], e.T @ hs[-1], rtol=1e-10, atol=1e-13)


def assert_layerwise_update(tiny, feedback, **over):
    """Two hidden tanh layers: delta_2 = (e B_out) * f'(z_2), delta_1 = (delta_2 B_2) * f'(z_1), grad W_l =
    delta_l h^T, with B = feedback(rule, name, layer) for the readout and the second layer; returns (model, rule)."""
    cfg, data, model, rule = mlp_setup(tiny, 2, **over)
    x, y = data.x_train[:32].double(), data.y_train[:32]
    got = grads(model, rule, x, y)
    w1, w2, wo = model.blocks[0].w, model.blocks[1].w, model.readout
    z1 = x @ w1.weight.T + w1.bias
    h1 = torch.tanh(z1)
    z2 = h1 @ w2.weight.T + w2.bias
    h2 = torch.tanh(z2)
    e = ((h2 @ wo.weight.T + wo.bias).softmax(-1) - F.one_hot(y, 10).double()) / len(y)
    d2 = (e @ feedback(rule, "readout", wo)) * tanh_prime(z2)
    d1 = (d2 @ feedback(rule, "blocks_1_w", w2)) * tanh_prime(z1)
    for name, want in [("blocks.1.w.weight", d2.T @ h1), ("blocks.0.w.weight", d1.T @ x),
                       ("blocks.1.w.bias", d2.sum(0)), ("blocks.0.w.bias", d1.sum(0)), ("readout.weight", e.T @ h2)]:
        torch.testing.assert_close(got[name], want, rtol=1e-10, atol=1e-13)
    return model, rule


def test_fa_on_a_plain_mlp_is_lillicrap_exactly(tiny):
    """Lillicrap's update with the rule's fixed random B of each layer."""
    model, rule = assert_layerwise_update(tiny, lambda rule, name, layer: rule.B[name], rule="fa")
    assert not torch.allclose(rule.B["blocks_1_w"], model.blocks[1].w.weight)  # so the test above is not BP's


@pytest.mark.parametrize("arch", ["mlp", "resmlp"])
def test_fa_with_feedback_equal_to_the_weights_is_backprop(tiny, arch):
    """Lillicrap FA with B = W (g B = g W, the true backward) must give BP's update exactly."""
    cfg, data, model, fa = mlp_setup(tiny, 3, rule="fa", arch=arch, activation="gelu")
    bp = build_rule(cfg.replace(rule="bp"), model, data.n_classes)
    for name in feedback_linears(model):
        fa.B[name.replace(".", "_")].copy_(model.get_submodule(name).weight.detach())
    x, y = data.x_train[:32].double(), data.y_train[:32]
    want, got = grads(model, bp, x, y), grads(model, fa, x, y)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12)
    hs, logits, g = probe_forward(model, x, y)
    for a, gi in zip(fa.credits(model, hs, logits, y), g, strict=True):
        torch.testing.assert_close(a, gi, rtol=1e-9, atol=1e-12)


@pytest.mark.science
def test_fa_aligns_during_training(tiny):
    """With random B the credit starts near orthogonal to the true gradient and aligns (cos > 0) as it trains."""
    cfg = make_config({**tiny, "dataset": "digits", "arch": "mlp", "d": 64, "L": 3, "activation": "tanh",
                            "rule": "fa", "epochs": 6, "n_train": 0, "n_test": 0, "probe_size": 128})
    data = load_data(cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.in_shape, data.n_classes)
    start = diagnose(model, build_rule(cfg, model, data.n_classes), data.x_test[:128], data.y_test[:128], cfg.diag,
                     seed=0)["deep_cos"]
    final = train(cfg, data=data)["final"]
    assert abs(start) < 0.15
    assert final["deep_cos"] > 0.2 and final["deep_cos"] > start + 0.15


def anchor(rule: str, **over) -> float:
    cfg = make_config({"dataset": "digits", "arch": "mlp", "d": 128, "L": 2, "epochs": 8, "rule": rule,
                            "probe_size": 64, "rho_dirs": 4, "diag_every": 100, "device": "cpu", **over})
    return train(cfg)["final"]["test_acc"]


@pytest.mark.science
def test_fa_and_dfa_near_bp_on_digits():
    """The published picture on MNIST-like data at a small budget: FA and DFA within 6 points of BP, all above the
    last-layer-only (frozen) control's floor."""
    acc = {r: anchor(r) for r in ("bp", "fa", "dfa", "frozen")}
    assert acc["bp"] > 0.93, acc
    assert acc["bp"] - acc["fa"] < 0.06 and acc["bp"] - acc["dfa"] < 0.06, acc
    assert min(acc["fa"], acc["dfa"]) > 0.85, acc


@pytest.mark.parametrize("fa_mode", ["reference", "lillicrap"])
def test_fa_deep_cos_is_null_under_random_targets(tiny, fa_mode):
    """Random labels carry no credit: deep_cos must be ~0, not lifted by fa reference's exact last layer."""
    cfg = make_config({**tiny, "rule": "fa", "fa_mode": fa_mode, "random_targets": True, "L": 4, "epochs": 3,
                            "probe_size": 256, "n_test": 512})
    final = train(cfg)["final"]
    assert abs(final["deep_cos"]) < 0.05, final["deep_cos"]
    if fa_mode == "reference":
        assert final["cos/l4"] == pytest.approx(1.0, abs=1e-6)  # still logged, still exact


@pytest.mark.science
def test_ep_credit_stays_bounded_on_a_trained_model():
    """At the default relaxation step the nudged phase must not blow up once blocks have grown: every sample's
    credit norm within 10x the largest true gradient norm of its layer. A step past the energy's stability
    limit (0.5 here) fails the same check, so the check can fail."""
    cfg = make_config({"dataset": "digits", "d": 64, "L": 3, "rule": "ep", "epochs": 8, "probe_size": 256,
                            "rho_dirs": 4, "diag_every": 100, "device": "cpu"})
    state = {}
    train(cfg, on_epoch=lambda e, m, fn: state.update(fn()))
    data = load_data(cfg.data)
    model = build_model(cfg.model, data.in_shape, data.n_classes)
    model.load_state_dict(state["model"])
    hs, logits, g = probe_forward(model, data.x_test, data.y_test)

    def worst_ratio(step: float) -> float:
        rule = build_rule(cfg.replace(ep_step_size=step), model, data.n_classes)
        rule.load_state_dict(state["rule"])
        a = rule.credits(model, hs, logits, data.y_test)
        return max((a[l].norm(dim=-1).max() / g[l].norm(dim=-1).max()).item() for l in range(1, cfg.model.L + 1))

    assert worst_ratio(cfg.rule.ep_step_size) <= 10
    assert worst_ratio(0.5) > 10


def test_sign_symmetry_on_a_plain_mlp_is_liao_exactly(tiny):
    """The errors travel back through sign(W) * scale / sqrt(out) of the current weights."""

    def sign_feedback(rule, name, layer):
        return torch.sign(layer.weight.detach()) * 0.5 / layer.weight.shape[0] ** 0.5

    model, _ = assert_layerwise_update(tiny, sign_feedback, rule="sign_symmetry", feedback_scale=0.5)
    assert all(m.feedback is None for m in model.modules() if hasattr(m, "feedback"))  # restored after the step


def test_sign_symmetric_credit_aligns_with_the_gradient_after_training():
    """On the synthetic task sign-concordant feedback gives credit clearly aligned with the true gradient."""
    cfg = make_config({"rule": "sign_symmetry", "d": 32, "L": 2, "n_train": 2000, "n_test": 256, "epochs": 3,
                            "probe_size": 128, "rho_dirs": 4, "device": "cpu"})
    final = train(cfg)["final"]
    assert final["deep_cos"] > 0.3, final["deep_cos"]


def kp_cfg(**over):
    return make_config({"rule": "kolen_pollack", "d": 32, "L": 2, "n_train": 2000, "n_test": 256,
                             "probe_size": 128, "rho_dirs": 4, "device": "cpu", **over})


def test_kolen_pollack_brings_its_own_decay_and_an_explicit_value_wins():
    from raycredit.errors import ConfigError

    own = make_config({"rule": "kolen_pollack"})
    assert (own.train.optimizer, own.train.weight_decay, own.rule.feedback_scale) == ("adamw", 5.0, 0.1)
    assert make_config({"rule": "kolen_pollack", "weight_decay": 2.0}).train.weight_decay == 2.0
    with pytest.raises(ConfigError, match="kolen_pollack needs weight_decay > 0"):
        make_config({"rule": "kolen_pollack", "weight_decay": 0.0})
    other = make_config({"rule": "fa"})
    assert (other.train.optimizer, other.train.weight_decay, other.rule.feedback_scale) == ("adam", 0.0, 1.0)
    assert Config.from_dict(own.to_dict()) == own  # a saved config reads back as it was


def test_kolen_pollack_feedback_takes_the_forward_weights_step():
    """One SGD step: every B moves exactly as its W, so B - W shrinks by (1 - lr weight_decay)."""
    from raycredit.train import EagerStepper

    cfg = kp_cfg(optimizer="sgd", momentum=0.0, lr=0.05, aux_lr=0.05, weight_decay=0.2, clip_norm=0.0)
    data = load_data(cfg.data)
    stepper = EagerStepper(cfg, data, torch.device("cpu"))
    names = feedback_linears(stepper.model)

    def pairs():
        return {n: (stepper.model.get_submodule(n).weight.detach().clone(),
                    stepper.rule.B[n.replace(".", "_")].detach().clone()) for n in names}

    before = pairs()
    stepper.start_epoch(1, 1)
    stepper.step(torch.arange(64).unsqueeze(0))
    after = pairs()
    for n in names:
        (w0, b0), (w1, b1) = before[n], after[n]
        assert not torch.equal(w0, w1)
        torch.testing.assert_close(b1 - w1, (b0 - w0) * (1 - 0.05 * 0.2), rtol=1e-5, atol=1e-6)


@pytest.mark.science
def test_kolen_pollack_aligns_its_feedback_with_the_forward_weights():
    """With a decay, the angle between each B and its W shrinks over training, and the credit aligns with the
    true gradient (clearly above fa's fixed random feedback under the same settings)."""
    over = dict(epochs=5, optimizer="adamw", lr=3e-3, aux_lr=3e-3, weight_decay=3.0)
    ckpts = {}
    kp = train(kp_cfg(**over), on_epoch=lambda e, m, f: ckpts.__setitem__(e, f()))["final"]
    fa = train(kp_cfg(**over, rule="fa"))["final"]

    def angles(ckpt):
        out = []
        for key, b in ckpt["rule"].items():
            w = ckpt["model"][key[2:].replace("_", ".") + ".weight"]  # B.blocks_0_w1: blocks.0.w1.weight
            out.append(torch.rad2deg(torch.arccos(F.cosine_similarity(w.flatten(), b.flatten(), dim=0))).item())
        return out

    first, last = angles(ckpts[1]), angles(ckpts[5])
    assert all(a > b for a, b in zip(first, last, strict=True)), (first, last)
    assert kp["deep_cos"] > fa["deep_cos"] + 0.1, (kp["deep_cos"], fa["deep_cos"])
