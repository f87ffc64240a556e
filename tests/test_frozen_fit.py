"""The frozen baseline's fitted readout (raycredit.rules.frozen): the convex optimum on the frozen features."""

import pytest
import torch
import torch.nn.functional as F

from raycredit.rules import frozen, make_config
from raycredit.rules.frozen import FIT_TOL, fitted_readout
from raycredit.train import train


def test_fitted_readout_is_the_optimum():
    """At the fitted (W, b) the gradient vanishes, and any perturbation raises the regularized training loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g, dtype=torch.float64)
    y = (x[:, :3] @ torch.randn(3, 4, generator=g, dtype=torch.float64)).argmax(1)
    out = fitted_readout(x, y, x[:100], y[:100], l2=1e-3)
    assert out["fit_grad_max"] <= FIT_TOL
    # the objective by hand at random nearby points is never below the fitted one
    xs = (x - x.mean(0)) / x.std(0)
    w = torch.zeros(8, 4, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=5000, tolerance_grad=1e-12, tolerance_change=0,
                            line_search_fn="strong_wolfe")

    def obj():
        opt.zero_grad()
        v = F.cross_entropy(xs @ w + b, y) + 0.5e-3 * w.pow(2).sum()
        v.backward()
        return v

    opt.step(obj)
    assert out["fit_train_loss"] == pytest.approx(obj().item(), abs=1e-10)


def ill_conditioned(n: int = 600, dim: int = 24, classes: int = 5):
    """Features like those of frozen blocks: a few directions carry almost all the variance."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.randn(3, dim, generator=g, dtype=torch.float64)
    x = x + 1e-3 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = (x[:, :2] @ torch.randn(2, classes, generator=g, dtype=torch.float64)
         + torch.randn(n, classes, generator=g, dtype=torch.float64)).argmax(1)
    return x, y


def test_newton_reaches_the_tolerance_on_ill_conditioned_features_and_lbfgs_agrees_where_it_converges(monkeypatch):
    """Newton's method (the readouts raycredit fits) meets FIT_TOL on nearly collinear features, with its
    Hessian on all rows or on a strided subset; the L-BFGS path (readouts too large for the Hessian) finds the
    same optimum on a well-conditioned problem."""
    x, y = ill_conditioned()
    exact = fitted_readout(x, y, x, y, l2=1e-4)
    assert exact["fit_grad_max"] <= FIT_TOL
    monkeypatch.setattr(frozen, "HESSIAN_ROWS", 100)
    sub = fitted_readout(x, y, x, y, l2=1e-4)
    assert sub["fit_grad_max"] <= FIT_TOL
    assert sub["fit_train_loss"] == pytest.approx(exact["fit_train_loss"], abs=1e-12)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 10, generator=g, dtype=torch.float64)
    y = (x[:, :4] @ torch.randn(4, 3, generator=g, dtype=torch.float64)
         + torch.randn(400, 3, generator=g, dtype=torch.float64)).argmax(1)
    by_newton = fitted_readout(x, y, x, y, l2=1e-2)
    monkeypatch.setattr(frozen, "NEWTON_MAX_PARAMS", 0)
    by_lbfgs = fitted_readout(x, y, x, y, l2=1e-2)
    assert by_lbfgs["fit_grad_max"] <= FIT_TOL
    assert by_lbfgs["fit_train_loss"] == pytest.approx(by_newton["fit_train_loss"], abs=1e-12)
    assert by_lbfgs["fit_test_acc"] == by_newton["fit_test_acc"]


def test_fitted_readout_of_the_quadratic_cost_is_ridge_regression():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 3, generator=g, dtype=torch.float64) + 2.0
    out = fitted_readout(x, y, x, y, l2=1e-9)
    assert out["fit_test_loss"] < 1e-12 and out["fit_grad_max"] < 1e-6


@pytest.mark.parametrize("arch", ["mlp", "resmlp"])
def test_frozen_runs_log_a_fitted_readout_at_least_as_good_as_the_trained_one(tiny, arch):
    """On the plain MLP (small features at init) Adam's readout stops short of the optimum the fitted one
    reaches; the fitted one's training loss is never above the trained readout's (it is the optimum, up to
    its small L2 term)."""
    result = train(make_config({**tiny, "rule": "frozen", "arch": arch, "epochs": 3}))
    final = result["final"]
    assert final["fit_grad_max"] <= FIT_TOL
    assert final["fit_train_loss"] <= final["train_loss"] + 1e-3
    assert final["fit_test_acc"] >= final["test_acc"] - 0.02
    assert all("fit_test_acc" not in h for h in result["history"][:-1])
