"""The toy linear-quadratic task: its data, its quadratic cost, the linear student, and the costate cosine."""

import pytest
import torch

from raycredit.config import Config
from raycredit.data import load_data
from raycredit.diagnostics import diagnose
from raycredit.models import build_model
from raycredit.population import train_population
from raycredit.rules import make_config
from raycredit.rules.base import n_correct, output_error, task_loss
from raycredit.train import restore, train

LQ = dict(dataset="toy_lq", input_dim=16, n_classes=6, d=16, L=3, mlp_ratio=1.0, block_ln=False, out_ln=False,
          student_activation="teacher", alpha=0.0, n_train=1000, n_test=300, batch_size=64, epochs=10,
          probe_size=128, rho_dirs=8, diag_every=10, device="cpu")


def test_targets_are_a_noisy_linear_map_of_the_states():
    data = load_data(make_config({**LQ, "lq_noise": 0.3}).data)
    assert data.y_train.shape == (1000, 6) and data.y_train.is_floating_point()
    x, y = data.x_train, data.y_train
    fit = torch.linalg.lstsq(x, y).solution
    assert (y - x @ fit).std().item() == pytest.approx(0.3, rel=0.1)


def test_quadratic_cost_and_output_error_by_hand():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert task_loss(z, y, reduction="none") == pytest.approx((0.5 * ((z - y) ** 2).sum(1)).tolist())
    assert task_loss(z, y).item() == pytest.approx(0.5 * ((z - y) ** 2).sum(1).mean().item())
    zz = z.clone().requires_grad_()
    assert torch.allclose(torch.autograd.grad(task_loss(zz, y, reduction="sum"), zz)[0], output_error(z, y))
    labels = torch.tensor([0, 2, 1, 1, 0])
    grad = torch.autograd.grad(task_loss(zz, labels, reduction="sum"), zz)[0]
    assert torch.allclose(grad, output_error(z, labels))
    assert n_correct(z, y).isnan() and n_correct(z, labels).item() == (z.argmax(1) == labels).sum().item()


def test_the_student_is_linear():
    """block_ln and out_ln off and identity blocks: the network is affine in its input, so the task is
    linear-quadratic."""
    cfg = Config.from_dict(LQ)
    model = build_model(cfg.model, (16,), 6, cfg.data.alpha).double()
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(4, 16, generator=g, dtype=torch.float64), torch.randn(4, 16, generator=g, dtype=torch.float64)
    zero = model(torch.zeros(1, 16, dtype=torch.float64))
    assert torch.allclose(model(2 * x1 - 3 * x2) - zero, 2 * (model(x1) - zero) - 3 * (model(x2) - zero), atol=1e-12)


def test_bp_costate_cosine_is_one_and_accuracy_is_not_reported():
    cfg = make_config({**LQ, "rule": "bp", "epochs": 2})
    h = train(cfg)["history"]
    assert h[-1]["deep_cos"] == pytest.approx(1.0, abs=1e-6) and h[-1]["deep_rho"] > 0.99
    assert h[-1]["test_acc"] != h[-1]["test_acc"] and h[-1]["test_loss"] < h[0]["train_loss"]


@pytest.mark.science
def test_state_bridge_recovers_the_costate_and_dfa_does_not():
    """The seeds' toy LQ finding (state bridge 0.945, DFA 0.001): after 160 steps the state bridge's costate
    cosine is far above DFA's."""
    sb = train(make_config({**LQ, "rule": "state_bridge"}))["final"]
    dfa = train(make_config({**LQ, "rule": "dfa"}))["final"]
    assert sb["deep_cos"] > 0.6 and sb["deep_cos"] > dfa["deep_cos"] + 0.3
    assert sb["deep_nudge"] < 0


def test_diagnostics_of_the_quadratic_cost_agree_in_float32_and_float64():
    cfg = make_config({**LQ, "rule": "dfa", "epochs": 3})
    box = {}
    train(cfg, on_epoch=lambda e, m, fn: box.update(ckpt=fn()) if fn else None)
    cfg, model, rule, data = restore(box["ckpt"])
    x, y = data.x_test[:128], data.y_test[:128]
    f64 = diagnose(model, rule, x, y, cfg.replace(diag_dtype="float64").diag, seed=3)
    auto = diagnose(model, rule, x, y, cfg.replace(diag_dtype="float32").diag, seed=3)
    for i in range(cfg.model.L + 1):
        assert auto[f"rho/l{i}"] == pytest.approx(f64[f"rho/l{i}"], abs=0.01)


def test_a_population_on_toy_lq_equals_separate_runs():
    cfgs = [make_config({**LQ, "rule": "dfa", "epochs": 2, "n_train": 500, "seed": s}) for s in (0, 1)]
    for cfg, member in zip(cfgs, train_population(cfgs), strict=True):
        alone = train(cfg)["final"]
        for k in ("test_loss", "train_loss", "deep_cos", "deep_rho"):
            assert member["final"][k] == pytest.approx(alone[k], rel=1e-4, abs=1e-5), k
