"""frozen: the frozen-blocks baseline. Blocks (and by default the embedding) stay at init; the head learns.

With train_embedding the embedding learns from the true gradient through the
frozen blocks, so the baseline measures what untrained blocks allow.

A readout trained like the other rules (Adam, the same epochs and lr) need not reach what the frozen features
allow: on a plain MLP, whose features at init are small, it stops far from its optimum. The run's last epoch
therefore also logs the **fitted readout**: the readout's convex optimum on the same frozen features (the
readout's input at the last epoch, standardized on the training set), in float64,

    min_{W, b} mean_n task_loss(W x_n + b, y_n) + fit_l2 / 2 ||W||^2

until no gradient element exceeds `FIT_TOL`: for cross-entropy (multinomial logistic regression) by Newton's
method with a backtracking line search while the Hessian is small (`NEWTON_MAX_PARAMS`; computed on at most
`HESSIAN_ROWS` rows, the gradient always on all), by L-BFGS beyond; for the quadratic cost (ridge regression) in
closed form. On features of frozen blocks the problem is ill-conditioned: L-BFGS stopped at its iteration cap short
of `FIT_TOL` where Newton converges in about ten steps. The fitted readout's test accuracy and loss (`fit_test_acc`,
`fit_test_loss`), its training loss and largest final gradient element (`fit_train_loss`, `fit_grad_max`) are
logged beside the trained readout's; the analyses take the better of the two as the frozen-blocks baseline
(`raycredit.verdicts`).
"""

import torch

from raycredit.models import ARCHITECTURES
from raycredit.rules.base import Rule, n_correct, task_loss

FIT_TOL = 1e-8  # largest gradient element at which the fitted readout counts as converged
FIT_ITERS = 2000  # L-BFGS iterations
NEWTON_ITERS = 50
NEWTON_MAX_PARAMS = 4096  # (features + 1) x classes up to which Newton's Hessian is formed: 128 MiB in float64
HESSIAN_ROWS = 4096  # rows the Hessian is computed on (an evenly strided subset): cost rows x params^2


class Frozen(Rule):
    architectures = tuple(ARCHITECTURES)
    knobs = ("train_embedding", "fit_l2")

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
        solve = newton if (dim + 1) * classes <= NEWTON_MAX_PARAMS else lbfgs
        w, b = solve(x_tr, y_tr, classes, l2)
    with torch.enable_grad():
        w, b = w.detach().requires_grad_(), b.detach().requires_grad_()
        train = objective(x_tr, y_tr.double() if y_tr.is_floating_point() else y_tr, w, b, l2)
        grad = torch.cat([g.flatten() for g in torch.autograd.grad(train, [w, b])]).abs().max()
    with torch.no_grad():
        z = x_te @ w + b
        y = y_te.double() if y_te.is_floating_point() else y_te
        return {"fit_test_acc": float(n_correct(z, y)) / len(y), "fit_test_loss": task_loss(z, y).item(),
                "fit_train_loss": train.item(), "fit_grad_max": grad.item()}


def objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float) -> torch.Tensor:
    """The module docstring's objective: mean task loss of the readout (W, b) + l2 / 2 ||W||^2."""
    return task_loss(x @ w + b, y) + 0.5 * l2 * w.pow(2).sum()


def newton(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float,
           rows: int = HESSIAN_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of the cross-entropy objective by Newton's method. Hessian entry ((a, i), (b, j)) is
    mean_n xb_ni xb_nj (p_na [a = b] - p_na p_nb) + l2 [a = b, i = j < features]. Logits shifted equally in
    every class leave the loss unchanged, so the Hessian is singular along theta -> theta + v 1^T; the gradient
    never has a component there (each row of p - onehot sums to zero; and from the zero start the penalty keeps
    sum_a W[:, a] at zero), so adding the projector onto those directions changes no step and makes the
    system solvable."""
    n, dim = x.shape
    xb = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1)
    p_dim = dim + 1
    pen = torch.full((p_dim, 1), l2, dtype=x.dtype, device=x.device)
    pen[-1] = 0
    onehot = torch.nn.functional.one_hot(y, classes).to(x.dtype)
    sub = xb[torch.linspace(0, n - 1, min(n, rows), device=x.device).long()]
    shift = torch.kron(torch.full((classes, classes), 1 / classes, dtype=x.dtype, device=x.device),
                       torch.eye(p_dim, dtype=x.dtype, device=x.device))
    theta = torch.zeros(p_dim, classes, dtype=x.dtype, device=x.device)
    for _ in range(NEWTON_ITERS):
        grad = xb.T @ (torch.softmax(xb @ theta, 1) - onehot) / n + pen * theta
        if grad.abs().max() <= FIT_TOL:
            break
        p = torch.softmax(sub @ theta, 1)
        z = (p[:, :, None] * sub[:, None, :]).flatten(1)  # class-major: index a * p_dim + i
        hess = torch.block_diag(*torch.einsum("na,ni,nj->aij", p, sub, sub)) - z.T @ z
        hess = hess / len(sub) + torch.diag(pen.flatten().repeat(classes)) + shift
        step = -torch.linalg.solve(hess, grad.T.flatten()).reshape(classes, p_dim).T
        value, slope, t = objective(x, y, theta[:-1], theta[-1], l2), (grad * step).sum(), 1.0
        # Armijo backtracking; once the predicted decrease is below float64's resolution of the loss, the full
        # step (the quadratic regime)
        while (-slope > 1e-15 * value.abs() and t > 1e-10
               and objective(x, y, theta[:-1] + t * step[:-1], theta[-1] + t * step[-1], l2)
               > value + 1e-4 * t * slope):
            t /= 2
        theta = theta + t * step
    return theta[:-1].clone(), theta[-1].clone()


def lbfgs(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of the cross-entropy objective by L-BFGS, for readouts too large for Newton's Hessian."""
    dim = x.shape[1]
    w = torch.zeros(dim, classes, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(classes, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=FIT_ITERS, tolerance_grad=FIT_TOL, tolerance_change=0,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = objective(x, y, w, b, l2)
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()
