"""cnn1d, the plain 1-D CNN: its convolutions are convolutions, every feedback rule has its path through them
(FA with B = W is BP), the shared diagnostics hold on its (T, d) layers, and it refuses what it cannot do."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raycredit.data import load_data
from raycredit.diagnostics import diagnose
from raycredit.errors import ConfigError, DataError
from raycredit.models import Conv1d, build_model
from raycredit.population import train_population
from raycredit.rules import RULES, build_rule, make_config
from raycredit.train import train

from test_population import MEMBERS, RULE_KNOBS, assert_same_history, final_states
from test_rules import grads_of, hidden_backprop

# vectors of 16 values are signals of one channel and 16 positions
SIGNALS = dict(dataset="synthetic", input_dim=16, n_train=512, n_test=128, arch="cnn1d", d=8, L=2, kernel=3,
               epochs=2, batch_size=64, probe_size=64, rho_dirs=16, device="cpu")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """An npz of (1, 16) signals: one of 5 fixed random shapes placed at a random offset, plus noise."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 768)
    templates = rng.standard_normal((5, 6))
    x = 0.3 * rng.standard_normal((768, 1, 16))
    for i, (label, at) in enumerate(zip(y, rng.integers(0, 10, 768), strict=True)):
        x[i, 0, at:at + 6] += templates[label]
    path = tmp_path_factory.mktemp("signals") / "signals.npz"
    np.savez(path, x_train=x[:640].astype(np.float32), y_train=y[:640], x_test=x[640:].astype(np.float32),
             y_test=y[640:])
    return str(path)


def setup(dtype=torch.float32, **over):
    cfg = make_config({**SIGNALS, **over})
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_shape, data.n_classes).to(dtype)
    return cfg, data, model, build_rule(cfg, model, data.n_classes).to(dtype)


@pytest.mark.parametrize("kernel", [1, 3, 4, 5])
def test_conv1d_is_pytorchs_convolution_with_same_padding(kernel):
    g = torch.Generator().manual_seed(0)
    conv = Conv1d(3, 6, kernel)
    h = torch.randn(4, 11, 3, generator=g)  # (N, T, C)
    weight = conv.w.weight.view(6, 3, kernel)  # windows are flattened channel-major: (C, kernel)
    left = (kernel - 1) // 2
    want = F.conv1d(F.pad(h.transpose(1, 2), (left, kernel - 1 - left)), weight, conv.w.bias).transpose(1, 2)
    torch.testing.assert_close(conv(h), want)
    assert set(Conv1d(3, 6, kernel).state_dict()) == {"w.weight", "w.bias"}


def test_layers_have_the_declared_shape_and_channels_of_the_signal():
    cfg, data, model, _ = setup(rule="bp")
    hs, logits = model.hiddens(data.x_test[:5])
    assert model.h_shape == (16, 8) and all(h.shape == (5, 16, 8) for h in hs) and logits.shape == (5, 10)
    two = build_model(cfg.model, (2, 20), 3)
    assert two.hiddens(torch.zeros(4, 40))[0][-1].shape == (4, 20, 8)
    with pytest.raises(DataError, match=r"cnn1d needs signals of shape \(T,\) or \(C, T\)"):
        build_model(cfg.model, (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="cnn1d needs signals .* digits gives images"):
        make_config({**SIGNALS, "dataset": "digits"})


def test_bp_credit_is_calibrated():
    cfg, data, model, rule = setup(rule="bp")
    m = diagnose(model, rule, data.x_test[:64], data.y_test[:64], cfg.diag, seed=0)
    assert m["deep_cos"] == pytest.approx(1.0, abs=1e-6) and m["cos/l0"] == pytest.approx(1.0, abs=1e-6)
    assert m["deep_rho"] > 0.99


@pytest.mark.parametrize("name", ["fa", "kolen_pollack"])
def test_feedback_through_every_convolution_with_b_equal_to_w_is_bp(name):
    """Every convolution of the blocks and the readout sends credit through its B: with B = W, FA (Lillicrap)
    and Kolen-Pollack are backprop exactly."""
    from raycredit.rules.fa import feedback_linears

    cfg, data, model, rule = setup(torch.float64, rule=name)
    linears = feedback_linears(model)
    assert linears == ["blocks.0.conv.w", "blocks.1.conv.w", "readout"]
    with torch.no_grad():
        for n in linears:
            rule.B[n.replace(".", "_")].copy_(model.get_submodule(n).weight)
    bp = build_rule(cfg.replace(rule="bp"), model, data.n_classes)
    x, y = data.x_train[:16].double(), data.y_train[:16]
    want, got = grads_of(model, bp, x, y), grads_of(model, rule, x, y)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-12)


def test_sign_symmetry_is_fa_with_the_signs_of_every_convolution():
    from raycredit.rules.fa import feedback_linears

    cfg, data, model, rule = setup(torch.float64, rule="sign_symmetry")
    fa = build_rule(cfg.replace(rule="fa"), model, data.n_classes).double()
    with torch.no_grad():
        for n in feedback_linears(model):
            w = model.get_submodule(n).weight
            fa.B[n.replace(".", "_")].copy_(torch.sign(w) * cfg.rule.feedback_scale / w.shape[0] ** 0.5)
    x, y = data.x_train[:16].double(), data.y_train[:16]
    want, got = grads_of(model, fa, x, y), grads_of(model, rule, x, y)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name, leaks", [("fa", False), ("dfa", False), ("bp", True)])
def test_no_hidden_backprop(name, leaks):
    """Block-level FA and DFA: altering the backward path through blocks 2..L leaves block 1's and the
    embedding's update unchanged."""
    _, data, model, rule = setup(rule=name, fa_mode="reference")
    watched, changed = hidden_backprop(model, rule, data.x_train[:32], data.y_train[:32])
    assert watched and bool(changed) == leaks, changed


@pytest.mark.parametrize("name", ["fa", "kolen_pollack"])
def test_layerwise_credit_below_a_convolution_passes_only_through_its_b(name):
    """Layer-wise feedback goes through the network's own backward with B in place of W: with the last
    convolution's B zero, nothing reaches the layers below it, while its own and the readout's updates stand."""
    _, data, model, rule = setup(torch.float64, rule=name)
    x, y = data.x_train[:32].double(), data.y_train[:32]
    before = grads_of(model, rule, x, y)
    with torch.no_grad():
        rule.B["blocks_1_conv_w"].zero_()
    after = grads_of(model, rule, x, y)
    for n, g in after.items():
        if n.startswith(("embed.", "blocks.0.")):
            assert before[n].abs().max() > 0 and g.abs().max() == 0, n
        else:
            torch.testing.assert_close(g, before[n], rtol=0, atol=0)


def test_trains_with_every_supported_rule_and_the_learned_rules_refuse_it(shapes):
    finals = {}
    for name in ("bp", "fa", "dfa", "frozen", "sign_symmetry", "kolen_pollack"):
        out = train(make_config({**SIGNALS, "dataset": "npz", "data_dir": shapes, "rule": name, "epochs": 3,
                                 "lr": 1e-2}))
        finals[name] = out["final"]
        assert out["final"]["diverged"] == 0 and len(out["history"]) == 3, (name, out["final"])
    assert finals["bp"]["test_acc"] > 0.4, finals["bp"]  # 5 classes: chance is 0.2
    assert finals["bp"]["deep_cos"] == pytest.approx(1.0, abs=1e-4)
    for name in ("state_bridge", "credit_bridge", "vector_field", "scaffold"):
        with pytest.raises(ConfigError, match=f"'{name}' supports architectures resmlp, not 'cnn1d'"):
            make_config({**SIGNALS, "rule": name})
    assert {n for n, r in RULES.items() if "cnn1d" in r.architectures} == {
        "bp", "fa", "dfa", "ep", "frozen", "sign_symmetry", "kolen_pollack"}


@pytest.mark.parametrize("name", ["fa", "dfa", "kolen_pollack"])
def test_a_population_of_cnn1d_members_equals_their_separate_runs(name):
    """The vmapped population stepper handles the windowed convolutions: each member's history and weights are
    those of its own run."""
    cfgs = [make_config({**SIGNALS, "rule": name, **RULE_KNOBS.get(name, {}), **m}) for m in MEMBERS]
    pop, pop_ckpts = final_states(cfgs, lambda cb: train_population(cfgs, on_epoch=cb))
    for cfg, got, ckpt in zip(cfgs, pop, pop_ckpts, strict=True):
        want, [want_ckpt] = final_states([cfg], lambda cb, cfg=cfg: train(
            cfg, on_epoch=lambda e, m, fn: cb(e, [m], (lambda: [fn()]) if fn else None)))
        assert_same_history(got["history"], want["history"])
        for k, w in want_ckpt["model"].items():
            torch.testing.assert_close(ckpt["model"][k], w, rtol=1e-4, atol=3e-5)
