"""frozen: the frozen-blocks baseline. Blocks (and by default the embedding) stay at init; the head learns.

With train_embedding the embedding learns from the true gradient through the
frozen blocks, so the baseline measures what untrained blocks allow.

A readout trained like the other rules (Adam, the same epochs and lr) need not reach what the frozen features
allow: on a plain MLP, whose features at init are small, it stops far from its optimum. The run's last epoch
therefore also logs the **fitted readout**: the readout's convex optimum on the same frozen features (the
readout's input at the last epoch, standardized on the training set), in float64,

    min_{W, b} mean_n task_loss(W x_n + b, y_n) + fit_l2 / 2 ||W||^2

by L-BFGS until no gradient element exceeds `FIT_TOL` (cross-entropy: multinomial logistic regression), or in
closed form for the quadratic cost (ridge regression). Its test accuracy and loss (`fit_test_acc`,
`fit_test_loss`), its training loss and largest final gradient element (`fit_train_loss`, `fit_grad_max`) are
logged beside the trained readout's; the analyses take the better of the two as the frozen-blocks baseline
(`raycredit.verdicts`).
"""

import torch

from raycredit.models import ARCHITECTURES
from raycredit.rules.base import Rule, n_correct, task_loss

FIT_TOL = 1e-8  # largest gradient element at which the fitted readout counts as converged
FIT_ITERS = 2000


class Frozen(Rule):
    architectures = tuple(ARCHITECTURES)

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        frozen = model.block_params() + ([] if self.cfg.train_embedding else list(model.embed.parameters()))
        for p in frozen:
            p.requires_grad_(False)

    def loss(self, model, x, y):
        with torch.set_grad_enabled(self.cfg.train_embedding):
            h = model.embed(x)
            for l in range(1, self.L + 1):
                h = model.step(l, h, model.f(l, h))
        logits = model.head(h)
        ce = task_loss(logits, y)
        return ce, ce.detach(), logits.detach()

    def credits(self, model, hs, logits, y):
        return None

    def final_metrics(self, model, data) -> dict[str, float]:
        return fitted_readout(features(model, data.x_train), data.y_train, features(model, data.x_test),
                              data.y_test, self.cfg.fit_l2)


@torch.no_grad()
def features(model, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """The readout's input (after out_ln and pooling) in float64."""
    was = model.training
    model.eval()
    out = []
    for s in range(0, len(x), chunk):
        h = model.hiddens(x[s:s + chunk])[0][-1]
        out.append(model.pool(model.out_ln(h)).double())
    model.train(was)
    return torch.cat(out)


def fitted_readout(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor,
                   l2: float) -> dict[str, float]:
    """The module docstring's convex optimum on features x_tr (float64) and its test metrics."""
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp_min(1e-12)
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    n, dim = x_tr.shape
    if y_tr.is_floating_point():  # quadratic cost: ridge regression, its normal equations
        y = y_tr.double()
        xb = torch.cat([x_tr, torch.ones(n, 1, dtype=x_tr.dtype, device=x_tr.device)], 1)
        reg = torch.diag(torch.cat([torch.full((dim,), n * l2), torch.zeros(1)])).to(xb)
        wb = torch.linalg.solve(xb.T @ xb + reg, xb.T @ y)
        w, b = wb[:-1], wb[-1]
    else:
        classes = int(max(y_tr.max(), y_te.max())) + 1
        w = torch.zeros(dim, classes, dtype=x_tr.dtype, device=x_tr.device, requires_grad=True)
        b = torch.zeros(classes, dtype=x_tr.dtype, device=x_tr.device, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=FIT_ITERS, tolerance_grad=FIT_TOL, tolerance_change=0,
                                history_size=20, line_search_fn="strong_wolfe")

        def objective():
            opt.zero_grad()
            value = task_loss(x_tr @ w + b, y_tr) + 0.5 * l2 * w.pow(2).sum()
            value.backward()
            return value

        with torch.enable_grad():
            opt.step(objective)
    with torch.enable_grad():
        w, b = w.detach().requires_grad_(), b.detach().requires_grad_()
        train = task_loss(x_tr @ w + b, y_tr.double() if y_tr.is_floating_point() else y_tr) + 0.5 * l2 * w.pow(2).sum()
        grad = torch.cat([g.flatten() for g in torch.autograd.grad(train, [w, b])]).abs().max()
    with torch.no_grad():
        z = x_te @ w + b
        y = y_te.double() if y_te.is_floating_point() else y_te
        return {"fit_test_acc": float(n_correct(z, y)) / len(y), "fit_test_loss": task_loss(z, y).item(),
                "fit_train_loss": train.item(), "fit_grad_max": grad.item()}
